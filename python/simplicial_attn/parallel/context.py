r"""Context parallelism: attention over a sequence split across ranks.

    from simplicial_attn.parallel import two_simplicial_attention_cp

    # rank r of the group holds positions [offset_r, offset_r + N_r) of every input
    out = two_simplicial_attention_cp(q, k1, k2, v1, v2, w1=512, w2=32, group=mesh["cp"])

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

Packed sequences (cu_seqlens, the packing of the whole global sequence, the same on every
rank): windows stop at document boundaries, so a halo never reaches past the document of the
chunk's first (causal) or last (centred) token: a chunk that starts a document receives nothing
from before it. ext is then packed too, its documents the global ones cut to ext, and the local
call is `two_simplicial_attention_varlen`: a boundary inside a chunk, inside the halo, or
exactly at a chunk edge is the varlen op's business, and exact as above.

Why that is the cheapest exact use of the op: the op has one N for queries and keys and
computes every row it is given, so any call that starts after global position 0 spends
its first `before` rows on partial windows (here: the zero rows, ~w1/2 rows of work for
causal w1 >> w2). One call per rank pays that once. Overlapping the attention itself
with the transfer would need a second call (local chunk while the halo is in flight,
boundary rows after), which pays it twice; at w1 = 512, w2 = 32 the second payment
outweighs the halo transfer it would hide unless the link is slower than ~30 GB/s per
PFLOP/s of attention throughput (docs/scaling.md, bench/halo_volume.py). So the transfer
overlaps only the assembly of ext (copying the local rows), in forward and in backward.

The SDPA layers of a model need the same split: `dot_product_attention_cp` exchanges the
halo of k and v (window - 1 rows, or everything before the chunk for full causal attention)
and attends the local queries to it under an explicit mask (a baseline, like the package's
packed SDPA: not a fused kernel).
"""

import bisect
import dataclasses
import zlib

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import backends
from ..ops import attention, checks, varlen
from ..problem import LOGITS, window_band
from .comm import STATS, CommStats, HaloExchange, HaloPlan, Piece

__all__ = [
    "ChunkLayout",
    "CommStats",
    "HaloPlan",
    "Piece",
    "chunk_layout",
    "comm_stats",
    "dot_product_attention_cp",
    "halo_plan",
    "resolve_group",
    "simplicial_reaches",
    "two_simplicial_attention_cp",
]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclasses.dataclass(frozen=True)
class ChunkLayout:
    """Where every rank's chunk sits: rank r of `group` holds global positions [offsets[r], offsets[r + 1]).

    documents: the global packing (cu_seqlens values) when the sequence is packed, else None.
    """

    offsets: tuple[int, ...]
    rank: int
    group: object
    documents: tuple[int, ...] | None = None

    @property
    def start(self):
        return self.offsets[self.rank]

    @property
    def stop(self):
        return self.offsets[self.rank + 1]

    @property
    def total(self):
        return self.offsets[-1]

    def positions(self, device=None):
        """The positions of this rank's tokens in their sequence: global positions, restarting at 0 at
        every document of a packed sequence (what RoPE needs)."""
        positions = torch.arange(self.start, self.stop, device=device)
        if self.documents is None:
            return positions
        cu = torch.tensor(self.documents, device=device)
        return positions - cu[torch.searchsorted(cu, positions, right=True) - 1]


