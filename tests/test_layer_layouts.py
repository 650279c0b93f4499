"""The modules' other layouts: packed sequences, one unbatched sequence, generation with a cache,
and the determinant logits with their chunk rotary.

Small sizes throughout (the reference backend, and the C++ one where it serves the call).
"""

import pytest
import torch

import simplicial_attn as sa
from simplicial_attn.nn.layer import SimplicialTransformerBlock, TwoSimplicialAttention
from simplicial_attn.nn.sdpa import DotProductAttention

from cases import rel_err

TOL = 1e-5


def _layer(heads=6, **kw):
    """dim 48: 6 heads of 8 channels, or 4 of 12 (a multiple of 3, for the determinant)."""
    kw.setdefault("w1", 5)
    kw.setdefault("w2", 3)
    kw.setdefault("backend", "reference")
    return TwoSimplicialAttention(48, heads, 2, **kw)


LAYERS = {
    "trilinear-tied-rope": dict(rope=True, qk_norm=True),
    "determinant-chunk-rope": dict(logits="determinant", rope=True, heads=4),
    "no-rope-centred": dict(causal=False),
    "sdpa-window": None,
}


def _make(name):
    torch.manual_seed(3)
    if name == "sdpa-window":
        return DotProductAttention(48, 6, 2, window=4, rope=True)
    return _layer(**LAYERS[name])


@pytest.mark.parametrize("name", LAYERS)
def test_packed_equals_each_sequence_alone(name):
    """A packed [T, dim] input with cu_seqlens: each sequence's rows equal the layer on that
    sequence alone (so RoPE restarts at every sequence and no window crosses a boundary)."""
    layer = _make(name)
    lengths = [4, 0, 9, 1, 6]
    x = torch.randn(sum(lengths), 48)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    y = layer(x, cu_seqlens=cu)
    assert y.shape == x.shape
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        if e > s:
            assert rel_err(y[s:e], layer(x[None, s:e])[0]) <= TOL, (s, e)


@pytest.mark.parametrize("options", [dict(window=4), dict(), dict(causal=False)], ids=["window", "causal", "full"])
def test_sdpa_packed_gradients_equal_each_sequence_alone(options):
    """The SDPA layer's packed path (a padded batch of the sequences): outputs and the gradients of
    x and of every weight equal per-sequence calls; the padding rows feed nothing back."""
    torch.manual_seed(4)
    layer = DotProductAttention(48, 6, 2, rope=True, **options).double()
    lengths = [4, 0, 9, 1, 6]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    x = torch.randn(sum(lengths), 48, dtype=torch.float64, requires_grad=True)
    dy = torch.randn_like(x)
    packed = torch.autograd.grad(layer(x, cu_seqlens=cu), [x, *layer.parameters()], dy)
    x_alone = x.detach().clone().requires_grad_(True)
    y = torch.cat([layer(x_alone[None, s:e])[0] for s, e in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)
                   if e > s])  # fmt: skip
    alone = torch.autograd.grad(y, [x_alone, *layer.parameters()], dy)
    for got, want in zip(packed, alone, strict=True):
        assert rel_err(got, want) <= 1e-12
    for cu_empty in ([0], [0, 0, 0]):  # packings of no tokens at all
        empty = layer(x[:0], cu_seqlens=torch.tensor(cu_empty, dtype=torch.int32))
        assert empty.shape == (0, 48)


@pytest.mark.parametrize("name", LAYERS)
def test_unbatched_sequence(name):
    layer = _make(name)
    x = torch.randn(7, 48)
    assert rel_err(layer(x), layer(x[None])[0]) <= TOL


