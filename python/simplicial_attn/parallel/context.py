r"""Context parallelism: 2-simplicial attention over a sequence split across ranks.

    import torch.distributed as dist
    from simplicial_attn.parallel import two_simplicial_attention_cp

    # rank r of `group` holds positions [offset_r, offset_r + N_r) of every input
    out = two_simplicial_attention_cp(q, k1, k2, v1, v2, w1=512, w2=32, group=group)

Sliding windows are local, so a rank needs only a halo of its neighbours' keys and values
(causal: the w - 1 positions before its chunk), not the whole sequence as ring attention
does. Each rank:

  1. all_gathers the chunk layout (its N_local and its call's shapes and settings, so a
     mismatch between ranks is a clear error, not a hang or a wrong answer);
  2. exchanges halos point to point (comm.HaloExchange) and builds

         ext = [ halo before | local chunk | halo after ]

     for k1, v1, k2, v2 (each gets the halo of its own window: w1 for k1/v1, w2 for k2/v2);
  3. runs the single-process op once on ext, with zero query rows in the halo positions,
     and keeps the rows of its own queries.

Why that is exact: the op clips windows at the ends of the sequence it is given, and ext
starts exactly where a local query's window starts (or at global position 0) and ends where
it ends (or at N), so each local query sees the same (j, k) pairs, at the same relative
offsets, as in the single-process op. The zero query rows produce outputs that are
discarded; their gradient `dout` is zero, so they add nothing to any key gradient.

Why that is the cheapest exact use of the op: the op has one N for queries and keys and
computes every row it is given, so any call that starts after global position 0 spends
its first `before` rows on partial windows (here: the zero rows, ~w1/2 rows of work for
causal w1 >> w2). One call per rank pays that once. Overlapping the attention itself
with the transfer would need a second call (local chunk while the halo is in flight,
boundary rows after), which pays it twice; at w1 = 512, w2 = 32 the second payment
outweighs the halo transfer it would hide unless the link is slower than ~30 GB/s per
PFLOP/s of attention throughput (docs/scaling.md, bench/halo_volume.py). So the transfer
overlaps only the assembly of ext (copying the local rows), in forward and in backward.
"""

import torch
import torch.distributed as dist

from .. import _validate, api, backends
from .comm import STATS, CommStats, HaloExchange, HaloPlan, Piece

