"""Decoding with a rolling cache (CONTRACT §7) on every backend.

Prefill, then decode step by step (Nq = 1) or in chunks (Nq > 1): every new token's output and
lse must equal the matching row of the full causal forward over the sequence so far (float64
oracle, CONTRACT §5 bounds), for batches whose sequences have different lengths, generations
several times longer than the ring (it wraps), GQA, windows of None (a linear cache) and
finite ones, and both logit forms.
"""

import pytest
import torch

import simplicial_attn as sa
from simplicial_attn.ops import library

from cases import BOUNDS, backend_params, device_of, rel_err
from oracle import oracle_decode


def _sequence(B, N, Hq, Hkv, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, N, Hq, D, generator=g)
    kv = [torch.randn(B, N, Hkv, D, generator=g) for _ in range(4)]
    return [t.to(device, dtype) for t in (q, *kv)]


# (B, Hq, Hkv, D, w1, w2, prompts, chunk, steps, ring_extra, logits)
#   prompts: each sequence's prompt length (prefilled one sequence at a time);
#   chunk: new tokens per decode call; steps: decode calls; ring_extra: slots beyond w + chunk - 1.
SCENARIOS = [
    (2, 4, 2, 16, 5, 3, (3, 7), 1, 14, 0, "trilinear"),  # Nq = 1; the ring of 5 slots wraps ~4 times
    (2, 8, 1, 16, 4, 6, (6, 2), 3, 6, 1, "trilinear"),  # Nq = 3 chunks, GQA 8, w2 > w1
    (1, 2, 2, 12, 3, 2, (4,), 2, 5, 0, "determinant"),
    (2, 2, 1, 16, None, 4, (5, 1), 2, 4, 0, "trilinear"),  # w1 = None: a linear k1/v1 cache
]
INTERP_SCENARIOS = SCENARIOS[:2] + SCENARIOS[3:]  # the determinant case runs once triton has it, on a GPU


def _sid(s):
    B, Hq, Hkv, D, w1, w2, prompts, chunk, steps, extra, logits = s
    return f"B{B}-Hq{Hq}-Hkv{Hkv}-D{D}-w1_{w1}-w2_{w2}-p{'_'.join(map(str, prompts))}-nq{chunk}x{steps}-{logits}"


def _ring(w, chunk, extra, total):
    """Slots for window w when calls bring up to `chunk` new tokens (w = None: a linear cache)."""
    return total if w is None else w + chunk - 1 + extra


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_sid)
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decoding_equals_the_full_forward(backend, scenario, dtype, poison):
    B, Hq, Hkv, D, w1, w2, prompts, chunk, steps, extra, logits = scenario
    if (
        backend == "triton"
        and not torch.cuda.is_available()
        and (dtype != torch.float32 or scenario[-1] != "trilinear")
    ):
        pytest.skip("interpreter: float32 trilinear scenarios only")
    dev = device_of(backend)
    total = max(prompts) + chunk * steps
    q, k1, k2, v1, v2 = _sequence(B, total, Hq, Hkv, D, dtype, dev)
    widest = max(chunk, *prompts)  # the prefill calls bring whole prompts
    c1, c2 = _ring(w1, widest, extra, total), _ring(w2, widest, extra, total)
    # NaN in every slot: a kernel that reads a slot no window holds (unwritten, or past the
    # sequence) turns the output NaN instead of merely weighting it by 0.
    caches = [torch.full((B, c, Hkv, D), float("nan"), dtype=dtype, device=dev) for c in (c1, c2, c1, c2)]
    k1c, k2c, v1c, v2c = caches
    lengths = torch.zeros(B, dtype=torch.int32, device=dev)
    checked = []
    # Prefill each sequence on its own (views of the batch's caches), then decode them together.
    for b, n in enumerate(prompts):
        rows = slice(b, b + 1)
        new = [t[rows, :n] for t in (k1, k2, v1, v2)]
        out, lse = sa.two_simplicial_attention_with_kvcache(
            q[rows, :n], k1c[rows], k2c[rows], v1c[rows], v2c[rows], lengths[rows], *new, w1, w2,
            logits=logits, return_lse=True, backend=backend,
        )  # fmt: skip
        ref_out, ref_lse = oracle_decode(q[rows], k1[rows], k2[rows], v1[rows], v2[rows], [0], n, w1, w2, None, logits)
        checked.append((f"prefill {b}", out, lse, ref_out, ref_lse))
        lengths[b] = n
    pos = torch.tensor(prompts)
    for step in range(steps):
        idx = pos[:, None] + torch.arange(chunk)  # each sequence's next `chunk` positions
        take = [torch.stack([t[b, idx[b]] for b in range(B)]) for t in (q, k1, k2, v1, v2)]
        out, lse = sa.two_simplicial_attention_with_kvcache(
            take[0], k1c, k2c, v1c, v2c, lengths, *take[1:], w1, w2, logits=logits, return_lse=True, backend=backend
        )
        ref_out, ref_lse = oracle_decode(q, k1, k2, v1, v2, pos.tolist(), chunk, w1, w2, None, logits)
        checked.append((f"step {step}", out, lse, ref_out, ref_lse))
        lengths += chunk
        pos += chunk
    bound = BOUNDS[dtype]
    for name, out, lse, ref_out, ref_lse in checked:
        assert out.dtype == dtype and lse.dtype == torch.float32
        errs = (rel_err(out, ref_out), rel_err(lse, ref_lse))
        assert max(errs) <= bound, f"{backend} {_sid(scenario)} {name}: out {errs[0]:.2e}, lse {errs[1]:.2e}"