def test_bad_layouts():
    layer = _layer(rope=True)
    with pytest.raises(
        ValueError, match=r"x must be \[B, N, dim\] \(or \[T, dim\].*dim = 48, got shape \(2, 3, 4, 48\)"
    ):
        layer(torch.randn(2, 3, 4, 48))
    with pytest.raises(ValueError, match=r"with cu_seqlens, x must be packed \[T, dim\]"):
        layer(torch.randn(2, 3, 48), cu_seqlens=torch.tensor([0, 3], dtype=torch.int32))
    cache = layer.new_cache(2)
    with pytest.raises(ValueError, match=r"with a cache, x must be the new tokens \[B, Nq, dim\]"):
        layer(torch.randn(2, 48), cache=cache)
    other = _layer(w1=7).new_cache(2)
    with pytest.raises(ValueError, match=r"cache has \(w1, w2, kv heads, head_dim\) = \(7, 3, 2, 8\)"):
        layer(torch.randn(2, 1, 48), cache=other)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(w1=0), r"w1 must be an int >= 1 or None, got 0"),
        (dict(w2=2.5), r"w2 must be an int >= 1 or None, got float 2.5"),
        (dict(causal="yes"), r"causal must be a bool, got str"),
        (dict(backend="bogus"), r"backend must be one of auto, cuda, triton, cpu, reference; got 'bogus'"),
        (dict(logits="determinant"), r"logits='determinant' needs a head dim divisible by 3"),
        (dict(logits="volume"), r"logits must be one of trilinear, determinant"),
    ],
)
def test_constructor_checks(kw, match):
    """Bad arguments fail when the layer is built, not at its first forward."""
    with pytest.raises(ValueError, match=match):
        _layer(**kw)


@pytest.mark.parametrize("name", ["trilinear-tied-rope", "determinant-chunk-rope", "sdpa-window"])
@pytest.mark.parametrize("chunk", [1, 3])
def test_cached_generation_equals_the_full_forward(name, chunk):
    """Prompts of different lengths prefilled one sequence at a time (cache.narrow), then decoded
    together `chunk` tokens per call: every output row equals the full forward's."""
    layer = _make(name).eval()
    B, prompts, steps = 2, (5, 2), 6
    total = max(prompts) + chunk * steps
    x = torch.randn(B, total, 48)
    with torch.no_grad():
        full = layer(x)
        cache = layer.new_cache(B, max_chunk=max(chunk, *prompts))
        for b, n in enumerate(prompts):
            got = layer(x[b : b + 1, :n], cache=cache.narrow(b, 1))
            assert rel_err(got[0], full[b, :n]) <= TOL
        pos = torch.tensor(prompts)
        for _ in range(steps):
            idx = pos[:, None] + torch.arange(chunk)
            new = torch.stack([x[b, idx[b]] for b in range(B)])
            got = layer(new, cache=cache)
            ref = torch.stack([full[b, idx[b]] for b in range(B)])
            assert rel_err(got, ref) <= TOL
            pos += chunk
    assert cache.lengths.tolist() == [p + chunk * steps for p in prompts]


@pytest.mark.parametrize("causal", [True, False])
def test_chunk_rotary_shift_invariance(causal):
    """Determinant logits with the chunk rotary: shifting every position by s leaves the output
    unchanged (per-sequence shifts up to 250)."""
    layer = _layer(logits="determinant", rope=True, causal=causal, heads=4)
    x = torch.randn(2, 11, 48)
    base = torch.arange(11)
    y0 = layer(x, base)
    shifted = torch.stack([base + 17, base + 250])
    assert rel_err(layer(x, shifted), y0.expand(2, -1, -1)) <= TOL
    assert rel_err(layer(x, base * 2), y0) > 1e-3  # positions do matter


def test_block_layouts_and_cache():
    block = SimplicialTransformerBlock(48, 4, 2, w1=5, w2=3, rope=True, logits="determinant", backend="reference")
    x = torch.randn(9, 48)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    y = block(x, cu_seqlens=cu)
    assert rel_err(y[4:], block(x[None, 4:])[0]) <= TOL
    cache = block.new_cache(1, max_chunk=9)
    assert isinstance(cache, sa.SimplicialCache)
    with torch.no_grad():
        assert rel_err(block(x[None], cache=cache), block(x[None])) <= TOL
