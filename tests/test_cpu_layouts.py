"""The C++ CPU kernels on packed sequences, determinant logits and decoding, on every flavour.

What the API tests (test_varlen.py, test_determinant.py, test_kvcache.py) do not reach in these
kernels: every instruction-set flavour this CPU has (SIMPLICIAL_ATTN_CPU_ISA); packed sequences
of several query blocks whose halos reach more than one neighbour; bitwise-equal packed
gradients with 1 and 2 threads; the swapped-window path of the determinant (w2 > w1, which
negates the scale); gathered rows (D not a multiple of the vector width, bf16); and decoding
whose j windows are split into parts (w1 well above the 64-position part), some of them empty
for some rows, with ring caches that wrapped.
"""

import pytest
import torch

import simplicial_attn as sa
from simplicial_attn.backends import extension
from simplicial_attn.problem import Problem

from cases import BOUNDS, Case, bands, make_dout, make_inputs, make_packed, rel_err
from oracle import oracle_bwd, oracle_fwd, oracle_varlen_bwd, oracle_varlen_fwd

if not extension.has_kernel("cpu"):
    pytest.skip(
        f"the C++ extension simplicial_attn._C with CPU kernels is not built ({extension.build_info()})",
        allow_module_level=True,
    )

ops = torch.ops.simplicial_attn
ISA_ENV = "SIMPLICIAL_ATTN_CPU_ISA"
NAMES = ("out", "lse", "dq", "dk1", "dk2", "dv1", "dv2")


def _isas():
    cap = torch.backends.cpu.get_cpu_capability()
    return ["base"] + (["avx2"] if cap in ("AVX2", "AVX512") else []) + (["avx512"] if cap == "AVX512" else [])


ISAS = _isas()


def _check(got, ref, bound, what):
    for name, x, r in zip(NAMES, got, ref, strict=False):
        assert x.shape == r.shape, f"{what}: {name} shape {tuple(x.shape)} != {tuple(r.shape)}"
        err = rel_err(x, r)
        assert err <= bound, f"{what}: {name} relative error {err:.3e} > {bound:.1e}"


# (lengths, Hq, Hkv, D, w1, w2, causal, logits)
PACKINGS = [
    # 120 rows in blocks of 32 with a 39-row band: halos over two blocks; empty, length-1.
    ([37, 0, 1, 120, 21], 4, 2, 40, 40, 9, True, "trilinear"),
    # w2 > w1 (swapped pairs, negated determinant), centred, D = 12 (rows gathered and padded).
    ([70, 3, 0, 90], 2, 1, 12, 9, 30, False, "determinant"),
]


def _pid(p):
    lengths, hq, hkv, d, w1, w2, causal, logits = p
    mode = "causal" if causal else "centred"
    return f"L{'_'.join(map(str, lengths))}-Hq{hq}-Hkv{hkv}-D{d}-w1_{w1}-w2_{w2}-{mode}-{logits}"


def _packed_call(packing, inputs, cu, dout):
    lengths, _, _, d, w1, w2, causal, logits = packing
    prob = Problem(*bands(w1, w2, causal), d**-0.5, logits, cu, max(lengths)).fused_args()
    q, k1, k2, v1, v2 = (t[None] for t in inputs)
    out, lse, lse_lo = ops.fused_fwd(q, k1, k2, v1, v2, *prob)
    grads = ops.fused_bwd(dout[None], q, k1, k2, v1, v2, out, lse, lse_lo, *prob)
    return (out[0], lse[0], *(g[0] for g in grads))


@pytest.mark.parametrize("packing", PACKINGS, ids=_pid)
def test_packed_matches_the_oracle_on_every_flavour(packing, poison, monkeypatch):
    lengths, hq, hkv, d, w1, w2, causal, logits = packing
    inputs, cu = make_packed(lengths, hq, hkv, d, seed=30)
    dout = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(31))
    args = (cu, w1, w2, causal, None, logits)
    ref = (*oracle_varlen_fwd(*inputs, *args), *oracle_varlen_bwd(dout, *inputs, *args))
    for isa in ISAS:
        monkeypatch.setenv(ISA_ENV, isa)
        _check(_packed_call(packing, inputs, cu, dout), ref, BOUNDS[torch.float32], f"{_pid(packing)} isa={isa}")


def test_packed_gradients_are_bitwise_equal_across_thread_counts():
    packing = PACKINGS[0]
    inputs, cu = make_packed(packing[0], *packing[1:4], seed=32)
    dout = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(33))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = _packed_call(packing, inputs, cu, dout)
        torch.set_num_threads(1)
        one = _packed_call(packing, inputs, cu, dout)
    finally:
        torch.set_num_threads(threads)
    for name, a, b in zip(NAMES, two, one, strict=True):
        assert torch.equal(a, b), f"{name} differs between 2 threads and 1 thread"


DET_CASES = [
    Case(2, 61, 4, 2, 24, 20, 40, causal=False),  # w2 > w1: swapped, scale negated; several blocks
    Case(1, 45, 2, 1, 12, 30, 7),  # D = 12: rows gathered and padded in float32
]


