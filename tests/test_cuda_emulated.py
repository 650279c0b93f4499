"""The CUDA C++ kernels, run on the CPU emulator, against the float64 oracle.

No GPU is needed: tests/cuda_emulator.py compiles csrc/cuda with -DSA_EMULATE, which runs the
kernels' own code (launchers, index arithmetic, mma/ldmatrix fragment layouts, cp.async
pipeline, barriers) with each CTA's threads as fibers in a seeded shuffled order and fails on
any out-of-bounds or misaligned access, shared-memory race, uninitialised shared read, barrier
or collective mismatch or doubly-written output. So a pass here means the kernels compute the
CONTRACT and are memory-safe for these shapes; it says nothing about speed or hardware rounding
(tests/test_cuda_kernels.py runs them on a GPU).

Coverage you can see: the kernels mark their runtime paths with SA_PATH (more than one pipeline
iteration, zero-filled tails, head packing, the last partial tile, GQA, split output columns,
vector and scalar loads, ...); test_every_marked_path_is_visited fails if a marked path of a
kernel is never run at a padded head dim (64, 128, 256) by the cases below.

Runtime on 2 cores: ~25 s to compile the emulator once (cached per source state), then
~0.2-8 s per case and dtype; about 2 minutes in all. SIMPLICIAL_ATTN_EMULATE_FULL=1 adds the
whole shared case grid (~4 more minutes).
"""

import os
import re

import cuda_emulator as emu
import pytest
import torch

from simplicial_attn.problem import Problem

from cases import BOUNDS, CASES_FULL, CASES_SMALL, Case, bands, make_dout, make_inputs, rel_err
from oracle import oracle_bwd, oracle_fwd

pytestmark = pytest.mark.skipif(emu.unavailable_reason() is not None, reason=f"{emu.unavailable_reason()}")

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
HALF = [torch.float16, torch.bfloat16]  # tensor-core kernels; float32 runs the SIMT kernels

# Beyond the shared grid: the paths the kernels choose at runtime, each case with the dtypes it
# runs in (the tensor-core paths are the same for fp16 and bf16; the slow ones run in one).
SPECIAL = [
    (Case(1, 5, 32, 2, 24, 3, 2), DTYPES),  # head packing (16 query heads per kv head), D % 8 == 0
    (Case(1, 6, 17, 1, 20, 4, 6, causal=False), DTYPES),  # head packing, odd group: a partial head block; scalar loads
    (Case(1, 9, 1, 1, 200, 5, 4), DTYPES),  # D = 200: padded to 256, output columns split over 2 CTAs
    (Case(1, 97, 2, 1, 64, 40, 20), HALF),  # several k1/v1 blocks and offset chunks: the cp.async pipeline
    # The pipeline, several query blocks and u chunks, GQA and zero-filled columns at 128 and 256.
    (Case(1, 70, 2, 1, 120, 40, 20), [torch.float16]),
    (Case(1, 40, 2, 1, 248, 20, 12), [torch.float16]),
    # Head packing with a partial head block and scalar loads at 128 and 256.
    (Case(1, 3, 17, 1, 100, 3, 2), HALF),
    (Case(1, 3, 17, 1, 196, 3, 2, causal=False), HALF),
    # Head packing of 16 heads (a warp's rows at one position) and windows wider than a k1/v1 block:
    # the forward's interior blocks (no mask) beside its edge blocks, at 64, 128 and 256.
    (Case(1, 50, 16, 1, 64, 48, 3), HALF),
    (Case(1, 50, 16, 1, 128, 48, 3), [torch.float16]),
    (Case(1, 40, 16, 1, 256, 40, 3), [torch.float16]),
    # Without head packing, scalar loads (D % 8 != 0) at 64 and 128: dq and dkv2.
    (Case(1, 7, 2, 1, 20, 4, 3), [torch.float16]),
    (Case(1, 5, 2, 1, 100, 3, 2), [torch.float16]),
    # The fused dq + dk2 + dv2 pass (>= 16 heads packed per position): spans of several tiles (w2 wider
    # than 3 tiles' positions), an odd N (a last tile of one valid position of two) at 128, one
    # position of 32 heads per tile at 64, two head blocks (64 heads) at 64 and 128.
    (Case(1, 41, 16, 1, 120, 20, 9), HALF),
    (Case(1, 23, 32, 1, 40, 12, 9), [torch.bfloat16]),
    (Case(1, 7, 64, 1, 24, 4, 3), [torch.float16]),
    (Case(1, 7, 64, 1, 100, 5, 4), [torch.bfloat16]),
    # The fused pass's sequence tiles (Hq == Hkv; one head, 32 positions a tile, the k2 / v2 ring):
    # spans of two tiles and three scratch layers (w2 = 99 > 3 tiles' positions) at 64, scalar loads
    # (D % 8 != 0) at 64 and 128 with three kv heads.
    (Case(1, 100, 1, 1, 16, 99, 99), [torch.bfloat16]),
    (Case(1, 9, 1, 1, 20, 5, 4), [torch.float16]),
    (Case(1, 40, 3, 3, 100, 6, 5, causal=False), [torch.bfloat16]),
    # The SIMT kernels at 128 and 256: GQA, warps past the last row, lanes past D.
    (Case(1, 9, 3, 1, 100, 5, 3), [torch.float32]),
    (Case(1, 7, 2, 1, 196, 4, 3), [torch.float32]),
]
FULL = os.environ.get("SIMPLICIAL_ATTN_EMULATE_FULL", "0") == "1"
PAIRS = [(c, dt) for c, dts in SPECIAL for dt in dts]
PAIRS += [(c, dt) for c in (CASES_FULL if FULL else CASES_SMALL) for dt in DTYPES]


