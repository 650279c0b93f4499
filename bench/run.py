"""Kernel microbenchmarks: one entry point for every provider, shape sweep and output format.

    python bench/run.py --quick                       # default sweep (< 5 min CPU, < 2 min GPU)
    python bench/run.py --backend cpu reference --mode fwd bwd --N 1024 2048 --dtype float32
    python bench/run.py --op softmax --quick          # windowed_softmax GB/s (bench/softmax.py)
    python bench/run.py --op varlen                   # packed vs padded vs per-sequence (bench/varlen.py)
    python bench/run.py --op decode                   # a decode step vs recomputing (bench/decode.py)
    python bench/run.py --op determinant              # determinant vs trilinear logits (bench/determinant.py)

Every figure: median and spread over repeats (CUDA events on GPU, perf_counter on CPU, warm-up
excluded, inputs rotated between repeats), TFLOP/s under the CONTRACT §2 convention, the
fraction of the device's matmul rate in the same dtype measured in the same run ("not native"
where the CPU has no native matmul in that dtype), on CPU also the fraction of the machine's
vector-FMA peak measured in the same run (bench/cpu_peak.py; float32 for bf16/fp16 calls, which
run the float32 kernels), and peak extra memory. Writes DIR/<device>-<date>.json (versions +
every raw figure), a Markdown summary and a PNG plot (TFLOP/s vs N per provider) next to it.
"""

import argparse
import dataclasses
import datetime
import functools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import (  # noqa: E402
    cpu_peak,
    decode,
    determinant,
    environment,
    flops,
    memory,
    providers,
    report,
    timing,
    varlen,
)
from simplicial_attn import backends  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# --op NAME: a feature's benchmark module, each with measure(providers, device, dtype, repeats)
# and markdown(result) (bench/varlen.py, bench/decode.py, bench/determinant.py).
FEATURES = {"varlen": varlen, "decode": decode, "determinant": determinant}
ROTATIONS = 3  # distinct input sets cycled through the repeats


@dataclasses.dataclass
class Spec:
    op: str
    mode: str
    device: str
    dtype: torch.dtype
    B: int
    N: int
    Hq: int
    Hkv: int
    D: int
    w1: int | None
    w2: int | None
    causal: bool = True
    sdpa_N: int = 0

    def shape_label(self):
        return f"B{self.B}-N{self.N}-Hq{self.Hq}-Hkv{self.Hkv}-D{self.D}-w1_{self.w1}-w2_{self.w2}"


# --quick runs the slow yardsticks (reference, its torch.compile, the dense einsum) only up to
# this N and in the first dtype, so the sweep stays within minutes.
QUICK_SLOW_MAX_N = {"cpu": 512, "cuda": 2048}


def quick_specs(device):
    """The default sweep: the issue targets' shapes, scaled to what finishes in minutes."""
    if device == "cuda":
        shapes = [dict(B=2, N=n, Hq=64, Hkv=1, D=128, w1=512, w2=32) for n in (2048, 8192, 16384)]
        shapes += [dict(B=1, N=4096, Hq=16, Hkv=16, D=64, w1=512, w2=32)]
        dtypes = [torch.bfloat16]
    else:
        shapes = [dict(B=1, N=n, Hq=4, Hkv=4, D=64, w1=256, w2=32) for n in (512, 1024, 2048)]
        dtypes = [torch.float32, torch.bfloat16]
    return shapes, dtypes


def quick_limit(spec, provider, first_dtype):
    """Why --quick leaves this provider out of this spec (None: it runs)."""
    if provider.slow and (spec.N > QUICK_SLOW_MAX_N[spec.device] or spec.dtype != first_dtype):
        return f"slow yardstick: --quick runs it at N <= {QUICK_SLOW_MAX_N[spec.device]} in {str(first_dtype)[6:]}"
    return None


def make_inputs(spec, seed):
    g = torch.Generator().manual_seed(seed)
    qs = (spec.B, spec.N, spec.Hq, spec.D)
    ks = (spec.B, spec.N, spec.Hkv, spec.D)
    tensors = [torch.randn(s, generator=g) for s in (qs, ks, ks, ks, ks, qs)]
    out = [t.to(spec.device, spec.dtype) for t in tensors]
    for t in out[:5]:
        t.requires_grad_(spec.mode != "fwd")
    return out


