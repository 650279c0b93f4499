"""The Triton kernels under another triton release (issue 13: the lent GPU machines run triton
3.6.0, our pin is 3.8.0): compile every kernel and shipped config ahead of time for sm_90,
sm_80, sm_100 and sm_120 (bench/verify/kernel_report.py --check: no spills, shared memory within the arch's limit,
tensor cores in every 16-bit main loop, no atomics; every variant: trilinear, determinant,
packed, decode), then run the interpreter on a small grid against the float64 oracle: the
path-coverage, numerics and all-configs tests, the bf16 grid of tests/test_triton.py and the
triton cases of the varlen, determinant, decoding and large-logit API tests.

    python3 -m venv /work/venvs/triton36
    /work/venvs/triton36/bin/pip install torch==2.13.0 triton==3.6.0 "numpy<2.4" pytest
    /work/venvs/triton36/bin/python scripts/triton_compat.py            # ~15 min on 2 cores

Run it with the second environment's Python; it needs only torch, triton, numpy and pytest
there. This package is not installed in that environment: the script builds a view of it in a
temporary directory (links to python/simplicial_attn's modules and subpackages and to
triton_kernels/, without the compiled _C, which belongs to the other torch; the Triton backend
does not need it) and runs everything with that view on PYTHONPATH.

numpy < 2.4 for triton 3.6: its interpreter turns a loop bound, a one-element array, into a
Python int with int(array), which numpy 2.4 refuses (triton 3.7+ squeezes the array first).
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
INTERPRETED = [
    "tests/test_triton_paths.py",
    "tests/test_triton_numerics.py",
    "tests/test_triton_configs.py",
    "tests/test_triton.py::test_grid_bf16_head_packed",
    "tests/test_varlen.py",
    "tests/test_determinant.py",
    "tests/test_kvcache.py",
    "tests/test_large_logits.py",
    "-k",
    "triton",
]


def package_view(dest):
    """simplicial_attn importable from `dest`: the Python sources (modules and subpackages) and
    triton_kernels/ linked, the compiled extension and caches left out."""
    package = dest / "simplicial_attn"
    package.mkdir()
    for source in (ROOT / "python" / "simplicial_attn").iterdir():
        if source.name == "triton_kernels":  # a checkout's own link to triton_kernels/ (linked below)
            continue
        if source.suffix == ".py" or (source.is_dir() and (source / "__init__.py").exists()):
            (package / source.name).symlink_to(source)
    (package / "triton_kernels").symlink_to(ROOT / "triton_kernels")


def run(cmd, env):
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm90,sm80,sm100,sm120", help="archs to compile for (kernel_report --arch)")
    parser.add_argument("--kernels", default="", help="kernels to compile (kernel_report --kernels; default: all)")
    parser.add_argument("--skip-compile", action="store_true", help="only run the interpreter")
    parser.add_argument("--skip-interpreter", action="store_true", help="only compile")
    args = parser.parse_args(argv)

    import numpy
    import torch
    import triton

    versions = dict(python=sys.version.split()[0], torch=torch.__version__, triton=triton.__version__)
    print(", ".join(f"{k} {v}" for k, v in {**versions, "numpy": numpy.__version__}.items()))
    failed = []
    with tempfile.TemporaryDirectory(prefix="sa-triton-compat-") as tmp:
        view = pathlib.Path(tmp)
        package_view(view)
        env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTEST_ADDOPTS")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(view), os.environ.get("PYTHONPATH")]))
        if not args.skip_compile:
            script = ROOT / "bench" / "verify" / "kernel_report.py"
            report = [sys.executable, str(script), "--check", "--arch", args.arch]
            report += ["--kernels", args.kernels] if args.kernels else []
            if run(report, env) != 0:
                failed.append("ahead-of-time compilation (kernel_report --check)")
        if not args.skip_interpreter:
            tests = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
            if run(tests + INTERPRETED, {**env, "TRITON_INTERPRET": "1"}) != 0:
                failed.append("interpreter tests")
    print(f"triton {triton.__version__}: " + ("FAILED: " + "; ".join(failed) if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
