"""The rolling caches of one 2-simplicial attention layer (CONTRACT §7; the ring layout is
ops/kvcache.py's): the rings, the lengths, and the bookkeeping generation needs."""

import torch

from ..ops import checks
from ..ops.kvcache import two_simplicial_attention_with_kvcache


class SimplicialCache:
    """The rolling caches of one 2-simplicial attention layer for a batch of sequences.

    k1/v1 rings of `w1 + max_chunk - 1` slots and k2/v2 rings of `w2 + max_chunk - 1` slots, so any
    call with up to `max_chunk` new tokens (a decode step: 1; a prompt chunk: more) is served; a
    `None` window needs `max_length` (a linear cache of that many slots). `lengths` (int32 [B],
    on the cache's device) counts each sequence's tokens; `attend` advances it.

        cache = SimplicialCache(batch_size=2, num_kv_heads=2, head_dim=64, w1=512, w2=32, max_chunk=128)
        out = cache.attend(q, k1, k2, v1, v2)          # [B, Nq, Hq, D], Nq <= 128; lengths += Nq

    Memory: 2 * (C1 + C2) * B * Hkv * D elements, whatever the generated length.
    """

    def __init__(
        self,
        batch_size,
        num_kv_heads,
        head_dim,
        w1=512,
        w2=32,
        *,
        max_chunk=1,
        max_length=None,
        dtype=torch.float32,
        device=None,
    ):
        for name, value in (("batch_size", batch_size), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        checks.check_window("w1", w1)
        checks.check_window("w2", w2)
        checks.check_window("max_chunk", max_chunk)
        if max_length is not None:
            checks.check_window("max_length", max_length)
        if (w1 is None or w2 is None) and max_length is None:
            raise ValueError(
                "a None window reads the whole sequence: pass max_length (a linear cache of that many slots)"
            )
        if dtype not in checks.FLOAT_DTYPES:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        self.w1, self.w2, self.max_chunk = w1, w2, max_chunk

        def ring(w):
            slots = max_length if w is None else w + max_chunk - 1
            return slots if max_length is None else min(slots, max_length)

        self.c1, self.c2 = ring(w1), ring(w2)
        shape1 = (batch_size, self.c1, num_kv_heads, head_dim)
        shape2 = (batch_size, self.c2, num_kv_heads, head_dim)
        self.k1 = torch.zeros(shape1, dtype=dtype, device=device)
        self.v1 = torch.zeros(shape1, dtype=dtype, device=device)
        self.k2 = torch.zeros(shape2, dtype=dtype, device=device)
        self.v2 = torch.zeros(shape2, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.int32, device=device)

    @property
    def batch_size(self):
        return self.k1.shape[0]

    def positions(self, n):
        """The absolute positions [B, n] of the next n tokens of every sequence (for RoPE)."""
        return self.lengths.long()[:, None] + torch.arange(n, device=self.lengths.device)

    def attend(self, q, k1, k2, v1, v2, *, scale=None, logits="trilinear", backend="auto", return_lse=False):
        """Writes the new tokens' k1 .. v2 ([B, Nq, Hkv, D]), attends with q ([B, Nq, Hq, D]) and
        advances `lengths` by Nq. Returns out [B, Nq, Hq, D] (and lse with return_lse)."""
        if q.dim() == 4 and q.shape[1] > self.max_chunk:
            raise ValueError(f"q has Nq = {q.shape[1]} new tokens, more than this cache's max_chunk = {self.max_chunk}")
        result = two_simplicial_attention_with_kvcache(
            q, self.k1, self.k2, self.v1, self.v2, self.lengths, k1, k2, v1, v2, self.w1, self.w2,
            scale=scale, logits=logits, return_lse=return_lse, backend=backend,
        )  # fmt: skip
        self.lengths += q.shape[1]
        return result

    @property
    def dtype(self):
        return self.k1.dtype

    def narrow(self, start, length):
        """A cache of sequences start .. start + length - 1 that shares this one's storage, so a
        batch's prompts of different lengths can be prefilled one at a time."""
        view = object.__new__(SimplicialCache)
        view.w1, view.w2, view.max_chunk, view.c1, view.c2 = self.w1, self.w2, self.max_chunk, self.c1, self.c2
        for name in ("k1", "k2", "v1", "v2", "lengths"):
            setattr(view, name, getattr(self, name).narrow(0, start, length))
        return view

    def clone(self):
        """An independent copy (the same slots and lengths in new storage)."""
        copy = self.narrow(0, self.batch_size)
        for name in ("k1", "k2", "v1", "v2", "lengths"):
            setattr(copy, name, getattr(self, name).clone())
        return copy

    def reorder(self, index):
        """Keeps sequences `index` (a [B'] long tensor) in that order (beam search, dropping finished rows)."""
        for name in ("k1", "k2", "v1", "v2", "lengths"):
            setattr(self, name, getattr(self, name).index_select(0, index.to(self.lengths.device)))

    def reset(self):
        """Empties every sequence (lengths to 0); the slots are overwritten as tokens arrive."""
        self.lengths.zero_()

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in (self.k1, self.k2, self.v1, self.v2))

    def __repr__(self):
        return (
            f"SimplicialCache(batch_size={self.batch_size}, w1={self.w1}, w2={self.w2}, slots=({self.c1}, {self.c2}), "
            f"max_chunk={self.max_chunk}, dtype={self.k1.dtype}, {self.nbytes() / 2**20:.2f} MiB)"
        )
