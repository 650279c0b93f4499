"""Packed variable-length sequences (CONTRACT §6) on every backend.

Each sequence of a packing must equal its own `two_simplicial_attention` call (out, lse and all
five gradients), against the float64 oracle (one dense call per sequence) within CONTRACT §5
and against the same backend's separate calls. Packings include empty and length-1 sequences,
lengths that are no multiple of any block, a sequence shorter than the windows, GQA ratios 1
and 8, D = 16 and 128, both window modes. The Triton backend runs through the interpreter
(~3 ms per program and loop trip), so its packings are the small ones.
"""

import subprocess
import sys

import pytest
import torch

import simplicial_attn as sa
from simplicial_attn.ops import library

from cases import BOUNDS, backend_params, device_of, make_packed, rel_err
from oracle import oracle_varlen_bwd, oracle_varlen_fwd

GRADS = ("dq", "dk1", "dk2", "dv1", "dv2")

# (lengths, Hq, Hkv, D, w1, w2, causal)
PACKINGS = [
    ([5, 0, 1, 17, 3], 2, 2, 16, 4, 3, True),  # empty and length-1 sequences
    ([9, 2, 11], 8, 1, 16, 6, 4, False),  # GQA 8, centred
    ([3, 13], 2, 1, 128, 20, 5, True),  # D = 128; the first sequence is shorter than the windows
    ([1, 1, 1], 2, 2, 16, 3, 3, True),  # only length-1 sequences
    ([0, 7, 0], 4, 2, 40, None, 3, False),  # empty sequences around one, unbounded window
    ([37, 21, 40], 2, 2, 64, 12, 9, True),  # longer sequences: several tiles each
]
# The interpreter runs every program of (tiles of max_seqlen) x heads x sequences: small ones.
INTERP_PACKINGS = PACKINGS[:4]


def _pid(p):
    lengths, hq, hkv, d, w1, w2, causal = p
    return f"L{'_'.join(map(str, lengths))}-Hq{hq}-Hkv{hkv}-D{d}-w1_{w1}-w2_{w2}-{'causal' if causal else 'centred'}"


def _packings(backend):
    return INTERP_PACKINGS if backend == "triton" and not torch.cuda.is_available() else PACKINGS


def _cases():
    for backend in backend_params():
        for p in PACKINGS:
            slow = p not in INTERP_PACKINGS
            marks = list(backend.marks)
            if backend.values[0] == "triton" and slow:
                marks.append(
                    pytest.mark.skipif(not torch.cuda.is_available(), reason="interpreter: small packings only")
                )
            yield pytest.param(backend.values[0], p, marks=marks, id=f"{backend.id}-{_pid(p)}")


def _run(backend, packing, dtype, seed=0):
    lengths, hq, hkv, d, w1, w2, causal = packing
    dev = device_of(backend)
    inputs, cu = make_packed(lengths, hq, hkv, d, dtype, dev, seed=seed, requires_grad=True)
    out, lse = sa.two_simplicial_attention_varlen(
        *inputs, cu, max(lengths), w1, w2, causal=causal, return_lse=True, backend=backend
    )
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dev, dtype)
    grads = torch.autograd.grad(out, inputs, dout)
    return inputs, cu, dout, out, lse, grads