def resolve_group(group):
    """A process group from `group`: None (the whole world), a ProcessGroup, or a 1-D DeviceMesh
    (e.g. `mesh["cp"]`)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("context parallelism needs torch.distributed initialised (init_process_group)")
    if group is None:
        return dist.group.WORLD
    if isinstance(group, dist.device_mesh.DeviceMesh):
        if group.ndim != 1:
            raise ValueError(
                f"group: a DeviceMesh for context parallelism must be 1-D (e.g. mesh['cp']), got {group.ndim}-D "
                f"with dimensions {group.mesh_dim_names}"
            )
        return group.get_group()
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a ProcessGroup, a 1-D DeviceMesh or None, got {type(group).__name__}")
    return group


def chunk_layout(n_local, group, *, cu_seqlens=None, agree=(), device=None):
    """All ranks' chunk sizes, in one all_gather, as a ChunkLayout.

    agree: (name, value) pairs every rank must pass alike (shapes, dtype, windows, ...); a rank that
    differs makes every rank raise a ValueError naming the field. cu_seqlens (packed sequences): the
    packing of the whole sequence, which every rank must pass alike and which must cover exactly the
    chunks' total.
    """
    group = resolve_group(group)
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("group: this process is not a member of the group it passed")
    documents = None
    if cu_seqlens is not None:
        documents = tuple(int(c) for c in cu_seqlens.tolist())
        agree = (*agree, ("cu_seqlens", zlib.crc32(repr(documents).encode())))
    row = [float(n_local)] + [_encode(value) for _, value in agree]
    mine = torch.tensor(row, dtype=torch.float64, device=device)
    table = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(table, mine, group=group)
    STATS.layout_gathers += 1
    rows = torch.stack(table).cpu().tolist()
    for col, (name, value) in enumerate(agree, start=1):
        values = [r[col] for r in rows]
        if any(v != values[0] for v in values):
            if name == "cu_seqlens":
                raise ValueError("every rank of the group must pass the same cu_seqlens (the whole sequence's packing)")
            shown = ", ".join(f"rank {i}: {_decode(value, v)}" for i, v in enumerate(values))
            raise ValueError(f"every rank of the group must pass the same {name}; got {shown}")
    offsets = [0]
    for r in rows:
        offsets.append(offsets[-1] + int(r[0]))
    if documents is not None and (documents[0] != 0 or documents[-1] != offsets[-1]):
        raise ValueError(
            f"cu_seqlens must pack the whole sequence: from 0 to the sum of the ranks' chunks ({offsets[-1]}), got "
            f"{documents[0]} .. {documents[-1]}"
        )
    return ChunkLayout(tuple(offsets), rank, group, documents)


def _encode(value):
    if value is None:
        return -1.0
    if isinstance(value, torch.dtype):
        return float(_DTYPES.index(value))
    if isinstance(value, str):
        return float(LOGITS.index(value)) if value in LOGITS else float(zlib.crc32(value.encode()))
    return float(value)


def _decode(like, v):
    """A gathered value shown like the local one it was encoded from."""
    if isinstance(like, torch.dtype):
        return str(_DTYPES[int(v)]).removeprefix("torch.")
    if isinstance(like, str):
        return LOGITS[int(v)] if like in LOGITS and 0 <= v < len(LOGITS) else f"<{int(v)}>"
    if isinstance(like, bool):
        return bool(v)
    if like is None or isinstance(like, int):
        return None if v < 0 and (like is None or like >= 0) else int(v)
    return v


def comm_stats():
    """The byte counters of this process's halo traffic (a live CommStats; `.reset()` zeroes it)."""
    return STATS


def simplicial_reaches(w1, w2, causal, n_global):
    """The reaches (bands: positions before and after a query) of k1, v1, k2, v2, the halo_plan order,
    for windows w1, w2 over a sequence of n_global positions."""
    b1, b2 = window_band(w1, causal, n_global), window_band(w2, causal, n_global)
    return (b1, b1, b2, b2)


def halo_plan(offsets, rank, reaches, documents=None):
    """What `rank` sends and receives when chunk r holds global positions [offsets[r], offsets[r+1]).

    reaches: per exchanged tensor, the band (left, right) of its window (`problem.window_band`): how
    far a query's window reaches before and after it.
    documents: the global cu_seqlens of a packed sequence (no window crosses a document boundary).
    A pure function of the layout (no communication), used by the ops and by bench/halo_volume.py.
    """
    world = len(offsets) - 1
    n_global = offsets[-1]

    def chunk(r):
        return offsets[r], offsets[r + 1]

    def document(p):
        s = bisect.bisect_right(documents, p) - 1
        return documents[s], documents[s + 1]

    def span(r, reach):
        start, stop = chunk(r)
        if start == stop:
            return start, stop
        before, after = reach
        lo, hi = max(0, start - before), min(n_global, stop + after)
        if documents is not None:  # windows end at their document's edges
            lo, hi = max(lo, document(start)[0]), min(hi, document(stop - 1)[1])
        return lo, hi

    def overlap(a, b):
        lo, hi = max(a[0], b[0]), min(a[1], b[1])
        return (lo, hi) if lo < hi else None

    start, stop = chunk(rank)
    spans = tuple(span(rank, reach) for reach in reaches)
    recv, send = [], []
    for peer in range(world):
        if peer == rank:
            continue
        for t, reach in enumerate(reaches):
            if got := overlap(spans[t], chunk(peer)):
                recv.append(Piece(t, peer, *got))
            if given := overlap(span(peer, reach), chunk(rank)):
                send.append(Piece(t, peer, *given))
    before = start - min(lo for lo, _ in spans)
    after = max(hi for _, hi in spans) - stop
    return HaloPlan(start, stop, before, after, spans, tuple(recv), tuple(send))


