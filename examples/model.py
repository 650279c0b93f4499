"""A small decoder that interleaves standard causal attention with 2-simplicial attention.

Layer l (counting from 1) is 2-simplicial when l is a multiple of `simplicial_every`; the
others use SDPA. Roy et al. 2025 interleave one 2-simplicial layer every 4 layers, which is
the default here. `simplicial_every=0` gives a plain (all-SDPA) transformer, and
`simplicial_every=1` an all-2-simplicial one.

Shared by match3.py and train_code.py, which also use `count_parameters` and
`mlp_hidden_for_budget` to give the two models they compare the same parameter count.

The decoder takes a batch [B, N] or packed token streams [T] with cu_seqlens (documents of
different lengths in one row, no window across them), and generates with rolling caches:
`generate` prefills each prompt into per-layer caches (ring buffers for the 2-simplicial layers
and for windowed SDPA layers, a linear cache for full-causal SDPA layers), then samples token by
token; each step costs the same however long the generation gets.
"""

import math
import time

import torch
from torch import nn

from simplicial_attn.nn.layer import SimplicialTransformerBlock


class Decoder(nn.Module):
    """Token embedding -> blocks -> RMSNorm -> linear head. [B, N] int64 -> [B, N, num_outputs] logits.

    Args:
        vocab_size: input tokens are 0 .. vocab_size - 1.
        dim, depth, num_heads, num_kv_heads: width, number of blocks, query and kv heads of
            the SDPA layers.
        simplicial_every: which layers are 2-simplicial (see the module docstring).
        simplicial_kv_heads: kv heads of the 2-simplicial layers (default num_kv_heads); fewer
            kv heads keep their five-way projection near an SDPA layer's size.
        w1, w2: windows of the 2-simplicial layers; window: trailing window of the SDPA layers
            (None: full causal).
        rope, qk_norm, mlp_hidden, logits: as in `SimplicialTransformerBlock` (logits: of the
            2-simplicial layers).
        simplicial_rope: RoPE of the 2-simplicial layers if it should differ from `rope` (False:
            none; the SDPA layers keep `rope`).
        simplicial_head_dim: head dim of the 2-simplicial layers (default dim // num_heads).
        num_outputs: head width, default vocab_size (a language model).
    """

    def __init__(
        self,
        vocab_size,
        dim=128,
        depth=4,
        num_heads=4,
        num_kv_heads=None,
        simplicial_every=4,
        simplicial_kv_heads=None,
        w1=64,
        w2=16,
        window=None,
        rope=True,
        qk_norm=True,
        mlp_hidden=None,
        num_outputs=None,
        backend="auto",
        logits="trilinear",
        simplicial_rope=None,
        simplicial_head_dim=None,
    ):
        super().__init__()
        num_outputs = vocab_size if num_outputs is None else num_outputs
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList()
        for layer in range(1, depth + 1):
            simplicial = bool(simplicial_every) and layer % simplicial_every == 0
            kv_heads = simplicial_kv_heads if simplicial and simplicial_kv_heads is not None else num_kv_heads
            block = SimplicialTransformerBlock(
                dim,
                num_heads,
                kv_heads,
                head_dim=simplicial_head_dim if simplicial else None,
                simplicial=simplicial,
                w1=w1,
                w2=w2,
                window=window,
                rope=rope if not simplicial or simplicial_rope is None else simplicial_rope,
                qk_norm=qk_norm,
                mlp_hidden=mlp_hidden,
                backend=backend,
                logits=logits,
            )
            # GPT-2's residual scaling: each block's output projections start 1/sqrt(2 depth) smaller,
            # so the residual stream's variance does not grow with depth at init.
            for proj in (block.attn.out_proj, block.mlp.down):
                proj.weight.data.mul_((2 * depth) ** -0.5)
            self.blocks.append(block)
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_outputs, bias=False)
        # Unit-RMS embeddings; a head of unit gain from the normalised features (unit-variance logits).
        nn.init.normal_(self.embed.weight, std=1.0)
        nn.init.normal_(self.head.weight, std=dim**-0.5)

    @property
    def layer_kinds(self):
        """'S' for a 2-simplicial block, 'A' for an SDPA block, in order (e.g. 'AAAS')."""
        return "".join("S" if b.simplicial else "A" for b in self.blocks)

    def forward(self, tokens, *, cu_seqlens=None, max_seqlen=None, caches=None):
        """tokens [B, N] -> logits [B, N, num_outputs]; packed tokens [T] with cu_seqlens -> [T, ...];
        with `caches` (from `new_caches`) tokens [B, n] are the next n of B sequences being generated."""
        x = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            cache = None if caches is None else caches[i]
            x = block(x, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, cache=cache)
        return self.head(self.norm(x))

    def new_caches(self, batch_size, max_length, max_chunk=1):
        """One cache per block for `batch_size` sequences of up to `max_length` tokens, fed at most
        `max_chunk` tokens per call: ring buffers where a window bounds what a layer reads."""
        return [b.new_cache(batch_size, max_chunk=max_chunk, max_length=max_length) for b in self.blocks]

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, generator=None, prefill_chunk=256):
        """Continues each prompt by `max_new_tokens` sampled tokens.

        Args:
            prompt_ids: [B, P] int64, or a list of 1-D int64 tensors of different lengths (>= 1).
            temperature: 0 -> greedy; else sample from softmax(logits / temperature).
            top_k: sample among the k most likely tokens only (None: all).
            generator: a torch.Generator for reproducible sampling.
            prefill_chunk: prompt tokens per prefill call (bounds the caches' ring sizes).
        Returns a list of 1-D tensors: prompt + continuation per sequence.
        """
        prompts = list(prompt_ids) if not isinstance(prompt_ids, torch.Tensor) else list(prompt_ids.unbind(0))
        if not prompts or any(p.dim() != 1 or p.numel() < 1 for p in prompts):
            raise ValueError("prompt_ids must be [B, P] or a list of non-empty 1-D token tensors")
        was_training = self.training
        self.eval()
        device = self.embed.weight.device
        longest = max(p.numel() for p in prompts)
        chunk = max(1, min(prefill_chunk, longest))
        caches = self.new_caches(len(prompts), longest + max_new_tokens, max_chunk=chunk)
        last = []
        for b, prompt in enumerate(prompts):  # prefill one sequence at a time: lengths differ
            views = [c.narrow(b, 1) for c in caches]
            for s in range(0, prompt.numel(), chunk):
                logits = self(prompt[None, s : s + chunk].to(device), caches=views)
            last.append(logits[0, -1])
        outputs = [[p.to(device)] for p in prompts]
        logits = torch.stack(last)
        for step in range(max_new_tokens):
            token = sample(logits, temperature, top_k, generator)
            for b in range(len(prompts)):
                outputs[b].append(token[b : b + 1])
            if step + 1 < max_new_tokens:
                logits = self(token[:, None], caches=caches)[:, -1]
        self.train(was_training)
        return [torch.cat(parts) for parts in outputs]