def _problem(case, scale=None, logits="trilinear"):
    """The kernel-level Problem of a batched case (its bands, default scale D ** -0.5)."""
    return Problem(*bands(case.w1, case.w2, case.causal, case.N), case.D**-0.5 if scale is None else scale, logits)


def _check(name, got, ref, dtype):
    assert not torch.isnan(got).any(), f"{name}: NaN (an element no kernel wrote keeps the driver's NaN poison)"
    err = rel_err(got, ref)
    assert err <= BOUNDS[dtype], f"{name}: relative error {err:.2e} > {BOUNDS[dtype]:.0e}"


def _run_and_check(case, dtype, fast_math=False):
    q, k1, k2, v1, v2 = make_inputs(case, dtype)
    dout = make_dout(case, dtype)
    prob = _problem(case)
    out, lse, lse_lo = emu.fused_fwd(q, k1, k2, v1, v2, prob, fast_math=fast_math)
    ref_out, ref_lse = oracle_fwd(q, k1, k2, v1, v2, case.w1, case.w2, case.causal, prob.scale)
    _check("out", out, ref_out, dtype)
    _check("lse", lse, ref_lse, dtype)
    grads = emu.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob, fast_math=fast_math)
    refs = oracle_bwd(dout, q, k1, k2, v1, v2, case.w1, case.w2, case.causal, prob.scale)
    for name, g, r in zip(("dq", "dk1", "dk2", "dv1", "dv2"), grads, refs, strict=True):
        _check(name, g, r, dtype)


def _dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


# Every run by its record name (tests/test_cuda_paths.py reads the paths they visit): (function, arguments...).
RUNS = {f"batched-{c.id}-{_dtype_id(dt)}": (_run_and_check, c, dt) for c, dt in PAIRS}


@pytest.mark.parametrize("name", RUNS)
def test_fwd_bwd_match_oracle(name):
    emu.record_run(name, *RUNS[name])


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_forward_masks_only_the_edge_blocks(head_dim):
    """The forward's blocks inside every row's window take their logits unmasked, the others are
    masked, and a step whose rows' maxima all stay skips the rescale: each is run (by the oracle
    case of head packing with windows wider than a block, checked there) at every padded head dim.
    A forward that masked every block, or never skipped a rescale, would still be right: this is
    what notices."""
    (name,) = [n for n in RUNS if f"-Hq16-Hkv1-D{head_dim}-w1_" in n and n.endswith("-float16")]
    counts = emu.recorded_paths(name) or emu.record_run(name, *RUNS[name])
    for path in ("mask: interior block", "mask: edge block", "softmax: rescale skipped"):
        assert counts[("fwd_kernel", head_dim, path)] > 0, f"{name}: the forward never took '{path}'"


# The emulated --use_fast_math arithmetic of the GPU build (flush-to-zero, MUFU exp2 / log2 at
# their worst-case error) keeps every bound: a case per padded head dim, w2 > 32, GQA, centred.
FAST_MATH = [Case(1, 33, 8, 8, 16, 5, 40), Case(2, 20, 4, 2, 128, 6, 3), Case(1, 9, 2, 1, 200, 5, 4, causal=False)]


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("case", FAST_MATH, ids=lambda c: c.id)
def test_fast_math_keeps_the_bounds(case, dtype):
    _run_and_check(case, dtype, fast_math=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=lambda d: str(d).removeprefix("torch."))
def test_strided_inputs(dtype):
    """Inputs that are views with padded rows and a [B, H, N, D] memory order: the kernels take the
    strides as given (64-bit), no copy."""
    case = Case(2, 13, 4, 2, 64, 5, 3)
    q, k1, k2, v1, v2 = make_inputs(case, dtype)

    def restride(t):
        B, N, H, D = t.shape
        base = torch.full((B, H, N, D + 8), float("nan"), dtype=dtype)  # padding never read
        base[..., :D] = t.permute(0, 2, 1, 3)
        return base[..., :D].permute(0, 2, 1, 3)

    views = [restride(t) for t in (q, k1, k2, v1, v2)]
    assert not views[0].is_contiguous()
    prob = _problem(case, 0.3)
    out, lse, lse_lo = emu.fused_fwd(*views, prob)
    ref_out, ref_lse = oracle_fwd(q, k1, k2, v1, v2, case.w1, case.w2, case.causal, 0.3)
    _check("out", out, ref_out, dtype)
    _check("lse", lse, ref_lse, dtype)
    dout = make_dout(case, dtype)
    grads = emu.fused_bwd(restride(dout), *views, restride(out), lse, lse_lo, prob)
    refs = oracle_bwd(dout, q, k1, k2, v1, v2, case.w1, case.w2, case.causal, 0.3)
    for name, g, r in zip(("dq", "dk1", "dk2", "dv1", "dv2"), grads, refs, strict=True):
        _check(name, g, r, dtype)