@pytest.mark.parametrize("backend, packing", list(_cases()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_varlen_matches_the_oracle(backend, packing, dtype, poison):
    if dtype == torch.bfloat16 and backend == "triton" and packing != PACKINGS[0] and not torch.cuda.is_available():
        pytest.skip("interpreter: bf16 on one packing only")
    lengths, hq, hkv, d, w1, w2, causal = packing
    inputs, cu, dout, out, lse, grads = _run(backend, packing, dtype)
    assert out.shape == inputs[0].shape and out.dtype == dtype and lse.shape == (hq, sum(lengths))
    ref_out, ref_lse = oracle_varlen_fwd(*inputs, cu.cpu(), w1, w2, causal)
    ref_grads = oracle_varlen_bwd(dout, *inputs, cu.cpu(), w1, w2, causal)
    errs = {"out": rel_err(out, ref_out), "lse": rel_err(lse, ref_lse)}
    errs.update({n: rel_err(g, r) for n, g, r in zip(GRADS, grads, ref_grads, strict=True)})
    bad = {k: v for k, v in errs.items() if not v <= BOUNDS[dtype]}
    assert not bad, f"{backend} {_pid(packing)} {dtype}: over {BOUNDS[dtype]}: {bad}"


@pytest.mark.parametrize("backend, packing", list(_cases()))
def test_each_sequence_equals_its_own_call(backend, packing, poison):
    """The packed call against the same backend's separate batched calls, sequence by sequence."""
    lengths, hq, hkv, d, w1, w2, causal = packing
    inputs, cu, dout, out, lse, grads = _run(backend, packing, torch.float32, seed=3)
    bounds = cu.tolist()
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        if s == e:
            continue
        rows = [t.detach()[None, s:e].clone().requires_grad_() for t in inputs]
        o, o_lse = sa.two_simplicial_attention(*rows, w1, w2, causal=causal, return_lse=True, backend=backend)
        g = torch.autograd.grad(o, rows, dout[None, s:e])
        tol = BOUNDS[torch.float32]
        assert rel_err(out[s:e], o[0]) <= tol and rel_err(lse[:, s:e], o_lse[0]) <= tol, (s, e)
        for name, packed, single in zip(GRADS, grads, g, strict=True):
            assert rel_err(packed[s:e], single[0]) <= tol, f"{name} of sequence [{s}, {e})"


def _packed_args(lengths=(3, 4)):
    (q, k1, k2, v1, v2), cu = make_packed(list(lengths), 2, 1, 8)
    return q, k1, k2, v1, v2, cu


def _call(q, k1, k2, v1, v2, cu, **kw):
    kw.setdefault("w1", 3)
    kw.setdefault("w2", 2)
    return sa.two_simplicial_attention_varlen(q, k1, k2, v1, v2, cu, backend="reference", **kw)


@pytest.mark.parametrize(
    "cu, exc, match",
    [
        (torch.tensor([[0, 3, 7]], dtype=torch.int32), ValueError, r"cu_seqlens must be 1-D \[S \+ 1\]"),
        (torch.tensor([0.0, 3.0, 7.0]), TypeError, r"cu_seqlens must have dtype int32 or int64, got float32"),
        (
            torch.tensor([1, 3, 7], dtype=torch.int32),
            ValueError,
            r"cu_seqlens must start at 0, got cu_seqlens\[0\] = 1",
        ),
        (
            torch.tensor([0, 5, 4, 7], dtype=torch.int32),
            ValueError,
            r"cu_seqlens must not decrease.*\[1\] = 5 > \[2\] = 4",
        ),
        (
            torch.tensor([0, 3, 6], dtype=torch.int64),
            ValueError,
            r"cu_seqlens must end at T = q.shape\[0\] = 7, got .* 6",
        ),
        ([0, 3, 7], TypeError, r"cu_seqlens must be a torch.Tensor"),
        (
            torch.tensor([0, 3, 7], dtype=torch.int32, device="meta"),
            ValueError,
            r"cu_seqlens must be on q's device cpu",
        ),
    ],
    ids=["2d", "float", "start", "decreasing", "end", "list", "device"],
)
def test_bad_cu_seqlens(cu, exc, match):
    q, k1, k2, v1, v2, _ = _packed_args()
    with pytest.raises(exc, match=match):
        _call(q, k1, k2, v1, v2, cu)


def test_bad_max_seqlen_and_layout():
    q, k1, k2, v1, v2, cu = _packed_args()
    with pytest.raises(ValueError, match=r"max_seqlen must be >= every sequence length \(4\), got 3"):
        _call(q, k1, k2, v1, v2, cu, max_seqlen=3)
    with pytest.raises(TypeError, match=r"max_seqlen must be an int >= 0 or None, got float"):
        _call(q, k1, k2, v1, v2, cu, max_seqlen=4.0)
    with pytest.raises(ValueError, match=r"q must have rank 3 \[T, Hq, D\], got rank 4"):
        _call(q[None], k1, k2, v1, v2, cu)
    with pytest.raises(ValueError, match=r"k1, k2, v1, v2 must have q's T = 7"):
        _call(q, k1[:6], k2[:6], v1[:6], v2[:6], cu)


@pytest.mark.parametrize("backend", backend_params(("reference", "cpu")))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("max_seqlen", [10**5, 2**40])
def test_max_seqlen_is_a_hint_not_the_work(max_seqlen, causal, backend, monkeypatch):
    """CONTRACT §6: a max_seqlen far past the longest sequence changes neither the result nor the
    problem the kernels get: bands and grid bound come from the sequences themselves (the
    reference once gathered max_seqlen window slots per row: 8 TiB at 2**40, seconds at 10**5)."""
    from simplicial_attn import backends
    from simplicial_attn.problem import window_band

    q, k1, k2, v1, v2, cu = _packed_args((3, 4))
    seen = []
    cls = type(backends.get(backend))
    real_fwd = cls.fwd
    monkeypatch.setattr(cls, "fwd", lambda self, *a: seen.append(a[-1]) or real_fwd(self, *a))
    kw = dict(w1=2, w2=None, causal=causal, backend=backend)
    ref = sa.two_simplicial_attention_varlen(q, k1, k2, v1, v2, cu, **kw)
    got = sa.two_simplicial_attention_varlen(q, k1, k2, v1, v2, cu, max_seqlen, **kw)
    assert torch.equal(got, ref)
    prob = seen[-1]
    assert prob.max_seqlen == 4
    assert (prob.band1, prob.band2) == (window_band(2, causal, 4), window_band(None, causal, 4))


def test_empty_packing():
    q, k1, k2, v1, v2, cu = _packed_args(())
    out, lse = _call(q, k1, k2, v1, v2, cu, return_lse=True)
    assert out.shape == (0, 2, 8) and lse.shape == (2, 0)


@pytest.mark.parametrize("backend", backend_params(("reference", "cpu")))
def test_opcheck(backend):
    (q, k1, k2, v1, v2), cu = make_packed([3, 0, 5], 4, 2, 16, requires_grad=True)
    args = [t[None] for t in (q, k1, k2, v1, v2)]
    prob = (cu, 5, 3, 2, True, 0.25, "trilinear", backend)
    torch.library.opcheck(library.attention, (*args, *prob))


@pytest.mark.parametrize("backend", backend_params(("reference", "cpu")))
def test_compile_fullgraph_does_not_recompile_for_a_new_packing(backend):
    torch._dynamo.reset()
    frames = []

    def count(gm, example_inputs):
        frames.append(gm)
        return gm

    def f(q, k1, k2, v1, v2, cu):
        out = sa.two_simplicial_attention_varlen(q, k1, k2, v1, v2, cu, 8, 3, 2, backend=backend)
        return out.square().sum()

    compiled = torch.compile(f, fullgraph=True, backend=count)
    for lengths in ([3, 5, 2], [8, 1, 1], [2, 2, 6]):  # same T = 10 and S, new packing each time
        (q, k1, k2, v1, v2), cu = make_packed(lengths, 2, 1, 16, requires_grad=True)
        loss = compiled(q, k1, k2, v1, v2, cu)
        loss.backward()
        eager = [t.detach().clone().requires_grad_() for t in (q, k1, k2, v1, v2)]
        ref = f(*eager, cu)
        ref.backward()
        torch.testing.assert_close(loss, ref)
        for a, b in zip((q, k1, k2, v1, v2), eager, strict=True):
            torch.testing.assert_close(a.grad, b.grad)
    assert len(frames) == 1, f"recompiled for a new packing: {len(frames)} graphs"


MEMORY_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import simplicial_attn as sa
from bench.memory import peak_rss_delta
torch.set_num_threads(2)
backend = sys.argv[2]
H, D = 2, 32
lengths = [1] * 2000 + [2048]                 # S * max_seqlen = 4.1M rows; T = 4048 rows
T = sum(lengths)
cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
q, k1, k2, v1, v2, dout = (torch.randn(T, H, D) for _ in range(6))
small = [t[:64] for t in (q, k1, k2, v1, v2)]
sa.two_simplicial_attention_varlen(*small, torch.tensor([0, 64], dtype=torch.int32), 64, 16, 8, backend=backend)
ins = [t.requires_grad_() for t in (q, k1, k2, v1, v2)]
def run():
    out = sa.two_simplicial_attention_varlen(*ins, cu, 2048, 64, 8, backend=backend)
    return torch.autograd.grad(out, ins, dout)
print(json.dumps({"peak": peak_rss_delta(run), "row_bytes": H * D * 4}))
"""


@pytest.mark.parametrize("backend", backend_params(("reference", "cpu")))
def test_memory_is_that_of_the_tokens(backend):
    """2000 one-token sequences and one of 2048: an allocation proportional to S * max_seqlen
    (padding) would need 4.1M rows per tensor; the packed call stays within a few hundred
    input-sized tensors of T = 4048 rows (the reference's chunk temporaries are bounded too)."""
    import json
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, root, backend], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    padded_tensor = (2000 + 1) * 2048 * result["row_bytes"]  # one [S, max_seqlen, H, D] float32 tensor
    assert result["peak"] < padded_tensor / 4, f"peak {result['peak'] / 2**20:.1f} MiB"
