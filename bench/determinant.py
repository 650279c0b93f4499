"""Determinant logits (issue 18): their cost against the trilinear form at the same shape.

    python bench/run.py --op determinant         # every provider this machine has

Both logit forms through the public op, forward and backward (autograd), at one shape with a
head dim divisible by 3. The kernels form the determinant with the cross-product identity
(det(q, k1, k2) = k1 . (k2 x q) per chunk), so their GEMMs keep the trilinear depth; the target
on the cpu backend is a determinant forward within 1.6x of the trilinear one.
"""

import torch

import simplicial_attn as sa
from bench import flops, timing

SHAPE = dict(B=1, N=1024, Hq=4, Hkv=4, D=48, w1=256, w2=32)
SLOW = {"reference"}


def _inputs(device, dtype, seed=0):
    s = SHAPE
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(s["B"], s["N"], s["Hq"], s["D"], generator=g)
    kv = [torch.randn(s["B"], s["N"], s["Hkv"], s["D"], generator=g) for _ in range(4)]
    dout = torch.randn(q.shape, generator=g)
    return [t.to(device, dtype) for t in (q, *kv, dout)]


def measure(names, device, dtype, repeats, time_fn=timing.time_fn):
    s = SHAPE
    q, k1, k2, v1, v2, dout = _inputs(device, dtype)
    leaves = [t.requires_grad_(True) for t in (q, k1, k2, v1, v2)]
    rows, ratios = [], []
    for name in names:
        reps = 1 if name in SLOW else repeats
        times = {}
        for logits in ("trilinear", "determinant"):

            def forward(logits=logits, name=name):
                return sa.two_simplicial_attention(*leaves, s["w1"], s["w2"], logits=logits, backend=name)

            def fwd(forward=forward):
                with torch.no_grad():
                    return forward()

            out = forward()
            steps = {"fwd": fwd, "bwd": lambda out=out: torch.autograd.grad(out, leaves, dout, retain_graph=True)}
            for mode, step in steps.items():
                t = timing.summarize(time_fn(step, device=device, warmup=1, repeats=reps))
                count = flops.attention_flops(s["B"], s["N"], s["Hq"], s["D"], s["w1"], s["w2"], True, mode)
                rows.append(
                    {"provider": name, "logits": logits, "mode": mode, **t, "flops": count,
                     "gflops": count / t["median_s"] / 1e9}
                )  # fmt: skip
                times[logits, mode] = t["median_s"]
        for mode in ("fwd", "bwd"):
            ratio = times["determinant", mode] / times["trilinear", mode]
            ratios.append({"provider": name, "mode": mode, "determinant_over_trilinear": ratio})
    return {"shape": SHAPE, "dtype": str(dtype).removeprefix("torch."), "rows": rows, "ratios": ratios}


def markdown(result):
    s = result["shape"]
    lines = [
        f"Determinant against trilinear logits: B={s['B']} N={s['N']} Hq={s['Hq']} Hkv={s['Hkv']} D={s['D']} "
        f"w1={s['w1']} w2={s['w2']}, {result['dtype']}, causal; GFLOP/s by the trilinear count (CONTRACT §2) for both.",
        "",
        "| provider | mode | trilinear | determinant | determinant / trilinear |",
        "|---|---|---|---|---|",
    ]
    by = {(r["provider"], r["logits"], r["mode"]): r for r in result["rows"]}
    for r in result["ratios"]:
        tri, det = by[r["provider"], "trilinear", r["mode"]], by[r["provider"], "determinant", r["mode"]]
        lines.append(
            f"| {r['provider']} | {r['mode']} | {tri['median_s'] * 1e3:.1f} ms ({tri['gflops']:.1f} GFLOP/s) | "
            f"{det['median_s'] * 1e3:.1f} ms ({det['gflops']:.1f} GFLOP/s) | {r['determinant_over_trilinear']:.2f} |"
        )
    return "\n".join(lines) + "\n"