def test_lse_is_natural_log():
    """lse is ln(sum exp(logits)): one row by hand."""
    case = Case(1, 3, 1, 1, 16, 2, 2)
    q, k1, k2, v1, v2 = make_inputs(case, torch.float32)
    _, lse, _ = emu.fused_fwd(q, k1, k2, v1, v2, Problem(*bands(2, 2, True), 0.5))
    i = 2
    logits = [
        0.5 * (q[0, i, 0] * k1[0, j, 0] * k2[0, k, 0]).sum().double() for j in (1, 2) for k in (1, 2)
    ]  # causal w = 2: j, k in {1, 2}
    assert abs(lse[0, 0, i].item() - torch.logsumexp(torch.stack(logits), 0).item()) < 1e-5


# ------------------------------------------------------------------------------------------------
# The emulator's own checks: planted faults it must report (csrc/cuda/emulator/selftest.h).

FAULTS = {
    "misaligned-global": r"global read of 8 bytes .* not naturally aligned",
    "misaligned-shared": r"shared read of 16 bytes .* not naturally aligned",
    "helper-divergence": (
        r"warp collective \(kind \d+ at selftest\.h:\d+ > fragments\.cuh:\d+\) while other lanes are in"
    ),
    "barrier-divergence": r"__syncthreads at selftest\.h:\d+ while other threads wait at selftest\.h:\d+",
    "shared-race": r"race: shared read",
    "early-cp-async-read": r"while a cp\.async into it is in flight",
    "output-two-threads": r"element of global at byte 0 written by two threads .*: outputs must have one owner",
    "rmw-unordered": r"race: read of ordered at byte 0, which thread [01] wrote since the last barrier",
    "rmw-two-ctas": r"race: (read|write) of ordered at byte 0, which another CTA of the launch (wrote|read)",
    "rmw-read-elsewhere": r"race: write of ordered at byte 0, which another CTA of the launch read",
}


@pytest.mark.parametrize("fault", FAULTS)
def test_emulator_reports_planted_fault(fault):
    proc = emu.selftest(fault)
    assert proc.returncode == 3, f"{fault}: not reported (exit {proc.returncode}): {proc.stdout}{proc.stderr}"
    assert re.search(FAULTS[fault], proc.stderr), proc.stderr


def test_emulator_allows_adds_taken_in_turn_across_barriers():
    """The other side of rmw-unordered: the fused backward's scratch rows are added to by the
    threads of one CTA in turn, a barrier between each (bwd_dqkv2_kernel.cuh, sequence tiles)."""
    proc = emu.selftest("rmw-ordered")
    assert proc.returncode == 0, proc.stderr
    assert "sum 3" in proc.stdout, proc.stdout


def test_emulator_shuffles_blocks_and_threads_by_seed():
    def order(seed):
        out = emu.selftest("order", "--seed", str(seed)).stdout.splitlines()
        return [line.split()[1:] for line in out]

    first, again, other = order(3), order(3), order(4)
    assert first == again, "the same seed must give the same order"
    assert first != other, "different seeds must give different orders"
    blocks, threads = first
    assert blocks != sorted(blocks, key=int) and threads != sorted(threads, key=int)


def test_emulator_fast_math_special_functions():
    """Fast-math exp2 / log2 are within their worst-case error of the exact ones and flush
    subnormals; exact mode is exact."""

    def values(*options):
        out = emu.selftest("special-functions", *options).stdout.split("\n")
        return [(f, float(x), float(y)) for f, x, y in (line.split() for line in out if line)]

    for (f, x, exact), (_, _, fast) in zip(values(), values("--fast-math"), strict=True):
        ref = 2.0**x if f == "exp2" else torch.tensor(x).double().log2().item()
        if f == "exp2" and ref < 2.0**-126:  # a subnormal result (or argument) flushes
            assert fast == 0.0 or x == 0.0 or abs(fast - 1.0) <= 2**-22, (f, x, fast)
            continue
        if f == "log2" and x < 2.0**-126:
            assert fast == float("-inf"), (f, x, fast)
            continue
        assert abs(exact - ref) <= abs(ref) * 2**-23, (f, x, exact, ref)
        tol = abs(ref) * 2**-21 if f == "exp2" else 2**-21 + abs(ref) * 2**-23  # + the float result's rounding
        assert abs(fast - ref) <= tol, (f, x, fast, ref)
