"""The CUDA kernels of the unfused path (csrc/cuda/scores_softmax_kernels.cuh), run on the CPU.

tests/scores_cuda_emu.cpp compiles the kernels' own code with g++ and AddressSanitizer, one OS
thread per CUDA thread (see its header for what is and is not modelled), so without a GPU these
tests still check the kernels' index arithmetic, masking, reductions and every launch variant
the launchers pick (warp- and block-per-row softmax of each size class, the looped kernels,
several k1/k2 slot tiles and head-dim chunks of the scores kernels) against the float64
reference. Float32 only; tests/test_scores.py runs the real kernels on a GPU (marked gpu).
Runtime: ~5 s to build the emulator once per source state (cached), then ~1 s per case.
"""

import functools
import hashlib
import pathlib
import shutil
import subprocess
import tempfile

import cuda_emulator as emu
import numpy as np
import pytest
import torch

from simplicial_attn.backends import scores_reference as ref
from simplicial_attn.problem import window_axis

from cases import BOUNDS, Case, make_inputs, rel_err

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = (
    ROOT / "tests" / "scores_cuda_emu.cpp",
    ROOT / "csrc" / "cuda" / "scores_softmax_kernels.cuh",
    ROOT / "csrc" / "include" / "scores_window.h",
)
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")


@functools.cache
def emulator():
    """Path of the compiled emulator, built once per source state."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:16]
    out_dir = pathlib.Path(tempfile.gettempdir()) / "simplicial_attn_scores_emulator"
    out_dir.mkdir(exist_ok=True)
    cmd = ["g++", "-std=c++20", "-O1", "-g", "-pthread", "-fsanitize=address,undefined"]
    cmd += ["-fno-sanitize-recover=all", "-Wno-unknown-pragmas"]
    cmd += [f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc' / 'cuda'}", str(SOURCES[0]), "-o"]
    return emu.compile_once(out_dir / f"emu-{digest}", cmd)


def run(op, args, inputs, outputs, workdir):
    """Run one op in the emulator: inputs {name: tensor}, outputs {name: shape} -> {name: tensor}."""
    (workdir / "args.txt").write_text(" ".join(str(a) for a in args))
    for name, t in inputs.items():
        t.detach().float().contiguous().numpy().tofile(workdir / f"{name}.bin")
    proc = subprocess.run([str(emulator()), op, str(workdir)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"emulator failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return {
        name: torch.from_numpy(np.fromfile(workdir / f"{name}.bin", dtype=np.float32).reshape(shape))
        for name, shape in outputs.items()
    }


# Row lengths m = W1 * W2 that reach every variant the launchers pick (scores_softmax_kernels.cuh,
# launch_resident): warp per row with 1, 4, 16 items per lane, 512-thread block per row with 2, 8,
# 32 items per thread, and the looped kernels beyond 16384. Warp rows: 5 windows, so the last
# block has warps with no row.
SOFTMAX_SHAPES = [(5, 1, 1), (5, 4, 5), (5, 5, 7), (5, 12, 25), (2, 25, 40), (2, 50, 60), (2, 90, 100), (2, 100, 170)]


@pytest.mark.parametrize("rows,w1,w2", SOFTMAX_SHAPES, ids=lambda v: str(v))
def test_emulated_softmax(rows, w1, w2, tmp_path):
    g = torch.Generator().manual_seed(rows * w1 * w2)
    x = torch.randn(rows, w1, w2, generator=g) * 4
    x[0, : (w1 + 1) // 2] = float("-inf")  # masked slots
    if rows > 2:
        x[2] = float("-inf")  # a window with no finite slot: zeros
    m = w1 * w2
    y = run("softmax_fwd", (rows, m), {"x": x}, {"y": (rows, w1, w2)}, tmp_path)["y"]
    expected = ref.softmax_fwd(x.double())
    assert rel_err(y, expected) <= BOUNDS[torch.float32]
    assert (y[x == float("-inf")] == 0).all()

    dp = torch.randn(rows, w1, w2, generator=g)
    ds = run("softmax_bwd", (rows, m), {"dp": dp, "p": y}, {"ds": (rows, w1, w2)}, tmp_path)["ds"]
    assert rel_err(ds, ref.softmax_bwd(dp.double(), y.double())) <= BOUNDS[torch.float32]


SCORE_CASES = [
    (Case(2, 9, 4, 2, 40, 40, 5), "trilinear"),  # two k1-slot tiles (W1 = 40 > N too), two head-dim chunks, GQA
    (Case(1, 11, 2, 1, 16, None, 37, causal=False), "trilinear"),  # absolute k1 axis, two k2-slot tiles
    (Case(1, 7, 3, 1, 64, 3, None), "trilinear"),  # causal unbounded k2 axis, odd group size
    # determinant logits (CONTRACT §8): chunks across the 32-column staging (D = 48), GQA, both modes
    (Case(1, 9, 2, 1, 48, 9, 5), "determinant"),
    (Case(1, 7, 3, 1, 12, 3, None, causal=False), "determinant"),
]


@pytest.mark.parametrize(("case", "logits"), SCORE_CASES, ids=[f"{c.id}-{lg}" for c, lg in SCORE_CASES])
def test_emulated_scores(case, logits, tmp_path):
    q, k1, k2, _, _ = make_inputs(case, torch.float32)
    B, N, Hq, D = q.shape
    ax1, ax2 = window_axis(case.w1, N, case.causal), window_axis(case.w2, N, case.causal)
    scale = D**-0.5
    det = int(logits == "determinant")
    args = (B, N, Hq, case.Hkv, D, ax1.size, ax1.slide, ax1.lo, ax2.size, ax2.slide, ax2.lo, repr(scale), det)
    shape = (B, Hq, N, ax1.size, ax2.size)
    tensors = {"q": q, "k1": k1, "k2": k2}
    s = run("scores_fwd", args, tensors, {"s": shape}, tmp_path)["s"]
    expected = ref.scores_fwd(q.double(), k1.double(), k2.double(), case.w1, case.w2, case.causal, scale, logits)
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(s), finite)
    assert rel_err(s[finite], expected[finite]) <= BOUNDS[torch.float32]

    ds = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    ds = torch.where(finite, ds, float("nan"))  # masked slots must never be read
    outs = {"dq": q.shape, "dk1": k1.shape, "dk2": k2.shape}
    grads = run("scores_bwd", args, {"ds": ds, **tensors}, outs, tmp_path)
    ref_grads = ref.scores_bwd(
        ds.double(), q.double(), k1.double(), k2.double(), case.w1, case.w2, case.causal, scale, logits
    )
    for (name, g), r in zip(grads.items(), ref_grads, strict=True):
        assert rel_err(g, r) <= BOUNDS[torch.float32], f"{name}: {rel_err(g, r):.3g}"
