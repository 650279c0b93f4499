"""The drop-in modules: TwoSimplicialAttention, DotProductAttention, SimplicialTransformerBlock.

Small sizes throughout (the op runs on the CPU reference or C++ backend).
"""

import io

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from simplicial_attn.nn import layer as layer_module
from simplicial_attn.nn.layer import DotProductAttention, SimplicialTransformerBlock, TwoSimplicialAttention
from simplicial_attn.nn.rope import rotary_tables, rotate_pairs

from cases import BOUNDS, rel_err
from oracle import oracle_fwd


def make_layer(dim=48, heads=6, kv_heads=2, **kw):
    kw.setdefault("w1", 5)
    kw.setdefault("w2", 3)
    return TwoSimplicialAttention(dim, heads, kv_heads, **kw)


class RecordOpInputs:
    """Replaces layer.two_simplicial_attention with a wrapper that keeps what the op was given."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = layer_module.two_simplicial_attention

        def wrapper(*args, **kwargs):
            self.calls.append((args, kwargs))
            return real(*args, **kwargs)

        monkeypatch.setattr(layer_module, "two_simplicial_attention", wrapper)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(rope=True, qk_norm=True),
        dict(kv_heads=1, causal=False, bias=True),
        dict(dim=20, heads=3, kv_heads=3, head_dim=8, rope=500.0),  # dim != heads * head_dim
        dict(w1=None, w2=None),
    ],
    ids=["plain", "rope-qknorm", "mqa-centred-bias", "head_dim", "unbounded"],
)
def test_shapes_and_dtype(kw):
    dim = kw.get("dim", 48)
    layer = make_layer(**kw)
    x = torch.randn(2, 11, dim)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def projection_sizes(layer):
    return [getattr(layer, name).weight.shape for name in layer.IN_PROJECTIONS]


def test_projection_sizes():
    """Five input projections, GQA-sized: Hq*D, then Hkv*D each (3/4 of D for k1/k2 with rope)."""
    hq, hkv, d, dim = 6, 2, 8, 48
    assert projection_sizes(make_layer()) == [(hq * d, dim)] + [(hkv * d, dim)] * 4
    kd = 3 * d // 4
    assert (
        projection_sizes(make_layer(rope=True))
        == [(hq * d, dim), (hkv * kd, dim), (hkv * kd, dim)] + [(hkv * d, dim)] * 2
    )
    assert sum(1 for m in make_layer().modules() if isinstance(m, torch.nn.Linear)) == 6


@pytest.mark.parametrize("make", [lambda: make_layer(rope=True, bias=True), lambda: DotProductAttention(32, 4, 2)])
def test_state_dict_of_the_fused_projection_loads(make):
    """A state dict saved when the input projections were one fused `in_proj` (rows q, k1, k2, v1, v2) loads
    into the separate projections."""
    torch.manual_seed(3)
    layer = make()
    names = layer.IN_PROJECTIONS
    fused = {k: v for k, v in layer.state_dict().items() if not k.startswith(names)}
    for suffix in ("weight", "bias"):
        if getattr(layer.q_proj, suffix) is not None:
            fused[f"in_proj.{suffix}"] = torch.cat([getattr(layer, n).state_dict()[suffix] for n in names])
    fresh = make()
    assert not torch.equal(fresh.q_proj.weight, layer.q_proj.weight)
    fresh.load_state_dict(fused, strict=True)
    x = torch.randn(2, 9, fresh.dim)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("rope", [None, True])
def test_seeded_layer_draws_what_the_fused_projection_drew(rope):
    """Splitting the fused input projection kept seeded runs reproducible: without biases, a seeded layer's
    parameters are the numbers the earlier layer drew (one Linear of Hq*D + 4*Hkv*D rows, then out_proj)."""
    torch.manual_seed(5)
    layer = make_layer(rope=rope)
    rows = sum(getattr(layer, n).out_features for n in layer.IN_PROJECTIONS)
    torch.manual_seed(5)
    in_proj, out_proj = torch.nn.Linear(48, rows, bias=False), torch.nn.Linear(48, 48, bias=False)
    torch.nn.init.normal_(in_proj.weight, std=48**-0.5)
    torch.nn.init.normal_(out_proj.weight, std=48**-0.5)
    got = torch.cat([getattr(layer, n).weight for n in layer.IN_PROJECTIONS])
    assert torch.equal(got, in_proj.weight) and torch.equal(layer.out_proj.weight, out_proj.weight)


@pytest.mark.parametrize("causal", [True, False])
def test_matches_oracle_through_projections(causal):
    """The layer equals out_proj(oracle(q, k1, k2, v1, v2)) with the five inputs projected by hand."""
    d = 8
    layer = make_layer(causal=causal, bias=True)
    x = torch.randn(2, 9, 48)
    projs = [getattr(layer, name) for name in layer.IN_PROJECTIONS]
    q, k1, k2, v1, v2 = (F.linear(x, p.weight, p.bias).unflatten(-1, (-1, d)) for p in projs)
    out, _ = oracle_fwd(q, k1, k2, v1, v2, 5, 3, causal, d**-0.5)
    expect = F.linear(out.flatten(-2), layer.out_proj.weight.double(), layer.out_proj.bias.double())
    assert rel_err(layer(x), expect) < BOUNDS[torch.float32]


def test_forward_is_the_op_on_project(monkeypatch):
    """With rope and qk_norm on, forward is exactly op(*project(x)) followed by out_proj."""
    layer = make_layer(rope=True, qk_norm=True)
    x = torch.randn(2, 9, 48)
    rec = RecordOpInputs(monkeypatch)
    y = layer(x)
    ((args, kwargs),) = rec.calls
    for got, want in zip(args, layer.project(x), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert kwargs == dict(w1=5, w2=3, causal=True, logits="trilinear", backend="auto")
    torch.testing.assert_close(y, layer.out_proj(layer_module.two_simplicial_attention(*args, **kwargs).flatten(-2)))


class ExpansionDetector(TorchDispatchMode):
    """Flags any op that takes a [B, N, Hkv, *] tensor and returns a [B, N, Hq, *] one (a K/V expansion).

    The attention op itself (which reads kv head h // group internally) is the only exception.
    """

    def __init__(self, b, n, hq, hkv):
        super().__init__()
        self.b, self.n, self.hq, self.hkv = b, n, hq, hkv
        self.expansions = []
        self.ops_seen = 0

    def _heads(self, tree, h):
        leaves, _ = tree_flatten(tree)
        return any(
            isinstance(t, torch.Tensor) and t.dim() >= 3 and tuple(t.shape[:3]) == (self.b, self.n, h) for t in leaves
        )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops_seen += 1
        if func.namespace != "simplicial_attn" and self._heads((args, kwargs), self.hkv) and self._heads(out, self.hq):
            self.expansions.append(str(func))
        return out


@pytest.mark.parametrize("rope", [None, True])
def test_gqa_without_kv_expansion(monkeypatch, rope):
    b, n, hq, hkv, d = 2, 7, 6, 2, 8
    layer = make_layer(rope=rope, qk_norm=True)
    rec = RecordOpInputs(monkeypatch)
    x = torch.randn(b, n, hq * d, requires_grad=True)
    with ExpansionDetector(b, n, hq, hkv) as detector:
        layer(x).sum().backward()
    assert detector.ops_seen > 10, "the dispatch mode saw the layer's ops"
    assert detector.expansions == []
    ((args, _),) = rec.calls
    assert args[0].shape == (b, n, hq, d)
    for t in args[1:]:
        assert t.shape == (b, n, hkv, d)
        assert 0 not in t.stride(), "an expand()ed (stride-0) view"


def test_expansion_detector_catches_repeat_interleave():
    """The detector above is not vacuous: expanding k to the query heads is flagged."""
    k = torch.randn(2, 7, 2, 8)
    with ExpansionDetector(2, 7, 6, 2) as detector:
        k.repeat_interleave(3, dim=2)
    assert detector.expansions


def shifted_outputs(layer, x, offsets):
    """Outputs for positions 0..N-1 and for the same tokens at positions offset + (0..N-1)."""
    n = x.shape[1]
    base = layer(x, torch.arange(n))
    shifted = layer(x, torch.as_tensor(offsets)[:, None] + torch.arange(n))  # per-row offsets, [B, N]
    return base, shifted


@pytest.mark.parametrize("causal", [True, False])
def test_rope_shift_invariance(causal):
    """The documented property: shifting every position by the same amount leaves the output unchanged."""
    torch.manual_seed(1)
    layer = make_layer(dim=64, heads=4, kv_heads=2, w1=6, w2=4, rope=True, qk_norm=True, causal=causal)
    x = torch.randn(3, 13, 64)
    base, shifted = shifted_outputs(layer, x, [1, 37, 250])
    assert rel_err(shifted, base) < 1e-5
    # ...while positions do matter: stretching them (not a shift) changes the output.
    assert rel_err(layer(x, 2 * torch.arange(13)), base) > 1e-2


def test_rotating_all_three_is_not_shift_invariant():
    """Why the tied policy exists: standard RoPE on q, k1 and k2 alike is not a function of offsets."""
    torch.manual_seed(2)
    b, n, h, d = 1, 9, 2, 16
    q, k1, k2, v1, v2 = (torch.randn(b, n, h, d) for _ in range(5))

    def naive(positions):
        cos, sin = rotary_tables(positions, d // 2, 10000.0)
        rq, r1, r2 = (rotate_pairs(t, cos, sin) for t in (q, k1, k2))
        return layer_module.two_simplicial_attention(rq, r1, r2, v1, v2, w1=4, w2=4)

    assert rel_err(naive(torch.arange(n) + 5), naive(torch.arange(n))) > 1e-2


def test_rope_tied_pairs():
    """k2 is constant on each pair of the first half, k1 on each pair of the second, after rotation."""
    layer = make_layer(dim=64, heads=4, kv_heads=2, rope=True)
    _, k1, k2, _, _ = layer.project(torch.randn(2, 5, 64), torch.arange(5) + 3)
    half = k1.shape[-1] // 2
    pairs1, pairs2 = k1[..., half:].unflatten(-1, (-1, 2)), k2[..., :half].unflatten(-1, (-1, 2))
    assert torch.equal(pairs1[..., 0], pairs1[..., 1]) and torch.equal(pairs2[..., 0], pairs2[..., 1])


def test_dot_product_attention_rope_shift_and_window():
    """The SDPA twin: standard RoPE is shift invariant, and `window` masks like the oracle's trailing window."""
    attn = DotProductAttention(32, 4, 2, window=3, rope=True)
    x = torch.randn(2, 10, 32)
    base, shifted = shifted_outputs(attn, x, [4, 90])
    assert rel_err(shifted, base) < 1e-5
    plain = DotProductAttention(32, 4, 2, window=3)
    q, k, v = (p(x).unflatten(-1, (-1, 8)).transpose(1, 2) for p in (plain.q_proj, plain.k_proj, plain.v_proj))
    k, v = (t.repeat_interleave(2, dim=1) for t in (k, v))
    i = torch.arange(10)
    allowed = (i[:, None] - i[None, :] >= 0) & (i[:, None] - i[None, :] < 3)
    scores = (q @ k.transpose(-1, -2) * 8**-0.5).masked_fill(~allowed, float("-inf"))
    expect = plain.out_proj((scores.softmax(-1) @ v).transpose(1, 2).flatten(-2))
    assert rel_err(plain(x), expect) < 1e-5


def test_state_dict_round_trip():
    torch.manual_seed(3)
    src = make_layer(rope=True, qk_norm=True, bias=True)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # move the norms' gains off their init
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    torch.manual_seed(4)
    dst = make_layer(rope=True, qk_norm=True, bias=True)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf, weights_only=True))
    assert sorted(dst.state_dict()) == sorted(src.state_dict())
    x = torch.randn(2, 7, 48)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


