"""Triton backend (triton_kernels/) against the float64 oracle, CONTRACT §5 bounds.

Without a GPU the kernels run through the Triton interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1). The interpreter costs ~3 ms per program and loop trip, so the grid is
chosen deliberately: the full case grid in float32 with the head-packed tiling forced off and,
where a kv head has several query heads, forced on; the small grid in bfloat16 (packed) and
float16 (sequence tiles); plus one test per failure mode CONTRACT §5 names. Every parity test
checks out, lse and all five gradients, with NaN-poisoned outputs. About 2 minutes on 2 idle
cores. GPU tests (realistic sizes vs the reference backend) are marked `gpu`.
"""

import importlib.util
import math

import pytest
import torch

from simplicial_attn.problem import Problem

from cases import BOUNDS, CASES_FULL, CASES_SMALL, Case, bands, make_dout, make_inputs, rel_err
from oracle import oracle_bwd, oracle_fwd

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

if importlib.util.find_spec("triton") is not None:
    from simplicial_attn import triton_kernels as tk
    from simplicial_attn.triton_kernels import host, runtime

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRADS = ("dq", "dk1", "dk2", "dv1", "dv2")


def _windows(case):
    """The windows of the case's bands (None and windows past the sequence clipped to it)."""
    return tuple(b.width for b in bands(case.w1, case.w2, case.causal, case.N))


def _run(case, dtype, head_packing, inputs=None, dout=None, scale=None):
    """Kernel forward and backward on `case` (scale: default D ** -0.5); returns (out, lse,
    grads, inputs, dout)."""
    q, k1, k2, v1, v2 = inputs if inputs is not None else make_inputs(case, dtype, DEVICE)
    dout = make_dout(case, dtype, DEVICE) if dout is None else dout
    w1, w2 = _windows(case)
    scale = case.D**-0.5 if scale is None else scale
    prob = Problem(*bands(w1, w2, case.causal), scale)
    out, lse, lse_lo = tk.fwd(q, k1, k2, v1, v2, prob, head_packing=head_packing)
    grads = tk.bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob, head_packing=head_packing)
    return out, lse, grads, (q, k1, k2, v1, v2), dout


def _errors(case, out, lse, grads, inputs, dout, scale=None):
    scale = case.D**-0.5 if scale is None else scale
    ref_out, ref_lse = oracle_fwd(*inputs, case.w1, case.w2, case.causal, scale)
    ref_grads = oracle_bwd(dout, *inputs, case.w1, case.w2, case.causal, scale)
    errs = {"out": rel_err(out, ref_out), "lse": rel_err(lse, ref_lse)}
    for name, g, r in zip(GRADS, grads, ref_grads, strict=True):
        if r.norm() > 0:  # w1 = w2 = 1 or N = 1 leave q/k gradients exactly zero
            errs[name] = rel_err(g, r)
        else:
            errs[name] = g.double().abs().max().item()
    return errs


