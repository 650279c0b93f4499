"""Decoding with rolling caches (issue 16): one decode step against recomputing the forward.

    python bench/run.py --op decode              # every provider this machine has

One new token per sequence (B = 1, Hq = 8, Hkv = 2, D = 64, w1 = 512, w2 = 32) at contexts 1k ..
64k, with ring caches of w1 and w2 slots (they never grow, so the step should cost the same at
every context). Per provider and context:

    step       two_simplicial_attention_with_kvcache(q, caches, cache_seqlens): per-token latency
               and tokens/s (the new token's keys and values already in the caches)
    kernel     the backend's decode function alone; step - kernel is the Python overhead of a call
    recompute  two_simplicial_attention over the whole context, what each new token would cost
               without a cache (forward only; the slow reference only up to RECOMPUTE_MAX_SLOW)

Target (cpu): a step within 2x of the time its FLOPs (CONTRACT §2: 4*D*Hq*w1*w2 per token) take
at the backend's own fused-forward rate, measured in the same run (the recompute at 4k).
"""

import torch

import simplicial_attn as sa
from bench import flops, timing
from simplicial_attn import backends
from simplicial_attn.problem import Problem, window_band

SHAPE = dict(B=1, Hq=8, Hkv=2, D=64, w1=512, w2=32)
CONTEXTS = [1024, 4096, 16384, 65536]
RATE_CONTEXT = 4096  # the recompute whose rate is the backend's fused-forward rate
RECOMPUTE_MAX_SLOW = 4096
SLOW = {"reference"}


def _case(ctx, device, dtype, seed=0):
    s = SHAPE
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(s["B"], 1, s["Hq"], s["D"], generator=g).to(device, dtype)
    caches = [
        torch.randn(s["B"], c, s["Hkv"], s["D"], generator=g).to(device, dtype)
        for c in (s["w1"], s["w2"], s["w1"], s["w2"])
    ]
    lens = torch.full((s["B"],), ctx - 1, dtype=torch.int32, device=device)  # the new token is position ctx - 1
    return q, caches, lens


def _time(fn, device, repeats, time_fn):
    return timing.summarize(time_fn(fn, device=device, warmup=2, repeats=repeats))


def measure(names, device, dtype, repeats, time_fn=timing.time_fn):
    s = SHAPE
    step_flops = 4 * s["D"] * s["Hq"] * s["w1"] * s["w2"] * s["B"]
    rows = []
    for name in names:
        reps = max(3, repeats // 10) if name in SLOW else repeats
        for ctx in CONTEXTS:
            q, caches, lens = _case(ctx, device, dtype)
            w1, w2 = s["w1"], s["w2"]
            prob = Problem(window_band(w1, True), window_band(w2, True), s["D"] ** -0.5, cache_seqlens=lens)
            backend = backends.get(name)
            with torch.no_grad():
                step = _time(
                    lambda: sa.two_simplicial_attention_with_kvcache(q, *caches, lens, w1=w1, w2=w2, backend=name),  # noqa: B023
                    device,
                    reps,
                    time_fn,
                )
                kernel = _time(lambda: backend.decode(q, *caches, prob), device, reps, time_fn)  # noqa: B023
            row = {
                "provider": name,
                "context": ctx,
                "step_s": step["median_s"],
                "step_min_s": step["min_s"],
                "kernel_s": kernel["median_s"],
                "python_overhead_s": step["median_s"] - kernel["median_s"],
                "tokens_per_s": s["B"] / step["median_s"],
                "step_flops": step_flops,
            }
            if name not in SLOW or ctx <= RECOMPUTE_MAX_SLOW:
                row.update(_recompute(name, ctx, device, dtype, time_fn))
                row["recompute_over_step"] = row["recompute_s"] / row["step_s"]
            rows.append(row)
        rate = next(
            (r["recompute_gflops"] for r in rows if r["provider"] == name and r["context"] == RATE_CONTEXT), None
        )
        for r in rows:
            if r["provider"] == name and rate:
                r["fwd_rate_gflops"] = rate
                r["step_over_flop_time"] = r["kernel_s"] / (step_flops / rate / 1e9)
    return {"shape": SHAPE, "dtype": str(dtype).removeprefix("torch."), "rows": rows, "rate_context": RATE_CONTEXT}


def _recompute(name, ctx, device, dtype, time_fn):
    s = SHAPE
    g = torch.Generator().manual_seed(1)
    q = torch.randn(s["B"], ctx, s["Hq"], s["D"], generator=g).to(device, dtype)
    kv = [torch.randn(s["B"], ctx, s["Hkv"], s["D"], generator=g).to(device, dtype) for _ in range(4)]
    reps = 1 if ctx >= 16384 or name in SLOW else 3

    def fwd():
        with torch.no_grad():
            return sa.two_simplicial_attention(q, *kv, s["w1"], s["w2"], backend=name)

    t = timing.summarize(time_fn(fwd, device=device, warmup=1 if ctx < 16384 else 0, repeats=reps))
    count = flops.attention_flops(s["B"], ctx, s["Hq"], s["D"], s["w1"], s["w2"], True, "fwd")
    return {"recompute_s": t["median_s"], "recompute_gflops": count / t["median_s"] / 1e9}


def markdown(result):
    s = result["shape"]
    lines = [
        f"Decoding: one new token, B={s['B']} Hq={s['Hq']} Hkv={s['Hkv']} D={s['D']} w1={s['w1']} w2={s['w2']}, "
        f"ring caches of w1 / w2 slots, {result['dtype']}. step: the public call; kernel: the backend's decode alone "
        "(step - kernel = Python overhead); recompute: the full forward over the context (what a token costs "
        f"without a cache); x FLOP time: the kernel against its FLOPs at the backend's fused-forward rate at "
        f"{result['rate_context']} tokens.",
        "",
        "| provider | context | step | tokens/s | kernel | Python overhead | recompute | recompute / step "
        "| x FLOP time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        rec = f"{r['recompute_s'] * 1e3:.1f} ms" if "recompute_s" in r else "-"
        ratio = f"{r['recompute_over_step']:.0f}x" if "recompute_over_step" in r else "-"
        flop = f"{r['step_over_flop_time']:.2f}" if "step_over_flop_time" in r else "-"
        lines.append(
            f"| {r['provider']} | {r['context']} | {r['step_s'] * 1e6:.0f} us | {r['tokens_per_s']:.0f} | "
            f"{r['kernel_s'] * 1e6:.0f} us | {r['python_overhead_s'] * 1e6:.0f} us | {rec} | {ratio} | {flop} |"
        )
    return "\n".join(lines) + "\n"
