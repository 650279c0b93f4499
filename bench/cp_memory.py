"""Context parallelism, measured: per-rank memory held by the attention, and the halo each rank receives.

    python bench/cp_memory.py                           # c = 1, 2, 4 gloo processes on this CPU
    python bench/cp_memory.py --cp 1 2 4 8 --N 16384 --w1 512 --w2 32

For each context-parallel degree c it starts c processes (gloo, CPU), splits one sequence evenly, and
runs one forward + backward of `two_simplicial_attention_cp` per rank. It reports, for the rank that
holds the most:

- held for backward: the bytes of every tensor autograd saves between forward and backward
  (`torch.autograd.graph.saved_tensors_hooks`, each storage counted once): the attention's
  activations. One process holds q, k1, k2, v1, v2, out and two [B, Hq, N] float32 statistics for N
  rows; a rank holds them for its N / c rows plus the halo rows of [halo | chunk] (the zero query
  rows included), so the expected share is (N / c + before + after) / N;
- the halo it received (comm_stats().halo_received), next to what bench/halo_volume.py's plan
  predicts for the same layout (`halo_plan`): they must be equal (the script fails otherwise).

Nothing is timed.
"""

import argparse
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simplicial_attn.parallel import comm_stats, halo_plan, simplicial_reaches, two_simplicial_attention_cp  # noqa: E402

DTYPE_BYTES = 4  # float32


def held_for_backward(fn):
    """fn()'s result, and the bytes of the distinct storages autograd saved while it ran."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def _inputs(args, lo, hi):
    g = torch.Generator().manual_seed(0)
    shapes = [(args.B, args.N, args.Hq, args.D)] + [(args.B, args.N, args.Hkv, args.D)] * 4
    return [torch.randn(s, generator=g)[:, lo:hi].clone().requires_grad_() for s in shapes]


def _worker(rank, world, init_file, out_dir, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        offsets = [args.N * r // world for r in range(world + 1)]
        inputs = _inputs(args, offsets[rank], offsets[rank + 1])
        comm_stats().reset()
        options = dict(w1=args.w1, w2=args.w2, causal=args.causal, backend=args.backend)
        out, held = held_for_backward(lambda: two_simplicial_attention_cp(*inputs, **options))
        out.sum().backward()
        plan = halo_plan(offsets, rank, simplicial_reaches(args.w1, args.w2, args.causal, args.N))
        row = args.B * args.Hkv * args.D * DTYPE_BYTES
        predicted = row * sum(p.hi - p.lo for p in plan.recv)
        torch.save(
            {"held": held, "halo": comm_stats().halo_received, "predicted": predicted, "ext": plan.ext_len},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def measure(args, world):
    """Per rank: {"held", "halo", "predicted", "ext"} for context-parallel degree `world`."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(world, os.path.join(tmp, "store"), tmp, args), nprocs=world,
                           start_method="spawn")  # fmt: skip
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]


def table(args):
    lines = [
        f"B={args.B} N={args.N} Hq={args.Hq} Hkv={args.Hkv} D={args.D} w1={args.w1} w2={args.w2} "
        f"{'causal' if args.causal else 'centred'} float32, backend {args.backend}; the rank holding the most",
        "",
        "| cp | rows per rank | rows computed (halo + chunk) | held for backward MB | of one process | expected "
        "(rows computed / N) | halo received MB | predicted by halo_plan MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    single = None
    for c in args.cp:
        ranks = measure(args, c)
        top = max(ranks, key=lambda r: r["held"])
        single = top["held"] if c == 1 else single
        for r in ranks:
            if r["halo"] != r["predicted"]:
                raise SystemExit(f"cp={c}: a rank received {r['halo']} halo bytes, halo_plan predicts {r['predicted']}")
        share = f"{top['held'] / single:.3f}" if single else "-"
        lines.append(
            f"| {c} | {args.N // c} | {top['ext']} | {top['held'] / 1e6:.2f} | {share} | {top['ext'] / args.N:.3f} | "
            f"{max(r['halo'] for r in ranks) / 1e6:.3f} | {max(r['predicted'] for r in ranks) / 1e6:.3f} |"
        )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cp", type=int, nargs="+", default=[1, 2, 4], help="context-parallel degrees (1 first)")
    p.add_argument("--N", type=int, default=8192)
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--Hq", type=int, default=4)
    p.add_argument("--Hkv", type=int, default=2)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--w1", type=int, default=256)
    p.add_argument("--w2", type=int, default=32)
    p.add_argument("--centred", dest="causal", action="store_false")
    p.add_argument("--backend", default="cpu")
    args = p.parse_args()
    if args.cp[0] != 1:
        args.cp = [1, *args.cp]
    print(table(args))


if __name__ == "__main__":
    main()
