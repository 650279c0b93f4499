"""bench/ helpers: the exact FLOP count, the timer and the peak-memory measure."""

import time

import pytest
import torch

from bench import flops, memory, timing

from oracle import window_mask


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n,w1,w2", [(1, 4, 4), (7, 3, 5), (20, 1, 64), (33, None, 4), (9, None, None), (50, 8, 8)])
def test_window_triples_count_in_window_pairs(n, w1, w2, causal):
    """Brute force over the masks of the oracle: ramp and centred edges count fewer pairs."""
    mask1, mask2 = window_mask(n, w1, causal), window_mask(n, w2, causal)
    brute = int((mask1.sum(1) * mask2.sum(1)).sum())
    assert flops.window_triples(n, w1, w2, causal) == brute


def test_steady_state_and_modes():
    # Far from the ramp every query has w1*w2 pairs: the count approaches N*w1*w2 from below.
    n, w1, w2 = 4096, 512, 32
    triples = flops.window_triples(n, w1, w2)
    assert triples < n * w1 * w2
    ramp = sum(min(i + 1, w1) * min(i + 1, w2) for i in range(n))
    assert triples == ramp
    fwd = flops.attention_flops(2, n, 8, 64, w1, w2, mode="fwd")
    assert fwd == 4 * 64 * 2 * 8 * triples
    assert flops.attention_flops(2, n, 8, 64, w1, w2, mode="bwd") == fwd // 4 * 14
    assert flops.attention_flops(2, n, 8, 64, w1, w2, mode="fwdbwd") == fwd // 4 * 18


def test_time_fn_excludes_warmup_and_setup():
    calls = []

    def setup(r):
        calls.append(("setup", r))
        time.sleep(0.2)

    def fn():
        calls.append("run")
        time.sleep(0.01)

    times = timing.time_fn(fn, warmup=2, repeats=3, setup=setup)
    assert len(times) == 3 and calls.count("run") == 5
    assert [c[1] for c in calls if c != "run"] == [0, 1, 2, 3, 4]  # rotation index per run
    assert all(0.009 < t < 0.15 for t in times), times  # setup's 200 ms is never counted
    s = timing.summarize(times)
    assert s["min_s"] <= s["median_s"] <= s["max_s"] and s["repeats"] == 3


def test_cpu_clock_counts_work_not_sleep():
    """The CPU-time clock (a shared machine's robust figure) does not count a sleep; the wall clock
    does; best_seconds is the least time; an unknown clock or the CPU clock on CUDA is refused."""
    nap = lambda: time.sleep(0.05)
    assert min(timing.time_fn(nap, warmup=0, repeats=2)) >= 0.049
    assert timing.best_seconds(nap, warmup=0, repeats=2, clock_kind="cpu") < 0.02
    with pytest.raises(ValueError, match="clock must be one of"):
        timing.time_fn(nap, clock_kind="gpu")
    with pytest.raises(ValueError, match="CPU calls only"):
        timing.time_fn(nap, device="cuda", clock_kind="cpu")


def test_peak_rss_delta_sees_a_temporary():
    size = 256 << 20

    def allocate():
        t = torch.ones(size // 4)  # touched, so resident
        return float(t[-1])

    peak = memory.peak_rss_delta(allocate)
    assert size * 0.9 < peak < size * 1.5


@pytest.mark.gpu
def test_peak_cuda_delta_sees_a_temporary():
    peak = memory.peak_cuda_delta(lambda: float(torch.ones(1 << 26, device="cuda").sum()))
    assert (1 << 28) <= peak < (1 << 28) * 1.1
