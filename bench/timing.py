"""The one timer of bench/: CUDA events on a GPU; on a CPU the wall clock or, on a machine other
jobs share, the process's CPU time over the thread count. Warm-up excluded; summaries give medians.

- `clock(kind)`: a function returning seconds, "wall" (time.perf_counter) or "cpu" (process CPU
  time / intra-op threads: the wall time a call would take if every thread ran all the time; on
  a shared machine, where other sessions' jobs time-slice our threads and wall-clock figures are
  off by factors of 2-4, it is the robust figure; threads spinning at a barrier count as busy, so
  it errs low).
- `time_fn(fn, ...)`: seconds of each timed call of `fn`; `best_seconds` the least of them.
- `summarize(times)`: median, min, max, spread.
"""

import statistics
import time

import torch

CLOCKS = ("wall", "cpu")


def clock(kind="wall"):
    """A function returning the current time in seconds by clock `kind` (see CLOCKS)."""
    if kind == "wall":
        return time.perf_counter
    if kind == "cpu":
        threads = torch.get_num_threads()
        return lambda: time.process_time() / threads
    raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {kind!r}")


def describe(kind="wall"):
    """How `time_fn(..., clock_kind=kind)` times a call, for a result's "timing" field (the CPU-time
    clock is the benchmarks' --cpu-time)."""
    if kind == "cpu":
        return "process CPU time / threads on CPU (--cpu-time: robust to other jobs on a shared machine)"
    return "CUDA events on GPU, perf_counter on CPU"


def time_fn(fn, *, device="cpu", warmup=1, repeats=5, setup=None, clock_kind="wall"):
    """Run `fn()` `warmup` times untimed, then `repeats` timed runs; returns the list of seconds.

    `setup(r)`, when given, runs untimed before run r (e.g. to rotate inputs so caches do not
    flatter a kernel); its time is never counted. A CUDA `device` is timed by CUDA events, a CPU
    one by `clock(clock_kind)`; the CPU-time clock times CPU calls only.
    """
    cuda = torch.device(device).type == "cuda"
    if cuda and clock_kind != "wall":
        raise ValueError(f"the {clock_kind!r} clock times CPU calls only, got device {device!r}")
    now = clock(clock_kind)
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
            t0 = now()
            fn()
            times.append(now() - t0)
    return times


def best_seconds(fn, *, device="cpu", warmup=1, repeats=5, clock_kind="wall"):
    """The least of `time_fn`'s seconds: a rate's best case on a machine other jobs may disturb."""
    return min(time_fn(fn, device=device, warmup=warmup, repeats=repeats, clock_kind=clock_kind))


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