def two_simplicial_attention_cp(
    q,
    k1,
    k2,
    v1,
    v2,
    w1=512,
    w2=32,
    *,
    causal=True,
    scale=None,
    logits="trilinear",
    cu_seqlens=None,
    group=None,
    backend="auto",
):
    r"""2-simplicial attention with the sequence split across the ranks of `group`.

    The same math and window rules as `simplicial_attn.two_simplicial_attention` on the full
    sequence (or `two_simplicial_attention_varlen` on the full packed sequence). Rank r passes
    positions [offset_r, offset_r + N_r) of the global sequence: chunks are contiguous and in
    rank order (offset_r = N_0 + ... + N_{r-1}), and need not be equal: any N_r >= 0 works (a
    rank with N_r = 0 computes nothing). Windows longer than a chunk are fine too: the halo is
    gathered from as many predecessors (and, for centred windows, successors) as it spans, so
    w = None (unbounded) works, but then every rank receives and computes over everything
    before it (causal) or the whole sequence (centred), which defeats the purpose; context
    parallelism pays off for w1, w2 << N_r.

    Halo a rank receives (global positions outside its chunk, clipped to [0, N) and, packed, to
    the documents of its first and last token):

        causal:  [start - (w1 - 1), start)                 of k1, v1;  w2 - 1 of k2, v2
        centred: [start - w1//2, start) and [stop, stop + w1 - 1 - w1//2)   likewise

    Every rank of `group` must call this together with the same shapes (except N_r), dtype,
    windows, `causal`, `scale`, `logits` and cu_seqlens; a mismatch raises ValueError on every
    rank. Gradients flow to all five inputs: in backward each rank sends the gradient of the
    halo it received back to the owning rank, so every rank must run backward through its
    output. With NCCL, call torch.cuda.set_device first, as for any point-to-point communication.

    Args:
        q: (batch_size, seqlen_local, nheads_q, headdim); packed: (tokens_local, nheads_q, headdim).
        k1, k2, v1, v2: (batch_size, seqlen_local, nheads_kv, headdim); packed (tokens_local, ...).
        w1, w2, causal, scale, logits, backend: as in `two_simplicial_attention` (backend runs
            the local computation).
        cu_seqlens: packed sequences: the cu_seqlens of the whole global sequence (int32/int64
            [S + 1], the same on every rank, on q's device); documents may span ranks.
        group: the ranks that split the sequence: a ProcessGroup, a 1-D DeviceMesh (`mesh["cp"]`),
            or None (the whole world).

    Returns:
        out, shaped like q: this rank's queries.
    """
    packed = cu_seqlens is not None
    checks.check_call((q, k1, k2, v1, v2), w1, w2, causal, scale, logits, packed=packed)
    backend = backends.select(backend, q.device, q.dtype)
    if packed:
        checks.check_cu_seqlens_tensor(cu_seqlens, q.device)
    group = resolve_group(group)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    batch = -1 if packed else q.shape[0]
    agree = (("B", batch), ("Hq", q.shape[-2]), ("Hkv", k1.shape[-2]), ("D", q.shape[-1]), ("dtype", q.dtype),
             ("w1", w1), ("w2", w2), ("causal", causal), ("scale", scale), ("logits", logits))  # fmt: skip
    layout = chunk_layout(q.shape[-3], group, cu_seqlens=cu_seqlens, agree=agree, device=q.device)
    return simplicial_chunk(q, k1, k2, v1, v2, layout, w1, w2, causal, scale, logits, backend)


