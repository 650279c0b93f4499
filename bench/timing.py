"""Timing: CUDA events on a GPU, perf_counter on a CPU; warm-up excluded, medians reported."""

import statistics
import time

import torch


def time_fn(fn, *, device="cpu", warmup=1, repeats=5, setup=None):
    """Run `fn()` `warmup` times untimed, then `repeats` timed runs; returns the list of seconds.

    `setup(r)`, when given, runs untimed before run r (e.g. to rotate inputs so caches do not
    flatter a kernel); its time is never counted.
    """
    cuda = torch.device(device).type == "cuda"
    for r in range(warmup):
        if setup:
            setup(r)
        fn()
    times = []
    for r in range(repeats):
        if setup:
            setup(warmup + r)
        if cuda:
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def summarize(times):
    """Median, min, max and relative spread ((max - min) / median) of a list of seconds."""
    med = statistics.median(times)
    return {
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "spread": (max(times) - min(times)) / med if med > 0 else 0.0,
        "repeats": len(times),
    }
