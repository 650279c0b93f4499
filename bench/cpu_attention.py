"""CPU benchmark: the C++ kernels ("cpu") and the reference backend against this CPU's ceilings.

    python bench/cpu_attention.py                      # B=1 H=4 D=64 N=2048 w1=256 w2=32, causal
    python bench/cpu_attention.py --N 4096 --w1 512 --repeats 3 --dtypes fp32
    python bench/cpu_attention.py --memory             # peak extra memory of fwd+bwd, fresh process
    python bench/cpu_attention.py --cpu-time           # CPU time, not wall clock: robust to other jobs

GFLOP/s follow CONTRACT §2 (4*D forward, 14*D backward FLOPs per in-window (i, j, k) triple
per query head, exact count). The ceiling is the machine's vector-FMA peak (bench/cpu_peak.py),
float32 for float32/bf16/fp16 calls (they run the float32 kernels), measured in the same rounds
as the kernels, interleaved with them, so a busy spell on the shared machine hits all alike;
torch.mm in the call's dtype is a second yardstick where this CPU runs it natively ("not
native" otherwise). Every figure is the best of --repeats rounds. Functions named measure_*
are importable.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import timing  # noqa: E402
from bench.cpu_peak import CEILING_DTYPE, dtype_name, measure_fma_peak, mm_not_native  # noqa: E402
from bench.flops import CONVENTION, attention_flops  # noqa: E402
from bench.memory import peak_rss_delta, status_kib  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _kernel_pair(fwd, bwd):
    """fwd(q, k1, k2, v1, v2, w1, w2, causal, scale) -> (out, saved) and bwd(dout, q, k1, k2, v1, v2,
    out, saved, w1, w2, causal, scale) -> grads, around a backend's Problem-taking functions."""
    from simplicial_attn.problem import Problem, window_band

    def problem(w1, w2, causal, scale):
        return Problem(window_band(w1, causal), window_band(w2, causal), scale)

    def forward(q, k1, k2, v1, v2, *args):
        out, lse, lse_lo = fwd(q, k1, k2, v1, v2, problem(*args))
        return out, (lse, lse_lo)

    def backward(dout, q, k1, k2, v1, v2, out, saved, *args):
        return bwd(dout, q, k1, k2, v1, v2, out, *saved, problem(*args))

    return forward, backward


def _cpu_kernels():
    from simplicial_attn import backends

    cpu = backends.get("cpu")
    return _kernel_pair(cpu.fwd, cpu.bwd)


def _reference_kernels():
    from simplicial_attn.backends import reference

    return _kernel_pair(reference.fwd, reference.bwd)


BACKENDS = {"cpu": _cpu_kernels, "reference": _reference_kernels}