def simplicial_chunk(q, k1, k2, v1, v2, layout, w1, w2, causal, scale, logits, backend):
    """The local part of `two_simplicial_attention_cp` once the layout is known (its arguments checked,
    `backend` concrete): exchange the halo, one op call on [halo | chunk | halo], this rank's rows."""
    packed = layout.documents is not None
    if packed:  # the exchange and the zero rows work on [1, T, H, D]
        q, k1, k2, v1, v2 = (t.unsqueeze(0) for t in (q, k1, k2, v1, v2))
    if dist.get_world_size(layout.group) == 1:
        exts, plan = (k1, v1, k2, v2), None
    else:
        plan = halo_plan(layout.offsets, layout.rank, simplicial_reaches(w1, w2, causal, layout.total),
                         layout.documents)  # fmt: skip
        exts = HaloExchange.apply(plan, layout.group, k1, v1, k2, v2)
        B, n, Hq, D = q.shape
        q = torch.cat([q.new_zeros(B, plan.before, Hq, D), q, q.new_zeros(B, plan.after, Hq, D)], dim=1)
    k1x, v1x, k2x, v2x = exts
    options = dict(causal=causal, scale=scale, logits=logits, backend=backend)
    if packed:
        lo, hi = (layout.start, layout.stop) if plan is None else (plan.ext_start, plan.stop + plan.after)
        cu = _documents_within(layout.documents, lo, hi, q.device)
        longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
        out = varlen.two_simplicial_attention_varlen(
            q[0], k1x[0], k2x[0], v1x[0], v2x[0], cu, longest, w1, w2, **options
        )[None]
    else:
        out = attention.two_simplicial_attention(q, k1x, k2x, v1x, v2x, w1, w2, **options)
    if plan is not None:
        out = out[:, plan.before : plan.before + (plan.stop - plan.start)]
    return out[0].contiguous() if packed else out.contiguous()


def _documents_within(documents, lo, hi, device):
    """cu_seqlens of positions [lo, hi) of a packed sequence: its documents cut to that range, from 0."""
    inner = [c - lo for c in documents if lo < c < hi]
    return torch.tensor([0, *inner, hi - lo], dtype=torch.int32, device=device)


def dot_product_attention_cp(q, k, v, *, window=None, causal=True, scale=None, cu_seqlens=None, group=None):
    """Standard attention (the `DotProductAttention` layers of a model) with the sequence split across ranks.

    q [B, N_r, Hq, D], k, v [B, N_r, Hkv, D] (packed: [T_r, H, D] with the global cu_seqlens), chunks
    as in `two_simplicial_attention_cp`. Key j is visible to query i iff j <= i (causal) and
    i - j < window (a trailing window), within one document when packed; causal=False sees the
    whole sequence (no window). The halo is the window's w - 1 keys and values before the chunk
    (full causal attention: everything before it; causal=False: everything). Differentiable.
    """
    packed = cu_seqlens is not None
    if packed:
        checks.check_cu_seqlens_tensor(cu_seqlens, q.device)
    group = resolve_group(group)
    agree = (("B", -1 if packed else q.shape[0]), ("Hq", q.shape[-2]), ("Hkv", k.shape[-2]), ("D", q.shape[-1]),
             ("dtype", q.dtype), ("window", window), ("causal", causal))  # fmt: skip
    layout = chunk_layout(q.shape[-3], group, cu_seqlens=cu_seqlens, agree=agree, device=q.device)
    return dot_product_chunk(q, k, v, layout, window, causal, scale)


def dot_product_chunk(q, k, v, layout, window, causal, scale=None):
    """The local part of `dot_product_attention_cp` once the layout is known."""
    packed = layout.documents is not None
    if packed:
        q, k, v = (t.unsqueeze(0) for t in (q, k, v))
    reach = window_band(window, causal, layout.total)  # full causal: (N - 1, 0); bidirectional: (N - 1, N - 1)
    plan = halo_plan(layout.offsets, layout.rank, (reach, reach), layout.documents)
    if dist.get_world_size(layout.group) > 1:
        k, v = HaloExchange.apply(plan, layout.group, k, v)
    device = q.device
    query = torch.arange(plan.start, plan.stop, device=device)[:, None]
    key = torch.arange(plan.ext_start, plan.stop + plan.after, device=device)[None, :]
    visible = torch.ones(query.shape[0], key.shape[1], dtype=torch.bool, device=device)
    if causal:
        visible = key <= query
        if window is not None:
            visible = visible & (query - key < window)
    if packed:
        cu = torch.tensor(layout.documents, device=device)
        visible = visible & (_document_of(cu, query) == _document_of(cu, key))
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=visible, scale=scale,
        enable_gqa=k.shape[2] != q.shape[2],
    ).transpose(1, 2)  # fmt: skip
    return out[0] if packed else out


def _document_of(cu, positions):
    return torch.searchsorted(cu, positions, right=True)
