r"""The generation cache of `SimplicialForCausalLM`: a `transformers.Cache` of the package's own caches.

One layer per decoder layer:

    2-simplicial layer   TwoSimplicialCacheLayer: a `simplicial_attn.SimplicialCache`, ring buffers
                         of w + max_chunk - 1 slots that never grow (a linear cache of
                         `max_length` slots where a window is None)
    SDPA layer           DotProductCacheLayer: a linear `DotProductCache` of keys and values
                         (after RoPE), grown by doubling as the sequences get longer

Every sequence has its own length (`lengths`, int32 [B]): a cache holds each row's real tokens
only, never its padding (see padding.py), so the rows of a batch of prompts of different lengths
sit at different positions. `get_seq_length()` is what transformers means by it: the columns of
input (padding included) the cache has consumed, which `generate()` uses to slice its inputs.

The caches are made lazily, at the first forward, from the attention modules themselves
(`new_cache`), in the model's dtype and on its device. They serve inference only: the decoding
kernels have no backward.
"""

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

# Prompt tokens per call into a 2-simplicial ring: rings have w + PREFILL_CHUNK - 1 slots, and a
# longer prompt is fed in pieces (exact: the layers are causal).
PREFILL_CHUNK = 256


class _LayerCache(CacheLayerMixin):
    """What both kinds of layer share: the package cache object (`cache`, None until the first
    forward) and the columns consumed (`seen`)."""

    is_compileable = False
    is_croppable = False
    supports_early_init = False  # made from the attention module at the first forward

    def __init__(self, max_length=None, max_chunk=PREFILL_CHUNK):
        super().__init__()
        self.cache = None
        self.seen = 0
        self.max_length, self.max_chunk = max_length, max_chunk

    def __repr__(self):
        return f"{type(self).__name__}({self.cache!r}, seen={self.seen})"

    def prepare(self, attn, batch, new, dtype, device):
        """Makes the cache at the first call; checks the batch of later ones."""
        if self.cache is None:
            self.cache = self._make(attn, batch, new, dtype, device)
            self.is_initialized = True
        elif self.cache.lengths.shape[0] != batch:
            raise ValueError(
                f"the cache holds {self.cache.lengths.shape[0]} sequences, this call has batch {batch}: a cache "
                "serves the batch it was filled with (reorder_cache / batch_select_indices change it)"
            )

    def _make(self, attn, batch, new, dtype, device):
        raise NotImplementedError

    def lazy_initialization(self, key_states, value_states):
        raise TypeError(f"{type(self).__name__} is made from its attention module at the first forward")

    def update(self, key_states, value_states, *args, **kwargs):
        raise TypeError(
            f"{type(self).__name__} is filled by its layer (SimplicialForCausalLM), not through update(key, value)"
        )

    def get_seq_length(self):
        return self.seen

    def get_mask_sizes(self, query_length):
        return self.seen + query_length, 0

    def get_max_length(self):
        return -1

    def reset(self):
        if self.cache is not None:
            self.cache.lengths.zero_()
        self.seen = 0

    def crop(self, tokens_to_remove):
        if tokens_to_remove != 0:
            raise ValueError(
                "SimplicialModelCache cannot be cropped: its rings have already overwritten what a rollback would "
                "need (assisted generation and other rollbacks are not supported)"
            )

    def reorder_cache(self, beam_idx):
        if self.cache is not None:
            self._select(beam_idx.to(self.cache.lengths.device))

    def batch_repeat_interleave(self, repeats):
        if self.cache is not None:
            rows = torch.arange(self.cache.lengths.shape[0], device=self.cache.lengths.device)
            self._select(rows.repeat_interleave(repeats))

    def batch_select_indices(self, indices):
        self.reorder_cache(indices)

    def _select(self, index):
        raise NotImplementedError


