r"""A call's problem description: one small object from the ops to every backend (floor 0 of the package).

The torch.library ops (ops/library.py) check a call, turn the user's windows into bands
(`window_band`, the one place that does), resolve the default scale and build one `Problem`,
which they hand to the backend, whose kernels read what they need from it. A new feature adds a
field here (and to csrc/include/problem.h), not an argument to a dozen signatures.

A window is a band of positions around its query, per key axis (k1/v1 the j axis, k2/v2 the k
axis): query i sees [i - left, i + right], clipped to its sequence.

    causal w=4, i=6  band (3, 0)        centred w=4, i=6  band (2, 1)
    pos  0 1 2 3 4 5 6 7 8              pos  0 1 2 3 4 5 6 7 8
               [# # # #]                             [# # # #]
                       ^ i                               ^ i

Layouts (see backends/__init__.py for the shapes each backend function takes):

    batched   q [B, N, Hq, D]                 cu_seqlens None, cache_seqlens None
    packed    q [1, T, Hq, D]                 cu_seqlens [S + 1]: sequence s is rows [cu[s], cu[s+1])
    decoding  q [B, Nq, Hq, D], ring caches   cache_seqlens [B]: query t of sequence b is at
                                              position cache_seqlens[b] + t
"""

import dataclasses
from typing import NamedTuple

import torch

LOGITS = ("trilinear", "determinant")


def compute_dtype(dtype):
    """Accumulation dtype for inputs of `dtype`, which is also the dtype of lse and of the scores
    (CONTRACT §1: float32; float64 for float64 inputs so gradcheck stays sharp)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class Band(NamedTuple):
    """The key window of query i on one axis: positions [i - left, i + right] (clipped to the
    sequence), `left + right + 1` wide."""

    left: int
    right: int

    @property
    def width(self):
        return self.left + self.right + 1

    def clipped(self, longest):
        """The band with neither reach past longest - 1: the same in-sequence positions for
        sequences of at most `longest` rows (csrc/include/problem.h has the C++ twin)."""
        reach = max(longest - 1, 0)
        return Band(min(self.left, reach), min(self.right, reach))


def window_band(w, causal, longest=None):
    """The band of user window `w` (an int >= 1, or None: unbounded on the allowed side).

    causal w: (w - 1, 0) (the paper's trailing window); centred w: (w // 2, w - 1 - w // 2).
    With `longest` (the longest sequence's length) None resolves against it, causal (L - 1, 0),
    centred (L - 1, L - 1), and neither reach exceeds L - 1: the band then holds the same pairs
    of every sequence as the window, with kernel arithmetic that stays small. Without `longest`
    the band is the window's own (an int window only).
    """
    if w is None:
        if longest is None:
            raise ValueError("an unbounded (None) window needs the longest sequence to become a band")
        w = max(2 * longest - 1, 1)
    band = Band(w - 1, 0) if causal else Band(w // 2, w - 1 - w // 2)
    return band if longest is None else band.clipped(longest)


@dataclasses.dataclass(frozen=True)
class WindowAxis:
    """One window axis of the unfused scores [B, Hq, N, W1, W2] (backends/scores_reference.py):
    `size` slots, slot a of query i is position start(i) + a."""

    size: int
    slide: int  # 1: the window moves with the query; 0: fixed (absolute positions)
    lo: int

    def start(self, i):
        return self.slide * i - self.lo


def window_axis(w, n, causal):
    """The scores' axis of user window `w` (int >= 1 or None) for sequence length n: the window's
    band, a slot per position (unclipped: an int window keeps w slots even past the sequence),
    except that a centred unbounded window is the sequence itself (size n, absolute positions;
    csrc/include/scores_window.h is the C++ twin)."""
    if w is None and not causal:
        return WindowAxis(n, 0, 0)
    band = window_band(w, causal, n if w is None else None)
    return WindowAxis(band.width, 1, band.left)


@dataclasses.dataclass(frozen=True)
class Problem:
    """What one attention call computes, beyond its tensors.

    band1, band2: the bands of the k1/v1 (j) and k2/v2 (k) windows (`window_band`; reaches
        >= 0, already clipped to the longest sequence; decoding: causal, right == 0).
    scale: the logit scale (the default D ** -0.5 already applied).
    logits: "trilinear" (CONTRACT §1) or "determinant" (CONTRACT §8).
    cu_seqlens: packed layout only: int32 [S + 1], contiguous, on q's device (CONTRACT §6).
    max_seqlen: packed layout only: at least every sequence's length (bounds the kernels' grids).
    cache_seqlens: decoding only: int32 [B], contiguous, on q's device (CONTRACT §7).
    """

    band1: Band
    band2: Band
    scale: float
    logits: str = "trilinear"
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0
    cache_seqlens: torch.Tensor | None = None

    @property
    def packed(self):
        return self.cu_seqlens is not None

    def fused_args(self):
        """The trailing arguments of the C++ fused_fwd / fused_bwd schemas (csrc/ops.cpp)."""
        return (self.cu_seqlens, self.max_seqlen, *self.band1, *self.band2, self.scale, self.logits)

    def decode_args(self):
        """The trailing arguments of the C++ fused_decode schema (csrc/ops.cpp)."""
        return (self.cache_seqlens, *self.band1, *self.band2, self.scale, self.logits)
