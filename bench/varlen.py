"""Packed variable-length sequences (issue 15): packed vs padded vs one call per sequence.

    python bench/run.py --op varlen              # every provider this machine has

A mix of document lengths like a language-model batch (LENGTHS: 64 .. 4096 tokens, mean ~800),
run three ways per provider and mode:

    packed   one two_simplicial_attention_varlen call over the packed [T, H, D] rows
    sum      one two_simplicial_attention call per sequence: the time of the sequences themselves
    padded   one batched call with every sequence padded to the longest (what packing avoids;
             forward only, it costs ~5x here)

GFLOP/s count the sequences' own triples (CONTRACT §2), the same figure for all three, so the
padded row shows how much of its time is padding. Target: packed within 10% of sum.
"""

import torch

import simplicial_attn as sa
from bench import flops, timing

LENGTHS = [64, 80, 120, 200, 300, 420, 560, 700, 850, 1000, 1200, 4096]
SHAPE = dict(Hq=4, Hkv=4, D=64, w1=256, w2=32)
# Providers whose padded call would take minutes at this mix on a CPU.
SLOW = {"reference"}


def _inputs(lengths, Hq, Hkv, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q = torch.randn(T, Hq, D, generator=g)
    kv = [torch.randn(T, Hkv, D, generator=g) for _ in range(4)]
    dout = torch.randn(T, Hq, D, generator=g)
    return [t.to(device, dtype) for t in (q, *kv, dout)]


def _step(forward, leaves, dout, mode):
    if mode == "fwd":

        def fwd():
            with torch.no_grad():
                return forward(*leaves)

        return fwd
    for t in leaves:
        t.requires_grad_(True)
    return lambda: torch.autograd.grad(forward(*leaves), leaves, dout)


def _layouts(backend, lengths, tensors, shape, mode):
    """{layout: zero-argument step} for one provider and mode."""
    w1, w2 = shape["w1"], shape["w2"]
    q, k1, k2, v1, v2, dout = tensors
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=q.device)
    longest = max(lengths)

    def packed(*t):
        return sa.two_simplicial_attention_varlen(*t, cu, longest, w1, w2, backend=backend)

    def batched(*t):
        return sa.two_simplicial_attention(*t, w1, w2, backend=backend)

    steps = {"packed": _step(packed, [t.detach().clone() for t in (q, k1, k2, v1, v2)], dout, mode)}
    per_seq = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        rows = [t[s:e].detach().clone()[None] for t in (q, k1, k2, v1, v2)]
        per_seq.append(
            _step(lambda *t: sa.two_simplicial_attention(*t, w1, w2, backend=backend), rows, dout[s:e][None], mode)
        )
    steps["sum"] = lambda: [f() for f in per_seq]
    if mode == "fwd" and backend not in SLOW:
        padded = []
        for t in (q, k1, k2, v1, v2):
            p = t.new_zeros(len(lengths), longest, *t.shape[1:])
            for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
                p[i, : e - s] = t[s:e]
            padded.append(p)
        steps["padded"] = _step(batched, padded, None, mode)
    return steps


def measure(backends, device, dtype, repeats, modes=("fwd", "fwdbwd"), time_fn=timing.time_fn):
    """Rows {provider, mode, layout, median_s, ..., gflops} and, per provider and mode, packed/sum."""
    shape = SHAPE
    lengths = LENGTHS
    tensors = _inputs(lengths, shape["Hq"], shape["Hkv"], shape["D"], dtype, device)
    rows, ratios = [], []
    for backend in backends:
        for mode in modes:
            count = sum(
                flops.attention_flops(1, n, shape["Hq"], shape["D"], shape["w1"], shape["w2"], True, mode)
                for n in lengths
            )
            reps = 1 if backend in SLOW else repeats
            results = {}
            for layout, step in _layouts(backend, lengths, tensors, shape, mode).items():
                stats = timing.summarize(time_fn(step, device=device, warmup=1, repeats=reps))
                stats.update(provider=backend, mode=mode, layout=layout, flops=count)
                stats["gflops"] = count / stats["median_s"] / 1e9
                rows.append(stats)
                results[layout] = stats["median_s"]
            ratios.append({"provider": backend, "mode": mode, "packed_over_sum": results["packed"] / results["sum"]})
    return {
        "lengths": lengths,
        "tokens": sum(lengths),
        "shape": shape,
        "dtype": str(dtype).removeprefix("torch."),
        "rows": rows,
        "packed_over_sum": ratios,
    }


def markdown(result):
    s = result["shape"]
    lines = [
        f"Packed sequences: {len(result['lengths'])} sequences of {min(result['lengths'])}..{max(result['lengths'])} "
        f"tokens (mean {result['tokens'] / len(result['lengths']):.0f}, T = {result['tokens']}), Hq={s['Hq']} "
        f"Hkv={s['Hkv']} D={s['D']} w1={s['w1']} w2={s['w2']}, {result['dtype']}, causal. GFLOP/s of the sequences' "
        "own triples.",
        "",
        "| provider | mode | layout | median | GFLOP/s |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['provider']} | {r['mode']} | {r['layout']} | {r['median_s'] * 1e3:.1f} ms | {r['gflops']:.1f} |"
        )
    lines += ["", "| provider | mode | packed / sum of the sequences |", "|---|---|---|"]
    for r in result["packed_over_sum"]:
        lines.append(f"| {r['provider']} | {r['mode']} | {r['packed_over_sum']:.3f} |")
    return "\n".join(lines) + "\n"