def make_problem(B, N, H, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k1, k2, v1, v2, dout = (torch.randn(B, N, H, D, generator=g).to(dtype) for _ in range(6))
    return q, k1, k2, v1, v2, dout


def measure_backend(
    backend,
    B=1,
    N=2048,
    H=4,
    D=64,
    w1=256,
    w2=32,
    causal=True,
    dtype=torch.float32,
    repeats=5,
    warmup=1,
    mm_n=2048,
    cpu_time=False,
):
    """Best-of-`repeats` seconds and GFLOP/s of fwd, bwd and fwd+bwd (the sum of the two) of
    `backend`, each as a fraction of the FMA peak of its ceiling dtype and of torch.mm in `dtype`
    (None where torch.mm is not native), all measured in the same rounds: each round runs the
    FMA loop, torch.mm, fwd and bwd in turn, timed by bench.timing's wall clock (or with `cpu_time`
    its CPU-time clock)."""
    clock = timing.clock("cpu" if cpu_time else "wall")
    fwd, bwd = BACKENDS[backend]()
    q, k1, k2, v1, v2, dout = make_problem(B, N, H, D, dtype)
    args = (w1, w2, causal, D**-0.5)
    out, lse = fwd(q, k1, k2, v1, v2, *args)
    ceiling = CEILING_DTYPE[dtype_name(dtype)]
    mm_reason = mm_not_native(dtype)
    a, b = torch.randn(mm_n, mm_n, dtype=dtype), torch.randn(mm_n, mm_n, dtype=dtype)
    fns = {
        "fwd": lambda: fwd(q, k1, k2, v1, v2, *args),
        "bwd": lambda: bwd(dout, q, k1, k2, v1, v2, out, lse, *args),
    }
    if mm_reason is None:
        fns = {"mm": lambda: torch.mm(a, b), **fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = dict.fromkeys(fns, float("inf"))
    # The FMA loop runs a fixed iteration count (about 50 ms), timed by the same clock.
    probe = measure_fma_peak(ceiling, seconds=0.05, repeats=1)
    iters = round(probe["flops"] / (2 * probe["lanes"] * probe["chains"] * probe["threads"]))
    peak = 0.0
    for _ in range(repeats):
        t0 = clock()
        loop = measure_fma_peak(ceiling, repeats=1, iters=iters)
        peak = max(peak, loop["flops"] / (clock() - t0) / 1e9)
        for name, fn in fns.items():
            t0 = clock()
            fn()
            best[name] = min(best[name], clock() - t0)
    best["fwdbwd"] = best["fwd"] + best["bwd"]
    mm_gflops = None if mm_reason else 2 * mm_n**3 / best["mm"] / 1e9
    result = {
        "backend": backend,
        "dtype": dtype_name(dtype),
        "clock": "cpu time / threads" if cpu_time else "wall",
        "fma_peak": {"dtype": ceiling, "gflops": peak},
        "mm": {"gflops": mm_gflops, "not_native": mm_reason},
    }
    for mode in ("fwd", "bwd", "fwdbwd"):
        gflops = attention_flops(B, N, H, D, w1, w2, causal, mode) / best[mode] / 1e9
        result[mode] = {
            "seconds": best[mode],
            "gflops": gflops,
            "fraction_of_fma_peak": gflops / peak,
            "ratio_vs_mm": None if mm_gflops is None else gflops / mm_gflops,
        }
    return result


def _memory_child(cfg):
    """Runs in a fresh process: peak RSS growth of one fwd+bwd after a small warm-up call."""
    fwd, bwd = BACKENDS[cfg["backend"]]()
    dtype = DTYPES[cfg["dtype"]]
    B, N, H, D, w1, w2, causal = (cfg[k] for k in ("B", "N", "H", "D", "w1", "w2", "causal"))
    small = make_problem(1, 64, H, D, dtype)  # loads code and starts the thread pool off the books
    o, s = fwd(*small[:5], min(w1, 64), min(w2, 64), causal, D**-0.5)
    bwd(small[5], *small[:5], o, s, min(w1, 64), min(w2, 64), causal, D**-0.5)
    q, k1, k2, v1, v2, dout = make_problem(B, N, H, D, dtype)

    def step():
        out, lse = fwd(q, k1, k2, v1, v2, w1, w2, causal, D**-0.5)
        return bwd(dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, D**-0.5)

    extra = peak_rss_delta(step)
    inputs = sum(t.numel() * t.element_size() for t in (q, k1, k2, v1, v2, dout))
    tensor = B * N * H * D * 4  # one input-sized [B, N, H, D] float32 tensor
    print(
        json.dumps(
            {
                "peak_extra_bytes": extra,
                "input_bytes": inputs,
                "fp32_tensor_bytes": tensor,
                "fp32_tensors": extra / tensor,
                "vm_hwm_kib": status_kib("VmHWM"),
            }
        )
    )


def measure_peak_memory(backend="cpu", B=1, N=4096, H=4, D=64, w1=512, w2=32, causal=True, dtype="fp32"):
    """Peak extra RSS of fwd+bwd in a fresh subprocess, after a small warm-up call: VmHWM during
    the call minus VmRSS before it (inputs excluded; outputs, gradients and workspaces included),
    in bytes and in input-sized [B, N, H, D] float32 tensors."""
    cfg = dict(backend=backend, B=B, N=N, H=H, D=D, w1=w1, w2=w2, causal=causal, dtype=dtype)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", json.dumps(cfg)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _print_result(r):
    line = f"{r['backend']:>9} {r['dtype']:>8}"
    for mode in ("fwd", "bwd", "fwdbwd"):
        m = r[mode]
        mm = "mm not native" if m["ratio_vs_mm"] is None else f"{m['ratio_vs_mm']:5.2f}x mm"
        line += (
            f" | {mode:>6} {m['gflops']:7.1f} GFLOP/s {m['seconds'] * 1e3:8.1f} ms "
            f"{m['fraction_of_fma_peak'] * 100:5.1f}% of peak, {mm}"
        )
    peak = r["fma_peak"]
    mm = r["mm"]["not_native"] or f"torch.mm {r['dtype']} {r['mm']['gflops']:.0f} GFLOP/s"
    print(line + f" | FMA peak {peak['dtype']} {peak['gflops']:.0f} GFLOP/s; {mm}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--N", type=int, help="default 2048 (4096 with --memory)")
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--w1", type=int, help="default 256 (512 with --memory)")
    p.add_argument("--w2", type=int, default=32)
    p.add_argument("--centred", action="store_true", help="non-causal (centred) windows")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16, fp16")
    p.add_argument("--backends", default="cpu,reference", help="comma list of cpu, reference")
    p.add_argument(
        "--reference-repeats", type=int, default=1, help="rounds for the (slow) reference, which gets no warm-up"
    )
    p.add_argument("--memory", action="store_true", help="peak extra RSS of fwd+bwd, in a fresh process")
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by process CPU time / threads instead of the wall clock (for a machine other jobs load)",
    )
    p.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.memory_child:
        _memory_child(json.loads(args.memory_child))
        return
    causal = not args.centred
    args.N = args.N or (4096 if args.memory else 2048)
    args.w1 = args.w1 or (512 if args.memory else 256)
    if args.memory:
        shape = dict(B=args.B, N=args.N, H=args.H, D=args.D, w1=args.w1, w2=args.w2, causal=causal)
        for name in args.backends.split(","):
            for dt in args.dtypes.split(","):
                r = measure_peak_memory(name, dtype=dt, **shape)
                print(
                    f"{name:>9} {dt:>5} fwd+bwd {shape}: peak extra RSS {r['peak_extra_bytes'] / 2**20:.1f} MiB "
                    f"= {r['fp32_tensors']:.1f} input-sized fp32 tensors, outputs and gradients included "
                    f"(inputs+dout {r['input_bytes'] / 2**20:.1f} MiB, not counted)",
                    flush=True,
                )
        return
    isa = os.environ.get("SIMPLICIAL_ATTN_CPU_ISA") or "best available"
    print(
        f"B={args.B} N={args.N} H={args.H} D={args.D} w1={args.w1} w2={args.w2} causal={causal} "
        f"threads={torch.get_num_threads()} cpu={torch.backends.cpu.get_cpu_capability()} kernel isa={isa} "
        f"clock={'cpu time / threads' if args.cpu_time else 'wall'}  [{CONVENTION}]",
        flush=True,
    )
    for name in args.backends.split(","):
        slow = name == "reference"
        reps, warmup = (args.reference_repeats, 0) if slow else (args.repeats, 1)
        for dt in args.dtypes.split(","):
            shape = (args.B, args.N, args.H, args.D, args.w1, args.w2, causal)
            r = measure_backend(name, *shape, DTYPES[dt], repeats=reps, warmup=warmup, cpu_time=args.cpu_time)
            _print_result(r)


if __name__ == "__main__":
    main()
