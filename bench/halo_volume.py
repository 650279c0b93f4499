"""Context parallelism: bytes a rank exchanges per layer against the FLOPs it computes.

    python bench/halo_volume.py                           # w1=512, w2=32, N=128k, P=2..64
    python bench/halo_volume.py --centred --N 32768 --P 4 8 --link-gbps 50

For each world size P (sequence split evenly) it prints, for the rank with the largest halo: the halo that
`two_simplicial_attention_cp` receives in forward (the same bytes go back as gradients in
backward), what ring attention would move for the same layer (every rank sees (P-1)/P of
k1, k2, v1, v2 go by), the forward FLOPs of the rank's own queries (CONTRACT §2: 4*D per
in-window triple per query head), the FLOPs spent on the zero query rows of the halo (the
price of calling the single-process op on [halo | chunk]), and FLOPs per byte moved.
Bytes come from `simplicial_attn.parallel.halo_plan`, the plan the op itself follows
(tests/test_distributed.py checks the op's byte counters against brute force). Nothing
is timed; `--link-gbps` only converts bytes to transfer time at that bandwidth.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import flops  # noqa: E402
from simplicial_attn.parallel import halo_plan, simplicial_reaches  # noqa: E402

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
KV_TENSORS = 4  # k1, v1, k2, v2


def rank_figures(N, P, rank, args):
    """(halo bytes received, useful fwd FLOPs, zero-row fwd FLOPs) of one rank."""
    offsets = [N * r // P for r in range(P + 1)]
    plan = halo_plan(offsets, rank, simplicial_reaches(args.w1, args.w2, args.causal, N))
    row_bytes = args.B * args.Hkv * args.D * DTYPE_BYTES[args.dtype]
    halo = row_bytes * sum(p.hi - p.lo for p in plan.recv)
    per_triple = flops.FWD_PER_TRIPLE * args.D * args.B * args.Hq
    # Triples of this rank's queries in the global sequence, and of every row the op computes.
    sizes = flops.window_sizes(N, args.w1, args.causal) * flops.window_sizes(N, args.w2, args.causal)
    useful = int(sizes[plan.start : plan.stop].sum())
    computed = flops.window_triples(plan.ext_len, args.w1, args.w2, args.causal)
    return halo, per_triple * useful, per_triple * (computed - useful)


def table(args):
    B, N = args.B, args.N
    row_bytes = B * args.Hkv * args.D * DTYPE_BYTES[args.dtype]
    mode = "causal" if args.causal else "centred"
    lines = [
        f"B={B} N={N} Hq={args.Hq} Hkv={args.Hkv} D={args.D} w1={args.w1} w2={args.w2} {mode} {args.dtype}; "
        f"per layer, forward, the rank with the largest halo; {flops.CONVENTION}",
        "",
        "| P | N/P | halo MB | ring MB | ring/halo | fwd GFLOP | zero-row overhead | FLOP/B halo | FLOP/B ring |"
        + (f" halo us @{args.link_gbps:g}GB/s | ring us |" if args.link_gbps else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if args.link_gbps else ""),
    ]
    for P in args.P:
        halo, useful, zero_rows = max(rank_figures(N, P, r, args) for r in range(P))  # the largest halo
        ring = (P - 1) * (N // P) * row_bytes * KV_TENSORS
        cells = [
            P,
            N // P,
            f"{halo / 1e6:.2f}",
            f"{ring / 1e6:.1f}",
            f"{ring / halo:.0f}x",
            f"{useful / 1e9:.0f}",
            f"{100 * zero_rows / useful:.1f}%",
            f"{useful / halo:.3g}",
            f"{useful / ring:.3g}",
        ]
        if args.link_gbps:
            cells += [f"{halo / args.link_gbps / 1e3:.0f}", f"{ring / args.link_gbps / 1e3:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--N", type=int, default=131072, help="global sequence length")
    p.add_argument("--P", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64], help="world sizes")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--Hq", type=int, default=32)
    p.add_argument("--Hkv", type=int, default=8)
    p.add_argument("--D", type=int, default=128)
    p.add_argument("--w1", type=int, default=512)
    p.add_argument("--w2", type=int, default=32)
    p.add_argument("--centred", dest="causal", action="store_false", help="centred windows (default causal)")
    p.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bfloat16")
    p.add_argument("--link-gbps", type=float, default=0, help="also print transfer time at this GB/s")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(table(args))


if __name__ == "__main__":
    main()