def spec_flops(spec, provider):
    if provider.name == "sdpa-causal":
        fwd = 4 * spec.B * spec.Hq * spec.D * spec.sdpa_N * (spec.sdpa_N + 1) // 2
        return {"fwd": fwd, "bwd": fwd * 5 // 2, "fwdbwd": fwd * 7 // 2}[spec.mode]
    return flops.attention_flops(spec.B, spec.N, spec.Hq, spec.D, spec.w1, spec.w2, spec.causal, spec.mode)


def measure(spec, provider, repeats, warmup, time_fn=timing.time_fn):
    """One provider on one spec: timing summary, TFLOP/s and peak memory (or a skip reason)."""
    reason = provider.unavailable(spec)
    if reason:
        return {"skipped": reason}
    input_sets = [make_inputs(spec, seed) for seed in range(ROTATIONS)]
    steps = [provider.run(spec, inputs) for inputs in input_sets]
    current = {"step": steps[0]}

    def rotate(r):
        current["step"] = steps[r % ROTATIONS]

    if provider.compiles:
        steps[0]()  # compile first, so the memory figure below is the kernel's, not the compiler's
    # The first warm-up run doubles as the peak-memory measurement (untimed either way).
    peak = memory.peak_memory_delta(lambda: steps[0](), spec.device)
    times = time_fn(
        lambda: current["step"](), device=spec.device, warmup=max(warmup - 1, 0), repeats=repeats, setup=rotate
    )
    summary = timing.summarize(times)
    count = spec_flops(spec, provider)
    summary.update(flops=count, tflops=count / summary["median_s"] / 1e12, peak_extra_bytes=peak)
    return summary


def progress(done, total, label):
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:70]:<70}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", choices=["attention", "scores", "softmax", *FEATURES], default="attention")
    p.add_argument("--backend", nargs="+", help="providers to run (default: every available one)")
    p.add_argument("--mode", nargs="+", choices=["fwd", "bwd", "fwdbwd"], default=["fwd", "bwd", "fwdbwd"])
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES))
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    for name, default in (
        ("N", None),
        ("D", [64]),
        ("w1", [256]),
        ("w2", [32]),
        ("Hq", [4]),
        ("Hkv", None),
        ("B", [1]),
    ):
        p.add_argument(f"--{name}", nargs="+", type=_window if name in ("w1", "w2") else int, default=default)
    p.add_argument("--centred", action="store_true", help="centred (non-causal) windows")
    p.add_argument("--quick", action="store_true", help="the default sweep (under 5 min on a 2-core CPU)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="CPU runs: time by process CPU time / threads (bench/timing.py's cpu clock), for a shared machine",
    )
    return p.parse_args(argv)


def _window(text):
    return None if text.lower() == "none" else int(text)


def matmul_peak(device, dtype):
    """torch.mm's rate in `dtype` on `device`, or {"tflops": None, "not_native": why} where the CPU
    has no native matmul in that dtype (its emulated rate would be no yardstick)."""
    reason = cpu_peak.mm_not_native(dtype) if device == "cpu" else None
    return {"tflops": None, "not_native": reason} if reason else environment.matmul_peak(device, dtype)


def build_specs(args):
    if args.quick or args.N is None:
        shapes, dtypes = quick_specs(args.device)
    else:
        shapes = [
            dict(B=b, N=n, Hq=hq, Hkv=hkv, D=d, w1=w1, w2=w2)
            for b in args.B
            for n in args.N
            for hq in args.Hq
            for hkv in (args.Hkv or [hq])
            for d in args.D
            for w1 in args.w1
            for w2 in args.w2
        ]
        dtypes = [torch.float32]
    if args.dtype:
        dtypes = [DTYPES[d] for d in args.dtype]
    specs = []
    for shape in shapes:
        for dtype in dtypes:
            for mode in args.mode:
                spec = Spec("attention", mode, args.device, dtype, causal=not args.centred, **shape)
                fwd = flops.attention_flops(spec.B, spec.N, spec.Hq, spec.D, spec.w1, spec.w2, spec.causal)
                spec.sdpa_N = providers.SdpaProvider().equivalent_length(spec, fwd)
                specs.append(spec)
    return specs


def scores_main(args):
    """trilinear_scores forward (and backward) per backend: GB/s of the [B, Hq, N, W1, W2] logits written."""
    import simplicial_attn as sa
    from simplicial_attn.analysis import scores

    shapes, dtypes = quick_specs(args.device)
    dtypes = [DTYPES[d] for d in args.dtype] if args.dtype else dtypes[:1]
    names = args.backend or ["cuda", "triton", "cpu", "reference"]
    print(f"trilinear_scores on {environment.describe(args.device)['device_name']}: GB/s of float32 logits written")
    for shape in shapes[:2]:
        shape = dict(shape, w1=min(shape["w1"], 64))  # the logits tensor is N * w1 * w2 floats per head
        spec = Spec("scores", "fwd", args.device, dtypes[0], **shape)
        q, k1, k2, _, _, _ = make_inputs(spec, 0)
        out_bytes = 4 * spec.B * spec.Hq * spec.N * spec.w1 * spec.w2
        for name in names:
            reasons = scores.not_supported_reasons(name, args.device, spec.dtype)
            if name == "triton" and args.device == "cpu":
                reasons = ["the Triton interpreter is a correctness tool, not a CPU backend"]
            if reasons:
                print(f"  {name:>10} {spec.shape_label()}: skipped: {'; '.join(reasons)}")
                continue
            fn = lambda: sa.trilinear_scores(q, k1, k2, spec.w1, spec.w2, backend=name)  # noqa: B023
            stats = timing.summarize(timing.time_fn(fn, device=args.device, repeats=args.repeats or 5))
            gbps = out_bytes / stats["median_s"] / 1e9
            print(f"  {name:>10} {spec.shape_label()}: {stats['median_s'] * 1e3:8.2f} ms  {gbps:7.1f} GB/s")
    return 0


def _time_fn(args):
    if args.cpu_time and args.device != "cpu":
        sys.exit("--cpu-time times CPU runs only")
    return functools.partial(timing.time_fn, clock_kind="cpu" if args.cpu_time else "wall")


def _clock_text(args):
    return timing.describe("cpu" if args.cpu_time else "wall")


def feature_providers(device, dtype, wanted=None):
    """The package backends that can run on `device` here (not the Triton interpreter on a CPU)."""
    names = []
    for name in backends.BACKENDS:
        if name == "triton" and device == "cpu":
            continue
        if not backends.get(name).not_supported_reasons(device, dtype) and (wanted is None or name in wanted):
            names.append(name)
    return names


def feature_main(args):
    """--op varlen | decode | determinant: one JSON + Markdown result under --out."""
    module = FEATURES[args.op]
    dtype = DTYPES[args.dtype[0]] if args.dtype else torch.float32
    names = feature_providers(args.device, dtype, args.backend)
    repeats = args.repeats or (30 if args.op == "decode" else 3)
    env = environment.describe(args.device)
    time_fn = _time_fn(args)
    result = {
        "op": args.op,
        "date": datetime.date.today().isoformat(),
        "environment": env,
        "flop_convention": flops.CONVENTION,
        "timing": "median over repeats; " + _clock_text(args) + "; warm-up excluded",
        **module.measure(names, args.device, dtype, repeats, time_fn=time_fn),
    }
    if args.device == "cpu":
        result["fma_peak"] = cpu_peak.fma_peaks([dtype], cpu_time=args.cpu_time)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"{environment.slug(env['device_name'])}-{args.op}-{result['date']}")
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1)
    text = report.feature_markdown(result)
    with open(base + ".md", "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {base}.json, {base}.md")
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.op in FEATURES:
        return feature_main(args)
    if args.op == "softmax":
        from bench import softmax  # windowed_softmax GB/s next to torch.softmax and a copy

        return softmax.main(["--device", args.device] + (["--dtype", args.dtype[0]] if args.dtype else []))
    if args.op == "scores":
        return scores_main(args)
    chosen = providers.all_providers()
    if args.backend:
        unknown = set(args.backend) - {p.name for p in chosen}
        if unknown:
            sys.exit(f"unknown --backend {sorted(unknown)}; choose from {[p.name for p in chosen]}")
        chosen = [p for p in chosen if p.name in args.backend]
    specs = build_specs(args)
    repeats = args.repeats or (10 if args.device == "cuda" else 3)
    env = environment.describe(args.device)
    dtypes = sorted({s.dtype for s in specs}, key=str)
    peaks = {str(dt)[6:]: matmul_peak(args.device, dt) for dt in dtypes}
    fma = cpu_peak.fma_peaks(dtypes, cpu_time=args.cpu_time) if args.device == "cpu" else None
    time_fn = _time_fn(args)
    rows = []
    total = len(specs) * len(chosen)
    for n, (spec, provider) in enumerate(((s, p) for s in specs for p in chosen), start=1):
        progress(n - 1, total, f"{provider.name} {spec.mode} {str(spec.dtype)[6:]} {spec.shape_label()}")
        limit = quick_limit(spec, provider, specs[0].dtype) if args.quick else None
        result = {"skipped": limit} if limit else measure(spec, provider, repeats, args.warmup, time_fn)
        row = {"provider": provider.name, "mode": spec.mode, "dtype": str(spec.dtype)[6:], "causal": spec.causal}
        row.update({k: getattr(spec, k) for k in ("B", "N", "Hq", "Hkv", "D", "w1", "w2")})
        if provider.name == "sdpa-causal":
            row["sdpa_N"] = spec.sdpa_N
        row.update(result)
        if "tflops" in result:
            mm = peaks[row["dtype"]]["tflops"]
            row["fraction_of_matmul_peak"] = None if mm is None else result["tflops"] / mm
        rows.append(row)
    progress(total, total, "done")
    if fma:  # measured again at the end: the ceiling is the better of the two (the machine is shared)
        again = cpu_peak.fma_peaks(dtypes, cpu_time=args.cpu_time)
        fma = {name: max(r, fma[name], key=lambda x: x["gflops"]) for name, r in again.items()}
        for row in rows:
            if "tflops" in row:
                row["fraction_of_fma_peak"] = cpu_peak.fraction_of_fma_peak(row["tflops"] * 1e3, row["dtype"], fma)
    stamp = datetime.date.today().isoformat()
    result = {
        "op": "attention",
        "date": stamp,
        "environment": env,
        "matmul_peak": peaks,
        **({"fma_peak": fma} if fma else {}),
        "flop_convention": flops.CONVENTION,
        "timing": "median over repeats; " + _clock_text(args) + "; warm-up excluded; inputs rotated",
        "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"{environment.slug(env['device_name'])}-{stamp}")
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1)
    table = report.console_table(result)
    print(table)
    with open(base + ".md", "w") as f:
        f.write(report.markdown(result))
    plot = report.plot(result, base + ".png")
    print(f"wrote {base}.json, {base}.md" + (f", {plot}" if plot else " (no plot: matplotlib missing)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
