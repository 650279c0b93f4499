"""Communication for context parallelism: the halo exchange as an autograd Function.

Forward: every rank sends the slices of its key/value chunks (k1, v1, k2, v2 for 2-simplicial
attention; k, v for SDPA) that its neighbours' windows reach, receives the slices its own
windows reach, and assembles the extended sequences

    ext = [ halo before | local chunk | halo after ]       (global positions start - before .. stop + after)

Backward: the gradient of each received slice goes back to its owner, which adds it to the
gradient of its own chunk. Both directions are one `batch_isend_irecv` round of point-to-point
messages between the ranks that share a halo, nothing else. Written as an explicit
torch.autograd.Function (not torch.distributed.nn) so the backward is exactly the transpose
of the forward.

`STATS` counts every byte this module sends and receives, so tests can check that the traffic
is the halo and nothing more.
"""

import dataclasses

import torch
import torch.distributed as dist


@dataclasses.dataclass
class CommStats:
    """Bytes moved by this process since the last `reset()` (payload only)."""

    halo_sent: int = 0  # k/v slices sent in forward
    halo_received: int = 0
    grad_sent: int = 0  # halo gradients sent back to their owners in backward
    grad_received: int = 0
    layout_gathers: int = 0  # all_gathers of the chunk layout (one per call; see context.py)

    def reset(self):
        for field in dataclasses.fields(self):
            setattr(self, field.name, 0)


STATS = CommStats()


@dataclasses.dataclass(frozen=True)
class Piece:
    """Global positions [lo, hi) of exchanged input number `tensor` (k1, v1, k2, v2 = 0..3) moving to/from `peer`."""

    tensor: int
    peer: int  # rank within the group
    lo: int
    hi: int


@dataclasses.dataclass(frozen=True)
class HaloPlan:
    """One rank's part of the exchange, in global sequence positions.

    The local chunk is [start, stop); the extended sequence covers [start - before, stop + after).
    `spans[t]` is the range input t actually needs (its window's reach, clipped to the sequence);
    rows of the extended sequence outside it are zero and never read by a real query.
    """

    start: int
    stop: int
    before: int
    after: int
    spans: tuple[tuple[int, int], ...]
    recv: tuple[Piece, ...]
    send: tuple[Piece, ...]

    @property
    def ext_len(self):
        return self.before + (self.stop - self.start) + self.after

    @property
    def ext_start(self):
        return self.start - self.before


def _nbytes(t):
    return t.numel() * t.element_size()


def _exchange(group, sends, recvs):
    """Post every send and receive as one batch and return the requests (nothing to wait on if empty).

    `sends` / `recvs` are (peer, tag, tensor). Messages between one pair of ranks are told
    apart by their tag (the input index), and both sides list them in the same order, which
    NCCL needs (it ignores tags).
    """
    ops = [dist.P2POp(dist.irecv, t, dist.get_global_rank(group, peer), group, tag) for peer, tag, t in recvs]
    ops += [dist.P2POp(dist.isend, t, dist.get_global_rank(group, peer), group, tag) for peer, tag, t in sends]
    return dist.batch_isend_irecv(ops) if ops else []


def _wait(requests):
    for request in requests:
        request.wait()


def _rows(x, lo, hi, origin):
    """Rows [lo, hi) in global positions of x [B, *, H, D] whose row 0 sits at global `origin`."""
    return x[:, lo - origin : hi - origin]


class HaloExchange(torch.autograd.Function):
    """Local chunks [B, n, H, D] (one per `plan.spans` entry) -> the same on the extended sequence of `plan`."""

    @staticmethod
    def forward(ctx, plan, group, *chunks):
        ctx.plan, ctx.group = plan, group
        sends = [(p.peer, p.tensor, _rows(chunks[p.tensor], p.lo, p.hi, plan.start).contiguous()) for p in plan.send]
        recvs = [(p.peer, p.tensor, _empty_rows(chunks[p.tensor], p.hi - p.lo)) for p in plan.recv]
        requests = _exchange(group, sends, recvs)
        STATS.halo_sent += sum(_nbytes(t) for _, _, t in sends)
        STATS.halo_received += sum(_nbytes(t) for _, _, t in recvs)
        # Assemble the local rows while the halo is in flight.
        exts = [_extend(x, span, plan) for x, span in zip(chunks, plan.spans, strict=True)]
        _wait(requests)
        for piece, (_, _, buf) in zip(plan.recv, recvs, strict=True):
            _rows(exts[piece.tensor], piece.lo, piece.hi, plan.ext_start).copy_(buf)
        return tuple(exts)

    @staticmethod
    def backward(ctx, *ext_grads):
        plan, group = ctx.plan, ctx.group
        # What arrived in forward goes back to its owner; what left comes back here.
        sends = [
            (p.peer, p.tensor, _rows(ext_grads[p.tensor], p.lo, p.hi, plan.ext_start).contiguous()) for p in plan.recv
        ]
        recvs = [(p.peer, p.tensor, _empty_rows(ext_grads[p.tensor], p.hi - p.lo)) for p in plan.send]
        requests = _exchange(group, sends, recvs)
        STATS.grad_sent += sum(_nbytes(t) for _, _, t in sends)
        STATS.grad_received += sum(_nbytes(t) for _, _, t in recvs)
        grads = [_rows(g, plan.start, plan.stop, plan.ext_start).clone() for g in ext_grads]
        _wait(requests)
        for piece, (_, _, buf) in zip(plan.send, recvs, strict=True):
            _rows(grads[piece.tensor], piece.lo, piece.hi, plan.start).add_(buf)
        return (None, None, *grads)


def _empty_rows(like, n):
    B, _, H, D = like.shape
    return like.new_empty((B, n, H, D))


def _extend(x, span, plan):
    """x's chunk placed in an extended-sequence buffer; rows outside `span` (never read) are zero.

    Rows of `span` outside the chunk are left for the received halo to fill.
    """
    B, _, H, D = x.shape
    ext = x.new_empty((B, plan.ext_len, H, D))
    lo, hi = span
    _rows(ext, plan.ext_start, min(lo, plan.start), plan.ext_start).zero_()
    _rows(ext, max(hi, plan.stop), plan.stop + plan.after, plan.ext_start).zero_()
    _rows(ext, plan.start, plan.stop, plan.ext_start).copy_(x)
    return ext