__all__ = ["CommStats", "comm_stats", "halo_plan", "two_simplicial_attention_cp"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# What every rank must agree on, in the order of the all_gathered layout row (after N_local).
_AGREED = ("B", "Hq", "Hkv", "D", "dtype", "w1", "w2", "causal", "scale")


def two_simplicial_attention_cp(
    q, k1, k2, v1, v2, w1=512, w2=32, *, causal=True, scale=None, group=None, backend="auto"
):
    r"""2-simplicial attention with the sequence split across the ranks of `group`.

    The same math and window rules as `simplicial_attn.two_simplicial_attention` on the full
    sequence. Rank r passes positions [offset_r, offset_r + N_r) of the global sequence:
    chunks are contiguous and in rank order (offset_r = N_0 + ... + N_{r-1}), and need not
    be equal: any N_r >= 0 works (a rank with N_r = 0 computes nothing). Windows longer
    than a chunk are fine too: the halo is gathered from as many predecessors (and, for
    centred windows, successors) as it spans, so w = None (unbounded) works, but then every
    rank receives and computes over everything before it (causal) or the whole sequence
    (centred), which defeats the purpose; context parallelism pays off for w1, w2 << N_r.

    Halo a rank receives (global positions outside its chunk, clipped to [0, N)):

        causal:  [start - (w1 - 1), start)                 of k1, v1;  w2 - 1 of k2, v2
        centred: [start - w1//2, start) and [stop, stop + w1 - 1 - w1//2)   likewise

    Every rank of `group` must call this together with the same shapes (except N_r), dtype,
    windows, `causal` and `scale`; a mismatch raises ValueError on every rank. Gradients flow
    to all five inputs: in backward each rank sends the gradient of the halo it received back
    to the owning rank, so every rank must run backward through its output. With NCCL, call
    torch.cuda.set_device first, as for any point-to-point communication.

    Args:
        q: (batch_size, seqlen_local, nheads_q, headdim).
        k1, k2, v1, v2: (batch_size, seqlen_local, nheads_kv, headdim).
        w1, w2, causal, scale, backend: as in `two_simplicial_attention` (backend runs the
            local computation).
        group: the torch.distributed process group (default: the whole world).

    Returns:
        out (batch_size, seqlen_local, nheads_q, headdim): this rank's queries.
    """
    _validate.check_tensors(q, k1, k2, v1, v2)
    _validate.check_window("w1", w1)
    _validate.check_window("w2", w2)
    _validate.check_flag("causal", causal)
    _validate.check_scale(scale)
    backend = backends.select(backend, q.device.type, q.dtype)
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("two_simplicial_attention_cp needs torch.distributed initialised (init_process_group)")
    group = dist.group.WORLD if group is None else group
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("group: this process is not a member of the group it passed")
    scale = q.shape[3] ** -0.5 if scale is None else float(scale)
    if dist.get_world_size(group) == 1:
        return api.two_simplicial_attention(q, k1, k2, v1, v2, w1, w2, causal=causal, scale=scale, backend=backend)

    offsets = _gather_layout(q, k1, w1, w2, causal, scale, group)
    plan = halo_plan(offsets, rank, w1, w2, causal)
    k1x, v1x, k2x, v2x = HaloExchange.apply(plan, group, k1, v1, k2, v2)
    B, n, Hq, D = q.shape
    qx = torch.cat([q.new_zeros(B, plan.before, Hq, D), q, q.new_zeros(B, plan.after, Hq, D)], dim=1)
    out = api.two_simplicial_attention(qx, k1x, k2x, v1x, v2x, w1, w2, causal=causal, scale=scale, backend=backend)
    return out[:, plan.before : plan.before + n].contiguous()


def comm_stats():
    """The byte counters of this process's halo traffic (a live CommStats; `.reset()` zeroes it)."""
    return STATS


def halo_plan(offsets, rank, w1, w2, causal):
    """What `rank` sends and receives when chunk r holds global positions [offsets[r], offsets[r+1]).

    A pure function of the layout (no communication), used by the op and by bench/halo_volume.py.
    """
    world = len(offsets) - 1
    n_global = offsets[-1]
    windows = (w1, w1, w2, w2)  # k1, v1, k2, v2

    def chunk(r):
        return offsets[r], offsets[r + 1]

    def span(r, w):
        start, stop = chunk(r)
        if start == stop:
            return start, stop
        before, after = _reach(w, causal, n_global)
        return max(0, start - before), min(n_global, stop + after)

    def overlap(a, b):
        lo, hi = max(a[0], b[0]), min(a[1], b[1])
        return (lo, hi) if lo < hi else None

    start, stop = chunk(rank)
    spans = tuple(span(rank, w) for w in windows)
    recv, send = [], []
    for peer in range(world):
        if peer == rank:
            continue
        for t, w in enumerate(windows):
            if got := overlap(spans[t], chunk(peer)):
                recv.append(Piece(t, peer, *got))
            if given := overlap(span(peer, w), chunk(rank)):
                send.append(Piece(t, peer, *given))
    before = start - min(lo for lo, _ in spans)
    after = max(hi for _, hi in spans) - stop
    return HaloPlan(start, stop, before, after, spans, tuple(recv), tuple(send))


def _reach(w, causal, n_global):
    """(before, after): how many positions a query's window reaches before and after it."""
    if w is None:
        return n_global, (0 if causal else n_global)
    return (w - 1, 0) if causal else (w // 2, w - 1 - w // 2)


def _gather_layout(q, k1, w1, w2, causal, scale, group):
    """All ranks' N_local (as chunk offsets), after checking they agree on everything else."""
    B, n, Hq, D = q.shape
    row = [n, B, Hq, k1.shape[2], D, _DTYPES.index(q.dtype), _encode(w1), _encode(w2), float(causal), scale]
    mine = torch.tensor(row, dtype=torch.float64, device=q.device)
    table = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(table, mine, group=group)
    STATS.layout_gathers += 1
    rows = torch.stack(table).cpu().tolist()
    for col, name in enumerate(_AGREED, start=1):
        values = [r[col] for r in rows]
        if any(v != values[0] for v in values):
            shown = ", ".join(f"rank {i}: {_decode(name, v)}" for i, v in enumerate(values))
            raise ValueError(f"every rank of the group must pass the same {name}; got {shown}")
    offsets = [0]
    for r in rows:
        offsets.append(offsets[-1] + int(r[0]))
    return offsets


def _encode(w):
    return -1.0 if w is None else float(w)


def _decode(name, v):
    if name == "dtype":
        return str(_DTYPES[int(v)]).removeprefix("torch.")
    if name in ("w1", "w2"):
        return None if v < 0 else int(v)
    if name == "causal":
        return bool(v)
    return v if name == "scale" else int(v)