@pytest.mark.parametrize("scale", [-0.6, 0.0])
@pytest.mark.parametrize("backend", backend_params())
def test_decoding_any_scale_sign(backend, scale, poison):
    """A negative and a zero scale (the Triton kernels keep their running max in raw logits and
    take the scale in the exponent: launch.raw_logit_scale) against the oracle: a prefill of 5
    tokens, then one step of 2 on a ring of 5 slots, GQA 4."""
    dev = device_of(backend)
    B, Hq, Hkv, D, w1, w2 = 1, 4, 1, 16, 4, 3
    q, k1, k2, v1, v2 = _sequence(B, 7, Hq, Hkv, D, torch.float32, dev, seed=3)
    caches = [torch.full((B, 5, Hkv, D), float("nan"), device=dev) for _ in range(4)]
    lengths = torch.zeros(B, dtype=torch.int32, device=dev)
    for start, n in ((0, 5), (5, 2)):
        rows = slice(start, start + n)
        out, lse = sa.two_simplicial_attention_with_kvcache(
            q[:, rows], *caches, lengths, k1[:, rows], k2[:, rows], v1[:, rows], v2[:, rows], w1, w2,
            scale=scale, return_lse=True, backend=backend,
        )  # fmt: skip
        ref_out, ref_lse = oracle_decode(q, k1, k2, v1, v2, [start], n, w1, w2, scale, "trilinear")
        errs = (rel_err(out, ref_out), rel_err(lse, ref_lse))
        assert max(errs) <= BOUNDS[torch.float32], f"{backend} scale {scale} {start}+{n}: {errs}"
        lengths += n


@pytest.mark.parametrize("backend", backend_params())
def test_cache_object_generates_in_constant_memory(backend):
    """SimplicialCache: 30 single-token steps through rings of w + 0 slots; each output equals the
    full forward's row, and the cache never grows."""
    dev = device_of(backend)
    B, Hq, Hkv, D, w1, w2, N = 2, 4, 2, 16, 4, 3, 30
    q, k1, k2, v1, v2 = _sequence(B, N, Hq, Hkv, D, torch.float32, dev, seed=5)
    cache = sa.SimplicialCache(B, Hkv, D, w1, w2, dtype=torch.float32, device=dev)
    size = cache.nbytes()
    twin = cache.clone()
    outs = [cache.attend(q[:, t : t + 1], k1[:, t : t + 1], k2[:, t : t + 1], v1[:, t : t + 1], v2[:, t : t + 1],
                         backend=backend) for t in range(N)]  # fmt: skip
    assert cache.nbytes() == size and cache.lengths.tolist() == [N, N]
    assert twin.lengths.tolist() == [0, 0], "clone() is independent storage"
    full = sa.two_simplicial_attention(q, k1, k2, v1, v2, w1, w2, backend="reference")
    assert rel_err(torch.cat(outs, 1), full) <= BOUNDS[torch.float32]


