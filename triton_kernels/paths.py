"""Path counters: which code paths of each kernel the interpreter ran (issue 13, "coverage you
can see"), per kernel and padded head dim (BLOCK_D).

Each kernel module names its paths once, `A, B = paths.slots(("fwd",), "a", "b")`, which gives
tl.constexpr slot indices. The kernel takes a COUNTS pointer and a COUNT_PATHS constexpr and,
where a path is taken,

    if COUNT_PATHS:
        tl.atomic_add(COUNTS + A, tl.where(taken, 1, 0))

(tl.where, not .to(): the interpreter runs `range` loops over Python ints, so a comparison
with the loop variable may be a plain bool). The launchers pass COUNTS = None and
COUNT_PATHS = False unless `recording()` is active under the interpreter, so on a GPU the
hook is never compiled and the argument is not even in the kernel's signature;
bench/verify/kernel_report.py checks that no compiled fused kernel holds an atomic instruction
(they are atomic-free by design, so an atom would be the hook or a bug).
"""

import collections
import contextlib

import torch
import triton.language as tl

# The paths every fused kernel counts, in its first slots (_common.count_common_paths):
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
COMMON_SLOTS = tuple(tl.constexpr(i) for i in range(len(COMMON)))

_NAMES = {}  # kernel name -> its path names, in slot order
_TABLE = None  # while recording: {(kernel, BLOCK_D): Counter of path name -> count}


def slots(kernels, *names, common=True):
    """Registers the paths of every kernel in `kernels`: COMMON (unless common=False), then
    `names`. Returns the slot indices of `names`."""
    first = len(COMMON) if common else 0
    for kernel in kernels:
        _NAMES[kernel] = (COMMON if common else ()) + names
    return tuple(tl.constexpr(first + i) for i in range(len(names)))


def names(kernel):
    """The paths of `kernel`, in slot order."""
    return _NAMES[kernel]


def kernels():
    return tuple(_NAMES)


def buffer(kernel, like):
    """The COUNTS argument of one launch: zeroed int32 slots while recording under the
    interpreter, else None."""
    from ._common import is_interpreting

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
