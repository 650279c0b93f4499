"""windowed_softmax bandwidth next to torch.softmax and a device copy, measured in the same run.

    python bench/softmax.py                       # CPU (C++ kernel), default shapes
    python bench/softmax.py --device cuda --backend triton
    python bench/softmax.py --shapes 1x8x1024x64x32 --json bench/results/softmax_cpu.json

GB/s counts the bytes the op must move: one read and one write of the [B, H, N, W1, W2]
scores (2 * numel * itemsize), the same figure for every row. Providers:

    windowed_softmax   sa.windowed_softmax(scores, backend=...)      (allocates its output)
    torch.softmax      torch.softmax(scores.view(-1, W1 * W2), -1)   (allocates its output)
    clone              scores.clone()                                (allocating device copy)
    copy_              out.copy_(scores) into a preallocated tensor   (the bandwidth ceiling)

Rows repeat the providers round-robin (so machine noise hits all of them alike) and report
the median and the best of the rounds. On a CPU, glibc hands big blocks back to the OS on
free, so every allocating call would page-fault its output in again and all three allocating
providers would measure the kernel's page faults; the script therefore asks glibc to keep
freed memory (mallopt) unless --fresh-pages is given. --threads sets torch's CPU threads
(the C++ kernel uses the same pool size).
"""

import argparse
import ctypes
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.timing import time_fn  # noqa: E402
from simplicial_attn.analysis.scores import windowed_softmax  # noqa: E402

# (B, H, N, W1, W2): the paper's windows (512 x 32), a square 64 x 32, small and tiny windows.
DEFAULT_SHAPES = [(1, 4, 256, 512, 32), (1, 8, 1024, 64, 32), (2, 8, 512, 16, 16), (4, 8, 1024, 4, 8)]


def keep_freed_memory():
    """Tell glibc malloc to serve every block from its heap and never trim it, so a freed
    output is reused by the next call instead of being unmapped and page-faulted in again."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def _providers(x, backend):
    flat = x.view(-1, x.shape[-1] * x.shape[-2])
    out = torch.empty_like(x)
    return {
        "windowed_softmax": lambda: windowed_softmax(x, backend=backend),
        "torch.softmax": lambda: torch.softmax(flat, -1),
        "clone": lambda: x.clone(),
        "copy_": lambda: out.copy_(x),
    }


def bench_shape(shape, device, dtype, backend, rounds):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 3).to(device=device, dtype=dtype)
    x[..., : shape[-2] // 4, :] = float("-inf")  # window slots off the sequence, as real scores have
    providers = _providers(x, backend)
    times = {name: [] for name in providers}
    for fn in providers.values():
        time_fn(fn, device=device, warmup=2, repeats=1)
    for _ in range(rounds):
        for name, fn in providers.items():
            times[name] += time_fn(fn, device=device, warmup=0, repeats=1)
    nbytes = 2 * x.numel() * x.element_size()
    return {
        name: {"median_gbps": nbytes / statistics.median(t) / 1e9, "best_gbps": nbytes / min(t) / 1e9}
        for name, t in times.items()
    } | {"shape": list(shape), "mib": x.numel() * x.element_size() / 2**20}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto", help="windowed_softmax backend (auto, cpu, cuda, triton, ...)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--shapes", nargs="*", help="BxHxNxW1xW2 ... (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--fresh-pages", action="store_true", help="CPU: let outputs be page-faulted in on every call")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = args.device == "cpu" and not args.fresh_pages and keep_freed_memory()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else DEFAULT_SHAPES
    dtype = getattr(torch, args.dtype)
    where = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"# windowed_softmax vs torch.softmax vs copy -- {where}, {args.dtype}, backend={args.backend}")
    print("# GB/s = 2 * bytes(scores) / time (one read, one write); median (best) of the rounds")
    if args.device == "cpu":
        print(f"# freed memory kept by malloc (no page faults per call): {kept}")
    names = ["windowed_softmax", "torch.softmax", "clone", "copy_"]
    print(f"{'shape (B,H,N,W1,W2)':<24}{'MiB':>7}" + "".join(f"{n:>20}" for n in names) + f"{'ws/torch':>10}")
    rows = []
    for shape in shapes:
        r = bench_shape(shape, args.device, dtype, args.backend, args.rounds)
        rows.append(r)
        cells = "".join(f"{r[n]['median_gbps']:>10.1f} ({r[n]['best_gbps']:>5.1f})  " for n in names)
        ratio = r["windowed_softmax"]["median_gbps"] / r["torch.softmax"]["median_gbps"]
        print(f"{'x'.join(map(str, shape)):<24}{r['mib']:>7.1f}{cells}{ratio:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            meta = {"device": where, "dtype": args.dtype, "backend": args.backend, "memory_kept": kept}
            json.dump(meta | {"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