@pytest.mark.parametrize("simplicial", [True, False])
def test_a_few_optimiser_steps_reduce_the_loss(simplicial):
    torch.manual_seed(5)
    block = SimplicialTransformerBlock(32, 4, 2, simplicial=simplicial, w1=6, w2=4, rope=True, qk_norm=True)
    x, target = torch.randn(4, 12, 32), torch.randn(4, 12, 32)
    opt = torch.optim.Adam(block.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = F.mse_loss(block(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_block_structure_and_dropout():
    block = SimplicialTransformerBlock(32, 4, simplicial=True, w1=4, w2=4, dropout=0.5, mlp_hidden=40)
    assert isinstance(block.attn, TwoSimplicialAttention) and block.mlp.up.out_features == 40
    assert isinstance(SimplicialTransformerBlock(32, 4, simplicial=False).attn, DotProductAttention)
    x = torch.randn(2, 6, 32)
    block.eval()
    torch.testing.assert_close(block(x), block(x))
    block.train()
    assert not torch.equal(block(x), block(x))


def test_compile_fullgraph():
    """The layer traces without graph breaks (fullgraph) through dynamo and AOT autograd; forward and
    backward agree with eager. aot_eager rather than inductor: inductor's C++ codegen of the layer's
    elementwise ops takes a minute on 2 cores, and test_op.py already runs the op through inductor."""
    torch._dynamo.reset()
    torch.manual_seed(6)
    layer = make_layer(rope=True, qk_norm=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 9, 48, requires_grad=True)
    x_eager = x.detach().clone().requires_grad_()
    y, y_eager = compiled(x), layer(x_eager)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(y.square().sum(), [x, layer.k1_proj.weight])
    grads_eager = torch.autograd.grad(y_eager.square().sum(), [x_eager, layer.k1_proj.weight])
    for g, ge in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(g, ge, rtol=1e-4, atol=1e-5)


def test_bf16_autocast(monkeypatch):
    """Under autocast the op gets five bf16 tensors; the result tracks fp32 within bf16 accuracy."""
    torch.manual_seed(7)
    layer = make_layer(rope=True, qk_norm=True)
    x = torch.randn(2, 9, 48)
    expect = layer(x)
    rec = RecordOpInputs(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    ((args, _),) = rec.calls
    assert {t.dtype for t in args} == {torch.bfloat16}
    assert y.dtype == torch.bfloat16
    assert rel_err(y, expect) < 3e-2  # a few bf16 roundings (projections, op inputs, output) of ~4e-3 each
    y.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(heads=6, kv_heads=4), "num_heads = 6 must be a multiple of num_kv_heads = 4"),
        (dict(dim=50, heads=6, kv_heads=2), "dim = 50 must be divisible by num_heads = 6"),
        (dict(rope=True, head_dim=6), "head_dim divisible by 4"),
        (dict(rope="yes"), "rope must be None, a bool or a RoPE base"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(heads=0), "num_heads must be an int >= 1"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        make_layer(**kw)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    torch.manual_seed(8)
    layer = make_layer(rope=True, qk_norm=True)
    x = torch.randn(2, 33, 48)
    expect = layer(x)
    got = layer.cuda()(x.cuda())
    assert rel_err(got, expect) < 2e-3  # tf32 tensor cores may serve the fp32 projections and op
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x.cuda())
    assert y.dtype == torch.bfloat16 and rel_err(y, expect) < 3e-2


def test_bad_positions():
    layer = make_layer(rope=True)
    x = torch.randn(2, 5, 48)
    for bad in (torch.arange(5.0), torch.arange(6), torch.zeros(3, 5, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"positions must be an integer tensor of shape \[N\] = \[5\]"):
            layer(x, bad)


@pytest.mark.parametrize("cls", [TwoSimplicialAttention, DotProductAttention])
@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_input_of_another_dtype_names_x(cls, dtype):
    """A float64 or int64 x for a float32 layer: a TypeError naming x, not nn.Linear's dtype error."""
    layer = cls(dim=16, num_heads=2)
    x = torch.randn(1, 5, 16).to(dtype)
    with pytest.raises(TypeError, match=r"x must have the layer's dtype float32 .*got " + str(dtype)[6:]):
        layer(x)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        layer([[0.0] * 16])