class TwoSimplicialCacheLayer(_LayerCache):
    """The `SimplicialCache` of one 2-simplicial layer (rings that never grow)."""

    def _make(self, attn, batch, new, dtype, device):
        unbounded = attn.w1 is None or attn.w2 is None
        self.is_sliding = not unbounded
        return attn.new_cache(batch, max_chunk=self.max_chunk, max_length=self.max_length if unbounded else None,
                              dtype=dtype, device=device)  # fmt: skip

    def prepare(self, attn, batch, new, dtype, device):
        super().prepare(attn, batch, new, dtype, device)
        if not self.is_sliding and self.seen + new > self.max_length:
            raise ValueError(
                f"a 2-simplicial layer with an unbounded window (w1={attn.w1}, w2={attn.w2}) keeps a linear cache of "
                f"max_length = {self.max_length} tokens; this call would reach {self.seen + new} (raise "
                "max_position_embeddings, or the max_length of SimplicialModelCache)"
            )

    def get_max_length(self):
        return -1 if self.cache is None or self.is_sliding else self.max_length

    def _select(self, index):
        self.cache.reorder(index)


class DotProductCacheLayer(_LayerCache):
    """The `DotProductCache` of one SDPA layer: linear (full causal attention), grown by doubling."""

    def prepare(self, attn, batch, new, dtype, device):
        super().prepare(attn, batch, new, dtype, device)
        slots = self.cache.k.shape[1]
        # seen + new bounds every row's length (a row holds at most every column it was given).
        if self.seen + new > slots:
            grown = attn.new_cache(batch, max_length=max(self.seen + new, 2 * slots), dtype=dtype, device=device)
            grown.k[:, :slots] = self.cache.k
            grown.v[:, :slots] = self.cache.v
            grown.lengths.copy_(self.cache.lengths)
            self.cache = grown

    def _make(self, attn, batch, new, dtype, device):
        return attn.new_cache(batch, max_length=max(new, self.max_length or 0), dtype=dtype, device=device)

    def _select(self, index):
        c = self.cache
        c.k, c.v, c.lengths = (t.index_select(0, index) for t in (c.k, c.v, c.lengths))


class SimplicialModelCache(Cache):
    """The cache `generate()` uses for a `SimplicialForCausalLM` (it makes one itself; pass your own
    to continue a generation or to size it).

    Args:
        config: the model's `SimplicialConfig` (which layers are 2-simplicial).
        max_length: tokens per sequence the SDPA caches start with (they grow beyond it) and the
            size of a 2-simplicial linear cache (a None window; default `max_position_embeddings`).
        max_chunk: prompt tokens per call into the 2-simplicial rings (their size is w + max_chunk - 1).
    """

    def __init__(self, config, max_length=None, max_chunk=PREFILL_CHUNK):
        layers = []
        for kind in config.layer_kinds:
            if kind == "S":
                cap = config.max_position_embeddings if max_length is None else max_length
                layers.append(TwoSimplicialCacheLayer(max_length=cap, max_chunk=max_chunk))
            else:
                layers.append(DotProductCacheLayer(max_length=max_length, max_chunk=max_chunk))
        super().__init__(layers=layers)
        self.max_chunk = max_chunk

    def prepare(self, attention_modules, batch, new, dtype, device):
        """Before a forward of `new` columns: every layer's cache made (or grown) to take them."""
        for layer, attn in zip(self.layers, attention_modules, strict=True):
            layer.prepare(attn, batch, new, dtype, device)

    def advance(self, new):
        """After a forward: `new` more columns consumed."""
        for layer in self.layers:
            layer.seen += new

    def views(self, row=None):
        """The package cache objects of every layer, or views of one row of them (`narrow`)."""
        return [layer.cache if row is None else layer.cache.narrow(row, 1) for layer in self.layers]

    @property
    def lengths(self):
        """Real tokens held per sequence (int32 [B]), or None before the first forward."""
        return self.layers[0].cache.lengths if self.layers and self.layers[0].cache is not None else None

    @property
    def batch_size(self):
        lengths = self.lengths
        return -1 if lengths is None else lengths.shape[0]