@pytest.mark.parametrize("case", DET_CASES, ids=lambda c: c.id)
def test_determinant_matches_the_oracle_on_every_flavour(case, poison, monkeypatch):
    inputs = make_inputs(case, torch.float32, seed=34)
    dout = make_dout(case, torch.float32, seed=35)
    args = (case.w1, case.w2, case.causal, None, "determinant")
    ref = (*oracle_fwd(*inputs, *args), *oracle_bwd(dout, *inputs, *args))
    prob = Problem(*bands(case.w1, case.w2, case.causal), case.D**-0.5, "determinant").fused_args()
    for isa in ISAS:
        monkeypatch.setenv(ISA_ENV, isa)
        out, lse, lse_lo = ops.fused_fwd(*inputs, *prob)
        grads = ops.fused_bwd(dout, *inputs, out, lse, lse_lo, *prob)
        _check((out, lse, *grads), ref, BOUNDS[torch.float32], f"{case.id} isa={isa}")


# (B, Hq, Hkv, D, w1, w2, lengths before the call, Nq, logits)
DECODES = [
    (2, 8, 2, 40, 150, 20, (170, 17), 1, "trilinear"),  # 3 parts of the j window; the rings wrapped
    (2, 4, 2, 24, 150, 20, (170, 17), 20, "determinant"),  # 2 blocks of rows x 2 parts; empty parts
]


def _did(s):
    B, Hq, Hkv, D, w1, w2, lengths, nq, logits = s
    return f"B{B}-Hq{Hq}-Hkv{Hkv}-D{D}-w1_{w1}-w2_{w2}-L{'_'.join(map(str, lengths))}-nq{nq}-{logits}"


def _decode_case(scenario, dtype):
    """Whole sequences, the rings after writing every position up to each sequence's last new
    token (NaN in the slots never written), and the float64 reference's rows for the new tokens."""
    B, Hq, Hkv, D, w1, w2, lengths, nq, logits = scenario
    total = max(lengths) + nq
    g = torch.Generator().manual_seed(36)
    q = torch.randn(B, total, Hq, D, generator=g)
    kv = [torch.randn(B, total, Hkv, D, generator=g) for _ in range(4)]
    slots = (w1 + nq - 1, w2 + nq - 1, w1 + nq - 1, w2 + nq - 1)
    caches = [torch.full((B, c, Hkv, D), float("nan")) for c in slots]
    for b, L in enumerate(lengths):
        for cache, t in zip(caches, kv, strict=True):
            C = cache.shape[1]
            last = torch.arange(max(0, L + nq - C), L + nq)  # the positions the ring still holds
            cache[b, last % C] = t[b, last]
    new_q = torch.stack([q[b, L : L + nq] for b, L in enumerate(lengths)])
    ref_out, ref_lse = [], []
    for b, L in enumerate(lengths):
        rows = (t[b : b + 1, : L + nq].double() for t in (q, *kv))
        o, s = sa.two_simplicial_attention(*rows, w1, w2, logits=logits, return_lse=True, backend="reference")
        ref_out.append(o[0, L:])
        ref_lse.append(s[0, :, L:])
    lens = torch.tensor(lengths, dtype=torch.int32)
    return new_q.to(dtype), [c.to(dtype) for c in caches], lens, torch.stack(ref_out), torch.stack(ref_lse)


@pytest.mark.parametrize("scenario", DECODES, ids=_did)
def test_decode_matches_the_reference_on_every_flavour(scenario, poison, monkeypatch):
    B, Hq, Hkv, D, w1, w2, lengths, nq, logits = scenario
    for dtype, isas in ((torch.float32, ISAS), (torch.bfloat16, [""])):
        q, caches, lens, ref_out, ref_lse = _decode_case(scenario, dtype)
        for isa in isas:
            monkeypatch.setenv(ISA_ENV, isa)
            out, lse = ops.fused_decode(
                q, *caches, *Problem(*bands(w1, w2, True), D**-0.5, logits, cache_seqlens=lens).decode_args()
            )
            what = f"{_did(scenario)} {dtype} isa={isa or 'default'}"
            assert out.dtype == dtype and lse.dtype == torch.float32
            _check((out, lse), (ref_out, ref_lse), BOUNDS[dtype], what)


def test_decode_refuses_a_ring_too_small_for_its_window():
    q, caches, lens, _, _ = _decode_case(DECODES[0], torch.float32)
    k1c, k2c, v1c, v2c = caches
    with pytest.raises(RuntimeError, match="k1_cache has 149 slots: too few"):
        ops.fused_decode(q, k1c[:, :149], k2c, v1c[:, :149], v2c, lens, 149, 0, 19, 0, 0.125, "trilinear")
    with pytest.raises(RuntimeError, match="cache_seqlens must be >= 0"):
        ops.fused_decode(q, *caches, torch.tensor([-1, 3], dtype=torch.int32), 149, 0, 19, 0, 0.125, "trilinear")
    causal_only = r"decoding takes causal bands \(right1 = right2 = 0\), got right1 = 0, right2 = 1"
    with pytest.raises(RuntimeError, match=causal_only):
        ops.fused_decode(q, *caches, lens, 149, 0, 19, 1, 0.125, "trilinear")
