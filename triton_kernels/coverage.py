"""Path coverage: which code paths of each kernel the interpreter ran (issue 13, "coverage you
can see"), per kernel and padded head dim (BLOCK_D).

Each kernel module names its paths once, `A, B = coverage.slots(("fwd",), "a", "b")`, which gives
tl.constexpr slot indices, and counts a path where it is taken with one line:

    hit(COUNTS, A, taken, COUNT_PATHS)      # one visit when the scalar `taken` holds
    hits(COUNTS, B, rows, COUNT_PATHS)      # one per element of the mask `rows`

The launchers pass COUNTS = None and COUNT_PATHS = False unless `recording()` is active under
the interpreter, so on a GPU the hook is never compiled (nor its condition: dead code) and the
argument is not even in the kernel's signature; bench/verify/kernel_report.py checks that no compiled
fused kernel holds an atomic instruction (they are atomic-free by design, so an atom would be
the hook or a bug).
"""

import collections
import contextlib

import torch
import triton
import triton.language as tl

from .runtime import is_interpreting

# The paths every fused kernel counts, in its first slots (count_common):
#   last_tile     the program's tile reaches past its sequence's end (rows masked, zero-filled)
#   d_tail        D < BLOCK_D (channels past D masked, zero-filled)
#   gqa           more than one query head per kv head
#   causal        both windows end at the query (R1 = R2 = 0); centred: one reaches past it
#   packed        a tile of a packed sequence (cu_seqlens: per-row bounds from the kernel)
#   packed_edge   the last tile of a packed sequence that ends exactly at a tile edge
#   past_end      a program whose tile starts past its sequence's end (exits at once)
#   empty_seq     a program of an empty packed sequence
#   determinant   logits="determinant" (permuted-channel operands, cross products)
COMMON = (
    "last_tile", "d_tail", "gqa", "causal", "centred", "packed", "packed_edge", "past_end", "empty_seq", "determinant"
)  # fmt: skip
(P_LAST_TILE, P_D_TAIL, P_GQA, P_CAUSAL, P_CENTRED, P_PACKED, P_PACKED_EDGE, P_PAST_END, P_EMPTY_SEQ, P_DET) = tuple(
    tl.constexpr(i) for i in range(len(COMMON))
)

_NAMES = {}  # kernel name -> its path names, in slot order
_TABLE = None  # while recording: {(kernel, BLOCK_D): Counter of path name -> count}


@triton.jit
def hit(COUNTS, slot, taken, ON: tl.constexpr):
    """One visit of path `slot` where the scalar `taken` holds. (tl.where, not .to(): the
    interpreter runs `range` loops over Python ints, so `taken` may be a plain bool.)"""
    if ON:
        tl.atomic_add(COUNTS + slot, tl.where(taken, 1, 0))


@triton.jit
def hits(COUNTS, slot, taken, ON: tl.constexpr):
    """One visit of path `slot` per element of the mask `taken` (the rows of a tile that take it)."""
    if ON:
        tl.atomic_add(COUNTS + slot, tl.sum(tl.where(taken, 1, 0)))


@triton.jit
def count_common(
    COUNTS, tile0, n, D, GROUP, R1, R2,
    TILE: tl.constexpr, BLOCK_D: tl.constexpr, VARLEN: tl.constexpr, DET: tl.constexpr, ON: tl.constexpr,
):  # fmt: skip
    """COMMON for the program whose tile covers positions [tile0, tile0 + TILE) of a sequence of
    n rows (before its past-the-end exit)."""
    if ON:
        inside = tile0 < n
        tl.atomic_add(COUNTS + P_LAST_TILE, tl.where(inside & (tile0 + TILE > n), 1, 0))
        tl.atomic_add(COUNTS + P_PAST_END, tl.where(inside, 0, 1))
        tl.atomic_add(COUNTS + P_D_TAIL, tl.where(D < BLOCK_D, 1, 0))
        tl.atomic_add(COUNTS + P_GQA, tl.where(GROUP > 1, 1, 0))
        tl.atomic_add(COUNTS + P_CAUSAL, tl.where((R1 == 0) & (R2 == 0), 1, 0))
        tl.atomic_add(COUNTS + P_CENTRED, tl.where((R1 > 0) | (R2 > 0), 1, 0))
        if VARLEN:
            tl.atomic_add(COUNTS + P_PACKED, tl.where(inside, 1, 0))
            tl.atomic_add(COUNTS + P_PACKED_EDGE, tl.where(inside & (tile0 + TILE == n), 1, 0))
            tl.atomic_add(COUNTS + P_EMPTY_SEQ, tl.where(n == 0, 1, 0))
        if DET:
            tl.atomic_add(COUNTS + P_DET, 1)


def slots(kernels, *names, common=True):
    """Registers the paths of every kernel in `kernels`: COMMON (unless common=False), then
    `names`. Returns the slot indices of `names`.
    A kernel already registered (by an earlier module) gets `names` after its paths; every
    kernel in `kernels` must then have the same paths before them. Registering names a kernel
    already has (a module imported again) changes nothing."""
    firsts = set()
    for kernel in kernels:
        have = _NAMES.get(kernel, COMMON if common else ())
        again = [i for i in range(len(have) - len(names) + 1) if names and have[i : i + len(names)] == names]
        if again:
            firsts.add(again[0])
            continue
        firsts.add(len(have))
        _NAMES[kernel] = have + names
    if len(firsts) != 1:
        raise ValueError(f"kernels {kernels} have different paths before {names}")
    first = firsts.pop()
    return tuple(tl.constexpr(first + i) for i in range(len(names)))


def names(kernel):
    """The paths of `kernel`, in slot order."""
    return _NAMES[kernel]


def kernels():
    return tuple(_NAMES)


def buffer(kernel, like):
    """The COUNTS argument of one launch: zeroed int32 slots while recording under the
    interpreter, else None."""
    if _TABLE is None or not is_interpreting():
        return None
    return torch.zeros(len(_NAMES[kernel]), dtype=torch.int32, device=like.device)


def add(kernel, block_d, counts):
    """Adds one launch's `counts` (from `buffer`) to the table being recorded."""
    if counts is None or _TABLE is None:
        return
    table = _TABLE.setdefault((kernel, block_d), collections.Counter())
    for name, count in zip(_NAMES[kernel], counts.tolist(), strict=True):
        table[name] += count


@contextlib.contextmanager
def recording():
    """Records the paths of every launch inside the block into the dict it yields,
    {(kernel, BLOCK_D): Counter(path -> count)}. Only the interpreter counts."""
    global _TABLE
    outer, _TABLE = _TABLE, {}
    try:
        yield _TABLE
    finally:
        _TABLE = outer
