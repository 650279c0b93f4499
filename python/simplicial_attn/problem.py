r"""A call's problem description: one small object from the public functions to every backend.

The public functions (api.py, varlen.py, kvcache.py) check their arguments, resolve `None`
windows and the default scale, and build one `Problem`; the op (_ops.py) hands it to the
backend, whose kernels read what they need from it. A new feature adds a field here, not an
argument to a dozen signatures.

Layouts (see backends.py for the shapes each backend function takes):

    batched   q [B, N, Hq, D]                 cu_seqlens None, cache_seqlens None
    packed    q [1, T, Hq, D]                 cu_seqlens [S + 1]: sequence s is rows [cu[s], cu[s+1])
    decoding  q [B, Nq, Hq, D], ring caches   cache_seqlens [B]: query t of sequence b is at
                                              position cache_seqlens[b] + t
"""

import dataclasses

import torch

LOGITS = ("trilinear", "determinant")


@dataclasses.dataclass(frozen=True)
class Problem:
    """What one attention call computes, beyond its tensors.

    w1, w2: kernel windows, ints >= 1 (`None` and windows longer than every sequence already
        turned into an equivalent integer by `_windows.kernel_window`).
    causal: trailing windows (True) or centred ones (False).
    scale: the logit scale (the default D ** -0.5 already applied).
    logits: "trilinear" (CONTRACT §1) or "determinant" (CONTRACT §8).
    cu_seqlens: packed layout only: int32 [S + 1], contiguous, on q's device (CONTRACT §6).
    max_seqlen: packed layout only: at least every sequence's length (bounds the kernels' grids).
    cache_seqlens: decoding only: int32 [B], contiguous, on q's device (CONTRACT §7).
    """

    w1: int
    w2: int
    causal: bool
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
        return (self.cu_seqlens, self.max_seqlen, self.w1, self.w2, self.causal, self.scale, self.logits)

    def decode_args(self):
        """The trailing arguments of the C++ fused_decode schema (csrc/ops.cpp)."""
        return (self.cache_seqlens, self.w1, self.w2, self.scale, self.logits)
