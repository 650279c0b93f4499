"""The CPU ceilings every CPU benchmark figure is reported against, measured in the same run.

    python bench/cpu_peak.py          # vector-FMA peak (fp32, fp64) and torch.mm per dtype, all threads

The ceiling is the machine's vector-FMA peak: a C++ loop of independent multiply-add chains on
every intra-op thread (csrc/cpu/fma_peak.cpp, `simplicial_attn._C.cpu_fma_peak`), in float32
and float64. bfloat16 and float16 calls of the cpu backend run its float32 kernels, so their
ceiling is the float32 peak. torch.mm stays a second yardstick, but only in dtypes this CPU
multiplies natively: on an AVX2-only machine torch.mm runs bfloat16 at ~1 GFLOP/s (emulated),
and a fraction of that would mean nothing, so such a dtype is reported as "not native".
"""

import argparse
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import timing  # noqa: E402

# The float dtype whose FMA peak bounds a call in each dtype (the kernels' compute type).
CEILING_DTYPE = {"float32": "float32", "bfloat16": "float32", "float16": "float32", "float64": "float64"}
# /proc/cpuinfo flags that give torch.mm a native kernel in a 16-bit dtype on x86.
NATIVE_MM_FLAGS = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}


def dtype_name(dtype):
    return str(dtype).replace("torch.", "") if isinstance(dtype, torch.dtype) else dtype


def measure_fma_peak(dtype="float32", seconds=0.05, repeats=5, iters=0):
    """{"gflops", "flops", "seconds", "threads", "lanes", "chains", "isa", "dtype"}: best of `repeats`
    runs of about `seconds` (or of `iters` iterations per thread when given; flops: of one run)."""
    from simplicial_attn.backends import extension

    if extension._C is None or not hasattr(extension._C, "cpu_fma_peak"):
        raise RuntimeError(f"the FMA peak loop needs the C++ extension ({extension.build_info()})")
    return dict(extension._C.cpu_fma_peak(dtype_name(dtype), seconds, repeats, iters))


def fma_peaks(dtypes, seconds=0.05, repeats=5, cpu_time=False):
    """The FMA peak of every ceiling dtype the given call dtypes need, keyed by ceiling dtype; with
    `cpu_time`, each run timed by the CPU-time clock that times a kernel (bench/timing.py)."""
    wanted = sorted({CEILING_DTYPE[dtype_name(d)] for d in dtypes})
    return {
        d: (_fma_peak_cpu_time(d, seconds, repeats) if cpu_time else measure_fma_peak(d, seconds, repeats))
        for d in wanted
    }


def _fma_peak_cpu_time(dtype, seconds, repeats):
    probe = measure_fma_peak(dtype, seconds, 1)
    iters = round(probe["flops"] / (2 * probe["lanes"] * probe["chains"] * probe["threads"]))
    seconds = timing.best_seconds(
        lambda: measure_fma_peak(dtype, repeats=1, iters=iters), warmup=0, repeats=repeats, clock_kind="cpu"
    )
    return dict(probe, gflops=probe["flops"] / seconds / 1e9, clock="cpu time / threads")


def measure_mm_gflops(n=2048, repeats=5, dtype=torch.float32):
    """Best-of-`repeats` GFLOP/s of torch.mm on two random n x n matrices (one warm-up call)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / timing.best_seconds(lambda: torch.mm(a, b), repeats=repeats) / 1e9


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def mm_not_native(dtype):
    """Why torch.mm in `dtype` has no native kernel on this CPU (None when it has one)."""
    name = dtype_name(dtype)
    flags = NATIVE_MM_FLAGS.get(name)
    if flags is None or _cpu_flags() & set(flags):
        return None
    return f"torch.mm {name} is not native on this CPU (no {' / '.join(flags)}): emulated"


def fraction_of_fma_peak(gflops, dtype, peaks):
    """`gflops` of a call in `dtype` as a fraction of its ceiling's FMA peak (peaks from fma_peaks)."""
    return gflops / peaks[CEILING_DTYPE[dtype_name(dtype)]]["gflops"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    for dtype in ("float32", "float64"):
        r = measure_fma_peak(dtype, args.seconds, args.repeats)
        print(f"FMA peak {dtype}: {r['gflops']:.1f} GFLOP/s ({r['isa']}, {r['threads']} threads, {r['chains']} chains)")
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        reason = mm_not_native(dtype)
        rate = "-" if reason else f"{measure_mm_gflops(dtype=dtype):.1f} GFLOP/s"
        print(f"torch.mm {dtype_name(dtype)}: {reason or rate}")


if __name__ == "__main__":
    main()
