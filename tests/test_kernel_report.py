"""bench/verify/kernel_report.py --check --quick: every shipped Triton kernel config compiles for sm_80,
sm_86 and sm_90 without spills (beyond configs.DET_SPILL_BUDGET), within each arch's shared
memory, with tensor-core instructions in its main loops and no atomics; the determinant /
packed variants on sm_90 only (the full report, without --quick, compiles them for every
arch). No GPU needed (ahead-of-time compilation).

The report runs in a subprocess with TRITON_INTERPRET removed from its environment: this
test process has the interpreter switched on (conftest), and compiling needs it off.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_kernel_report_check_passes():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "verify" / "kernel_report.py"), "--check", "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("sm80", "sm86", "sm90"))]
    for arch in ("sm80", "sm86", "sm90"):
        kernels = {line.split()[1] for line in rows if line.startswith(arch)}
        assert kernels == {"fwd", "bwd_dqkv2", "bwd_reduce2", "bwd_dkv1", "bwd_delta", "decode", "decode_combine"}, (
            arch,
            kernels,
        )
        variants = {line.split()[3] for line in rows if line.startswith(arch) and " fwd " in line}
        assert variants == ({"base", "det+var"} if arch == "sm90" else {"base"}), (arch, variants)
    assert any("wgmma" in line for line in rows if line.startswith("sm90 ") and " fwd " in line)


SYNTHETIC_PTX = """
$L__BB0_1:                              // =>This Loop Header: Depth=1
\tld.global.b32 \t%r1, [%rd1];
$L__BB0_2:                              // =>  This Inner Loop Header: Depth=2
\tmma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1, %f2, %f3, %f4}, {%r1}, {%r2}, {%f1, %f2, %f3, %f4};
\t@%p1 bra \t$L__BB0_2;
// %bb.3:                               //   in Loop: Header=BB0_1 Depth=1
\t@%p2 bra \t$L__BB0_1;
$L__BB0_4:                              // =>This Inner Loop Header: Depth=1
\tfma.rn.f32 \t%f5, %f6, %f7, %f8;
// %bb.5:                               //   in Loop: Header=BB0_4 Depth=1
\t@%p3 bra \t$L__BB0_4;
"""


def _kernel_report():
    sys.path.insert(0, str(ROOT / "bench" / "verify"))
    try:
        import kernel_report
    finally:
        sys.path.pop(0)
    return kernel_report


def test_loop_scan_flags_an_inner_loop_without_mma():
    """The check is not vacuous: of two innermost loops, the FMA-only one is reported."""
    kernel_report = _kernel_report()
    assert kernel_report._innermost_loops(SYNTHETIC_PTX) == [("$L__BB0_2", True), ("$L__BB0_4", False)]
    row = dict(arch="sm90", kernel="fwd", dtype="bf16", spill=0, smem=1024, loops=2, tc_loops=1, atomics=0)
    assert kernel_report._problems(row, {"sm90": 232448}) == ["main loop without tensor cores"]
    row.update(tc_loops=2, spill=8, smem=300000, atomics=2)
    assert kernel_report._problems(row, {"sm90": 232448}) == [
        "spills 8 B",
        "smem 300000 > 232448",
        "2 atomic instructions",
    ]


def test_spill_budget_covers_only_determinant_variants_at_d256():
    """configs.DET_SPILL_BUDGET excuses the determinant backward at D class 256 up to its
    bytes, nothing else: the same spill at D 128, in the trilinear variant or past the budget fails."""
    kernel_report = _kernel_report()
    budget = {"bwd_dkv1": 1000}
    row = dict(arch="sm90", kernel="bwd_dkv1", variant="det+var", bd=256, dtype="bf16", spill=900, smem=0)
    row.update(loops=1, tc_loops=1, atomics=0)
    assert kernel_report._problems(row, {"sm90": 232448}, budget) == []
    for change in (dict(spill=1001), dict(bd=128), dict(variant="base"), dict(kernel="fwd")):
        assert kernel_report._problems({**row, **change}, {"sm90": 232448}, budget) != [], change


def test_ptx_scans_count_instructions_and_atomics():
    """The counter hook compiles to red/atom instructions; the scan finds them, predicated or not."""
    kernel_report = _kernel_report()
    ptx = "\t.reg .b32 %r<4>;\n$L__BB0_1:\n\t@%p1 red.global.add.s32 [%rd1], %r1;\n"
    ptx += "\tatom.global.add.u32 %r2, [%rd2], 1;\n\tadd.s32 %r3, %r1, %r2;\n\tret;\n// a comment\n"
    assert len(kernel_report.ATOMIC_RE.findall(ptx)) == 2
    assert len(kernel_report.INSTR_RE.findall(ptx)) == 4


def test_seq_spill_budget_covers_only_sequence_tiles_at_d256_or_determinant():
    """configs.SEQ_SPILL_BUDGET excuses bwd_dqkv2's sequence tiles at D class 256 (or with
    determinant logits) up to its bytes, nothing else: head-packed tiles, D 128 trilinear, other
    kernels and a larger spill fail."""
    kernel_report = _kernel_report()
    seq = {"bwd_dqkv2": 500}
    row = dict(arch="sm90", kernel="bwd_dqkv2", tiling="seq", variant="base", bd=256, dtype="bf16", spill=400, smem=0)
    row.update(loops=1, tc_loops=1, atomics=0)
    assert kernel_report._problems(row, {"sm90": 232448}, {}, seq) == []
    assert kernel_report._problems({**row, "bd": 128, "variant": "det+var"}, {"sm90": 232448}, {}, seq) == []
    for change in (dict(spill=501), dict(bd=128), dict(tiling="pack"), dict(kernel="fwd")):
        assert kernel_report._problems({**row, **change}, {"sm90": 232448}, {}, seq) != [], change