def _check(case, dtype, head_packing, inputs=None, dout=None, scale=None):
    out, lse, grads, inputs, dout = _run(case, dtype, head_packing, inputs, dout, scale)
    assert out.shape == inputs[0].shape and out.dtype == dtype and out.is_contiguous()
    assert lse.shape == (case.B, case.Hq, case.N) and lse.dtype == torch.float32
    for g, x in zip(grads, inputs, strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype
    errs = _errors(case, out, lse, grads, inputs, dout, scale)
    bound = BOUNDS[dtype]
    bad = {k: v for k, v in errs.items() if not v <= bound}
    assert not bad, f"{case.id} {dtype} head_packing={head_packing}: over {bound}: {bad} (all: {errs})"


GQA_CASES = [c for c in CASES_FULL if c.Hq > c.Hkv]


@pytest.mark.parametrize("case", CASES_FULL, ids=lambda c: c.id)
def test_grid_fp32_sequence_tiles(case, poison):
    _check(case, torch.float32, head_packing=False)


@pytest.mark.parametrize("case", GQA_CASES, ids=lambda c: c.id)
def test_grid_fp32_head_packed(case, poison):
    _check(case, torch.float32, head_packing=True)


@pytest.mark.parametrize("case", CASES_SMALL, ids=lambda c: c.id)
def test_grid_bf16_head_packed(case, poison):
    _check(case, torch.bfloat16, head_packing=True)


@pytest.mark.parametrize("case", CASES_SMALL, ids=lambda c: c.id)
def test_grid_fp16_sequence_tiles(case, poison):
    _check(case, torch.float16, head_packing=False)


@pytest.mark.parametrize(
    "case",
    [
        Case(1, 5, 16, 1, 16, 3, 4),
        Case(2, 3, 64, 1, 16, 2, 3),
        Case(1, 6, 32, 2, 40, 4, 5, causal=False),
        Case(1, 5, 24, 1, 16, 3, 2),
    ],
    ids=lambda c: c.id,
)
def test_head_packing_picked_by_shape(case, poison):
    """Hq / Hkv >= 16 packs heads by default. Hq = 64 over one kv head needs two head blocks
    under the interpreter's BLOCK_M = 32, so the head-block index is exercised too; a group
    of 24 fills 24 of 32 packed rows."""
    group = case.Hq // case.Hkv
    arch = host.arch_of(torch.device(DEVICE))
    assert host.head_block(group, None, "fwd", arch, 16, False) > 1
    assert host.head_block(group // 8, None, "fwd", arch, 16, False) == 1
    _check(case, torch.float32, head_packing=None)


@pytest.mark.parametrize("scale", [-0.6, 0.0, 1.7])
@pytest.mark.parametrize("head_packing", [False, True])
def test_any_scale_sign(scale, head_packing, poison):
    """The forward keeps its running max in raw logits (softmax.py) and negates the pair operand
    where scale < 0 (NEG_SCALE): a negative, a zero and a large scale against the oracle, lse
    and the gradients (which read it) included."""
    _check(Case(1, 13, 4, 1, 16, 5, 3), torch.float32, head_packing, scale=scale)


def test_head_packing_forced_on_a_group_of_three(poison):
    """Three heads per kv head pack into 4-row head blocks (one masked) x 8 positions."""
    _check(Case(2, 11, 6, 2, 16, 3, 4), torch.float32, head_packing=True)


def test_non_contiguous_inputs(poison):
    """Every tensor strided differently: a [B, H, N, D] transpose, a channel slice, a head
    slice; dout and the out handed to bwd strided too."""
    case = Case(2, 13, 4, 2, 24, 5, 6)
    B, N, Hq, Hkv, D = case.B, case.N, case.Hq, case.Hkv, case.D
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, Hq, N, D, generator=g).transpose(1, 2)
    k1 = torch.randn(B, N, Hkv, 2 * D, generator=g)[..., 1 : D + 1]
    k2 = torch.randn(B, N, 2 * Hkv, D, generator=g)[:, :, ::2]
    v1 = torch.randn(N, B, Hkv, D, generator=g).transpose(0, 1)
    v2 = torch.randn(B, Hkv, D, N, generator=g).permute(0, 3, 1, 2)
    dout = torch.randn(B, N, Hq, 3 * D, generator=g)[..., ::3]
    inputs = tuple(t.to(DEVICE) for t in (q, k1, k2, v1, v2))
    assert not any(t.is_contiguous() for t in inputs)
    _check(case, torch.float32, head_packing=False, inputs=inputs, dout=dout.to(DEVICE))

    w1, w2 = _windows(case)
    prob = Problem(*bands(w1, w2, True), D**-0.5)
    out, lse, lse_lo = tk.fwd(*inputs, prob)
    out_strided = torch.empty(B, Hq, N, D, device=DEVICE).transpose(1, 2).copy_(out)
    grads = tk.bwd(dout.to(DEVICE), *inputs, out_strided, lse, lse_lo, prob)
    errs = _errors(case, out, lse, grads, inputs, dout)
    assert all(v <= BOUNDS[torch.float32] for v in errs.values()), errs


def test_lse_is_natural_log_and_the_backward_reads_it_so(poison):
    """The forward stores ln(sum exp); a backward fed base-2 lse (a public kernel's bug)
    gets gradients far off, so the parity checks would catch a unit mismatch."""
    case = Case(2, 11, 2, 1, 32, 4, 40)
    out, lse, grads, inputs, dout = _run(case, torch.float32, head_packing=False)
    _, ref_lse = oracle_fwd(*inputs, case.w1, case.w2, case.causal, case.D**-0.5)
    assert rel_err(lse, ref_lse) <= BOUNDS[torch.float32]
    w1, w2 = _windows(case)
    wrong = tk.bwd(
        dout, *inputs, out, lse * math.log2(math.e), torch.zeros_like(lse), Problem(*bands(w1, w2, True), case.D**-0.5)
    )
    errs = _errors(case, out, lse, wrong, inputs, dout)
    assert all(errs[name] > 0.1 for name in GRADS), errs


def test_large_finite_logits_do_not_overflow(poison):
    """Logits past 150 (exp(89) is already inf in float32): the running max keeps exp2 finite
    in both passes. Not larger: at ~300 the rounding of a float32 logit alone (|A| * 6e-8)
    moves P by ~2e-5, past the 1e-5 bound for any float32 implementation."""
    case = Case(1, 9, 2, 1, 16, 4, 3)
    inputs = tuple(t * 3 for t in make_inputs(case, torch.float32, DEVICE))
    out, lse, grads, inputs, dout = _run(case, torch.float32, head_packing=False, inputs=inputs)
    assert lse.max() > 150  # exp(88.8) already overflows float32
    errs = _errors(case, out, lse, grads, inputs, dout)
    assert all(v <= BOUNDS[torch.float32] for v in errs.values()), errs


def test_float64_is_refused_with_a_clear_error():
    q, k1, k2, v1, v2 = make_inputs(Case(1, 3, 1, 1, 16, 2, 2), torch.float64, DEVICE)
    with pytest.raises(TypeError, match="float16, bfloat16 and float32; got torch.float64"):
        tk.fwd(q, k1, k2, v1, v2, Problem(*bands(2, 2, True), 0.25))


def test_tf32_only_when_asked(monkeypatch):
    monkeypatch.delenv(runtime.TF32_ENV, raising=False)
    assert runtime.input_precision(torch.float32, False) == "ieee"
    assert runtime.input_precision(torch.float32, True) == "tf32"
    assert runtime.input_precision(torch.bfloat16, True) == "ieee"
    monkeypatch.setenv(runtime.TF32_ENV, "1")
    assert runtime.input_precision(torch.float32, False) == "tf32"


def test_huge_strides_fall_back_to_contiguous_tiles():
    """In-tile offsets are int32; a view whose strides could overflow them is copied."""

    class View:
        def __init__(self, strides):
            self._strides = strides

        def stride(self, i):
            return self._strides[i]

        def contiguous(self):
            return "copied"

    small = View((10**9, 4096, 128, 1))  # a batch stride past 2^31 is fine: it is 64-bit
    assert host.int32_tiles(small) is small
    assert host.int32_tiles(View((10**9, 2**24, 128, 1))) == "copied"


def test_k_windows_past_int32_offsets_take_positions_columns():
    """bwd_dkv1's HEADS columns (ROWS32 configs) read a query block's k2 / v2 rows at 32-bit offsets
    from the block's first: a window whose rows could overflow them takes POSITIONS columns."""

    class Rows:
        def __init__(self, stride_n):
            self._stride_n = stride_n

        def stride(self, i):
            assert i == 1
            return self._stride_n

    row = 8 * 128  # contiguous [B, N, 8, 128]
    assert host.k_rows_fit(32, 16384, Rows(row), Rows(row))
    assert host.k_rows_fit(2**20, 2**30, Rows(row), Rows(row))  # (2^20 + 128) rows x 2^10 < 2^31
    assert not host.k_rows_fit(2**21, 2**30, Rows(row), Rows(row))
    assert host.k_rows_fit(2**21, 2**20, Rows(row), Rows(row))  # clipped at the sequence: 2^30
    assert not host.k_rows_fit(32, 16384, Rows(row), Rows(2**24))  # one tensor's rows too far apart
    assert host.column_mode(64, 32, True, "sm90", 128, False)[0]  # HEADS, forced
    assert host.column_mode(64, 32, True, "sm90", 128, False, rows_fit=False) == (False, 1)
    assert host.column_mode(64, 32, None, "sm90", 128, False, rows_fit=False) == (False, 1)


# ---------------------------------------------------------------------------------------
# GPU: the whole grid in every dtype, and realistic sizes against the reference backend.

REALISTIC = [
    Case(1, 2048, 64, 1, 128, 512, 32),
    Case(1, 8192, 64, 1, 64, 512, 32),
    Case(1, 8192, 4, 4, 128, 512, 32),
    Case(2, 1024, 8, 8, 64, 512, 32, causal=False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES_FULL, ids=lambda c: c.id)
def test_gpu_grid(case, dtype, poison):
    _check(case, dtype, head_packing=None)
    if case.Hq > case.Hkv:
        _check(case, dtype, head_packing=not (case.Hq // case.Hkv >= 16))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", REALISTIC, ids=lambda c: c.id)
def test_gpu_realistic_sizes_match_the_reference_fp32(case, dtype, poison):
    """The kernels in `dtype` against the reference backend in float32 on the same values."""
    from simplicial_attn.backends import reference

    inputs = make_inputs(case, dtype, "cuda")
    dout = make_dout(case, dtype, "cuda")
    w1, w2 = _windows(case)
    scale = case.D**-0.5
    out, lse, grads, _, _ = _run(case, dtype, None, inputs, dout)
    ref_in = [t.float() for t in inputs]
    prob = Problem(*bands(w1, w2, case.causal), scale)
    ref_out, ref_lse, ref_lse_lo = reference.fwd(*ref_in, prob)
    ref_grads = reference.bwd(dout.float(), *ref_in, ref_out, ref_lse, ref_lse_lo, prob)
    errs = {"out": rel_err(out, ref_out), "lse": rel_err(lse, ref_lse)}
    errs.update({n: rel_err(g, r) for n, g, r in zip(GRADS, grads, ref_grads, strict=True)})
    assert all(v <= BOUNDS[dtype] for v in errs.values()), errs


def _handoff_configs():
    """sm_90's bwd_dqkv2 configs that hand data from bulk stores to bulk loads through global
    memory (AB_SLOT: the pair operands; PART_TMA: the dk2 / dv2 partials), with whether they are
    the head-packed list's (True) or the sequence tiles' (False)."""
    if importlib.util.find_spec("triton") is None:
        return []
    from simplicial_attn.triton_kernels import configs

    lists = {packed: configs.configs("bwd_dqkv2", "sm90", 128, packed=packed) for packed in (True, False)}
    return [
        pytest.param(packed, c, id=f"{'packed' if packed else 'seq'}-{c.num_warps}w{c.num_stages}s-" + "-".join(
            f"{k}={v}" for k, v in sorted(c.kwargs.items())))
        for packed, listed in lists.items() for c in listed if c.kwargs.get("AB_SLOT") or c.kwargs.get("PART_TMA")
    ]  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize(("packed", "cfg"), _handoff_configs())
def test_gpu_sm90_handoff_configs_match_the_oracle_and_repeat(packed, cfg, poison):
    """Each of sm_90's bwd_dqkv2 configs with a global-memory hand-off forced in turn (the
    autotuner measures them, the other tests check only its pick): bulk stores, a completion wait,
    a CTA barrier, a proxy fence, bulk loads (bwd_dqkv2.py), an ordering that only a GPU runs (the
    interpreter's stores are synchronous). Gradients against the oracle, and two runs bitwise
    equal: a stale operand or partial would show in either. Head-packed: 2 positions of 64 heads a
    tile; sequence tiles: 128 positions of one head, N = 300 ending in a partial tile."""
    import triton

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip(f"sm_90's configs (wgmma, TMA); this GPU is {torch.cuda.get_device_name()}")
    case = Case(1, 97, 64, 1, 128, 33, 9) if packed else Case(1, 300, 2, 2, 128, 33, 9)
    dtype = torch.bfloat16
    inputs = make_inputs(case, dtype, "cuda")
    dout = make_dout(case, dtype, "cuda")
    w1, w2 = _windows(case)
    prob = Problem(*bands(w1, w2, case.causal), case.D**-0.5)
    packing = True if packed else None
    out, lse, lse_lo = tk.fwd(*inputs, prob, head_packing=packing)
    ref = oracle_bwd(dout, *inputs, case.w1, case.w2, case.causal, case.D**-0.5)
    forced = {"bwd_dqkv2": triton.Config(dict(cfg.kwargs), num_warps=cfg.num_warps, num_stages=cfg.num_stages)}
    runs = [tk.bwd(dout, *inputs, out, lse, lse_lo, prob, head_packing=packing, config=forced) for _ in range(2)]
    errs = {n: rel_err(g, r) for n, g, r in zip(GRADS, runs[0], ref, strict=True)}
    assert all(v <= BOUNDS[dtype] for v in errs.values()), errs
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.gpu
def test_gpu_backward_is_deterministic():
    case = REALISTIC[0]
    inputs = make_inputs(case, torch.bfloat16, "cuda")
    dout = make_dout(case, torch.bfloat16, "cuda")
    first = _run(case, torch.bfloat16, None, inputs, dout)[2]
    second = _run(case, torch.bfloat16, None, inputs, dout)[2]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