def sample(logits, temperature=1.0, top_k=None, generator=None):
    """One token per row of logits [B, V]: greedy at temperature 0, else a (top-k) softmax sample."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def lr_at(step, args):
    """The schedule both examples train with (args.steps, args.lr): linear warm-up over the
    first 5% of steps, then cosine decay to 10% of the peak."""
    warm = max(1, args.steps // 20)
    if step < warm:
        return args.lr * (step + 1) / warm
    t = (step - warm) / max(1, args.steps - warm)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def count_parameters(model):
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def mlp_hidden_for_budget(build, target):
    """The MLP width h for which count_parameters(build(h)) is closest to `target` (binary search).

    Used to give the baseline the 2-simplicial model's parameter budget: the only knob it
    turns is the MLP width, so both models keep the same depth, width and heads.
    """
    lo, hi = 1, 1
    while count_parameters(build(hi)) < target:
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_parameters(build(mid)) < target:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda h: abs(count_parameters(build(h)) - target))


class Progress:
    """A one-line progress bar on stderr-like streams (tqdm is not a dependency).

    Redraws in place with '\\r' when the stream is a terminal, and otherwise prints a plain
    line every `every` steps so logs stay readable.
    """

    def __init__(self, total, label, stream=None, every=None, width=28):
        import sys

        self.total, self.label, self.width = total, label, width
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self.every = every if every is not None else max(1, total // 10)
        self.start = time.perf_counter()

    def update(self, step, **metrics):
        """Report that `step` (1-based) of `total` steps is done, with optional metrics to show."""
        if not self.tty and step % self.every != 0 and step != self.total:
            return
        done = int(self.width * step / self.total)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / step * (self.total - step)
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        bar = "#" * done + "." * (self.width - done)
        line = f"{self.label} [{bar}] {step}/{self.total} {elapsed:5.0f}s eta {eta:4.0f}s {shown}"
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        if self.tty and step == self.total:
            self.stream.write("\n")
        self.stream.flush()
