"""CMakeLists.txt builds csrc/ into a library that torch.ops.load_library loads (libtorch path).

The smoke test runs in a fresh process that never imports simplicial_attn (its _C module
registers the same op namespace, and a namespace may be defined only once per process).
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMOKE = r"""
import sys, torch
sys.path.insert(0, sys.argv[2])
from oracle import oracle_fwd, oracle_bwd
torch.ops.load_library(sys.argv[1])
assert "simplicial_attn" not in sys.modules
g = torch.Generator().manual_seed(0)
q = torch.randn(2, 9, 4, 16, generator=g, dtype=torch.float64)
k1, k2, v1, v2 = (torch.randn(2, 9, 2, 16, generator=g, dtype=torch.float64) for _ in range(4))
args = (None, 0, 3, 0, 2, 0, 0.25, "trilinear")  # csrc/ops.cpp's problem arguments: causal w1 = 4, w2 = 3
out, lse, lse_lo = torch.ops.simplicial_attn.fused_fwd(q, k1, k2, v1, v2, *args)
ref, ref_lse = oracle_fwd(q, k1, k2, v1, v2, 4, 3, True, 0.25)
torch.testing.assert_close(out, ref)
torch.testing.assert_close(lse, ref_lse)
dout = torch.randn(2, 9, 4, 16, generator=g, dtype=torch.float64)
grads = torch.ops.simplicial_attn.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, *args)
for a, b in zip(grads, oracle_bwd(dout, q, k1, k2, v1, v2, 4, 3, True, 0.25)):
    torch.testing.assert_close(a, b)
print("cmake library OK")
"""


@pytest.mark.skipif(
    shutil.which("cmake") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "cmake")),
    reason="cmake is not installed (pip install 'cmake>=4')",
)
def test_cmake_library_loads_and_computes(tmp_path):
    build = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "build_cmake.py"), str(tmp_path / "build")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    lib = build.stdout.strip().splitlines()[-1]
    run = subprocess.run(
        [sys.executable, "-c", SMOKE, lib, os.path.join(ROOT, "tests")], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "cmake library OK" in run.stdout