def _cache_args(B=2, Nq=1, C1=6, C2=4, Hq=4, Hkv=2, D=8):
    q = torch.randn(B, Nq, Hq, D)
    caches = [torch.randn(B, c, Hkv, D) for c in (C1, C2, C1, C2)]
    return q, caches, torch.zeros(B, dtype=torch.int32)


def _decode(q, caches, lengths, new=(None,) * 4, w1=4, w2=3, **kw):
    return sa.two_simplicial_attention_with_kvcache(q, *caches, lengths, *new, w1, w2, backend="reference", **kw)


def test_too_small_cache_and_bad_lengths():
    q, caches, lengths = _cache_args(Nq=3, C1=5, C2=6)
    with pytest.raises(ValueError, match=r"k1_cache is too small: C1 = 5 slots; a ring needs w1 \+ Nq - 1 = 6"):
        _decode(q, caches, torch.tensor([3, 0], dtype=torch.int32))
    _decode(q, caches, torch.tensor([2, 0], dtype=torch.int32))  # nothing has wrapped yet: a linear use is fine
    q, caches, lengths = _cache_args()
    with pytest.raises(ValueError, match=r"cache_seqlens must have dtype int32, got int64"):
        _decode(q, caches, lengths.long())
    with pytest.raises(ValueError, match=r"cache_seqlens must have shape \[B\] = \[2\], got \[1\]"):
        _decode(q, caches, lengths[:1])
    with pytest.raises(ValueError, match=r"cache_seqlens must be >= 0"):
        _decode(q, caches, torch.tensor([-1, 0], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"a None window needs a linear cache.*6 \+ 1 = 7"):
        _decode(q, caches, torch.tensor([6, 0], dtype=torch.int32), w1=None)


def test_bad_cache_shapes_and_new_tokens():
    q, caches, lengths = _cache_args()
    bad = list(caches)
    bad[2] = bad[2][:, :5]
    with pytest.raises(ValueError, match=r"v1_cache must have shape \[B, C1, Hkv, D\] = \(2, 6, 2, 8\)"):
        _decode(q, bad, lengths)
    new = [torch.randn(2, 1, 2, 8) for _ in range(4)]
    with pytest.raises(ValueError, match=r"must be given together"):
        _decode(q, caches, lengths, new=(new[0], None, None, None))
    with pytest.raises(ValueError, match=r"k2 must have shape \[B, Nq, Hkv, D\] = \(2, 1, 2, 8\), got \(2, 2, 2, 8\)"):
        _decode(q, caches, lengths, new=(new[0], torch.randn(2, 2, 2, 8), new[2], new[3]))
    with pytest.raises(ValueError, match=r"logits='determinant' needs a head dim divisible by 3 .*got D = 8"):
        _decode(q, caches, lengths, logits="determinant")


@pytest.mark.parametrize("backend", backend_params(("reference", "cpu")))
def test_caches_that_would_lose_new_tokens_are_refused_before_any_write(backend):
    """CONTRACT §7: an expanded cache (row 1's k1 would land in row 0's slot) or a cache passed
    twice (k1 lost under v1) is a ValueError naming it, and no cache has changed."""
    q, caches, lengths = _cache_args()
    new = [torch.randn(2, 1, 2, 8) for _ in range(4)]
    expanded = list(caches)
    expanded[0] = caches[0][:1].expand(2, -1, -1, -1)  # one batch row's slots, shared by both rows
    twice = [caches[0], caches[1], caches[0], caches[3]]  # k1_cache is v1_cache
    views = [caches[0][:, :3], caches[1], caches[0][:, 3:], caches[3]]  # halves of one tensor
    cases = [
        (expanded, r"k1_cache is expanded \(stride 0 on dim 0 of size 2\)"),
        (twice, r"v1_cache shares its storage with k1_cache"),
        (views, r"v1_cache shares its storage with k1_cache"),
    ]
    for bad, match in cases:
        before = [c.clone() for c in bad]
        with pytest.raises(ValueError, match=match):
            sa.two_simplicial_attention_with_kvcache(q, *bad, lengths, *new, 3, 3, backend=backend)
        assert all(torch.equal(c, b) for c, b in zip(bad, before, strict=True)), "a cache was written"


def test_new_tokens_land_in_their_slots():
    q, caches, _ = _cache_args(Nq=2, C1=6, C2=4)
    new = [torch.randn(2, 2, 2, 8) for _ in range(4)]
    lengths = torch.tensor([5, 2], dtype=torch.int32)
    before = [c.clone() for c in caches]
    _decode(q, caches, lengths, new=new)
    for cache, old, fresh in zip(caches, before, (new[0], new[1], new[2], new[3]), strict=True):
        C = cache.shape[1]
        for b, L in enumerate(lengths.tolist()):
            slots = [(L + t) % C for t in range(2)]
            assert torch.equal(cache[b, slots], fresh[b])
            untouched = [s for s in range(C) if s not in slots]
            assert torch.equal(cache[b, untouched], old[b, untouched])


@pytest.mark.parametrize("backend", backend_params(("reference", "cpu")))
def test_opcheck_and_compile(backend):
    q, caches, lengths = _cache_args(Nq=2)
    new = [torch.randn(2, 2, 2, 8) for _ in range(4)]
    torch.library.opcheck(
        library.attention_with_kvcache, (q, *caches, lengths, *new, 4, 3, 0.5, "trilinear", backend),
        test_utils=("test_schema", "test_faketensor"),
    )  # fmt: skip
    torch._dynamo.reset()
    step = torch.compile(
        lambda q, c, lens, n: sa.two_simplicial_attention_with_kvcache(q, *c, lens, *n, 4, 3, backend=backend),
        fullgraph=True,
    )
    eager_caches = [c.clone() for c in caches]
    out = step(q, caches, lengths, new)
    ref = sa.two_simplicial_attention_with_kvcache(q, *eager_caches, lengths, *new, 4, 3, backend=backend)
    torch.testing.assert_close(out, ref)
    for a, b in zip(caches, eager_caches, strict=True):
        assert torch.equal(a, b), "the compiled step must write the new tokens into the caches too"


def test_not_differentiable():
    """Decoding is inference: no autograd graph is built, even from inputs that require grad."""
    q, caches, lengths = _cache_args()
    out = _decode(q.requires_grad_(), caches, lengths)
    assert not out.requires_grad and out.grad_fn is None


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_decode_step_captures_in_a_cuda_graph(backend):
    """A decode step (write the new token, attend, advance lengths) replayed from a CUDA graph
    equals the eager step: no host sync, no allocation that depends on values."""
    B, Hq, Hkv, D, w1, w2, steps = 2, 8, 2, 64, 64, 16, 5
    q, k1, k2, v1, v2 = _sequence(B, 40 + steps, Hq, Hkv, D, torch.bfloat16, "cuda")
    cache = sa.SimplicialCache(B, Hkv, D, w1, w2, max_chunk=40, dtype=torch.bfloat16, device="cuda")
    cache.attend(q[:, :40], k1[:, :40], k2[:, :40], v1[:, :40], v2[:, :40], backend=backend)
    eager = cache.clone()
    static = [torch.empty_like(t[:, :1]) for t in (q, k1, k2, v1, v2)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream (compiles the kernels)
        for t, src in zip(static, (q, k1, k2, v1, v2), strict=True):
            t.copy_(src[:, 40:41])
        cache.clone().attend(*static, backend=backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = cache.attend(*static, backend=backend)
    for step in range(steps):
        for t, src in zip(static, (q, k1, k2, v1, v2), strict=True):
            t.copy_(src[:, 40 + step : 41 + step])
        graph.replay()
        ref = eager.attend(*static, backend=backend)
        assert rel_err(out, ref) <= BOUNDS[torch.bfloat16]
    assert torch.equal(cache.lengths, eager.lengths)
