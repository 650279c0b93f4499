"""The torchtitan model: a Llama-style decoder whose every `simplicial_every`-th layer is 2-simplicial.

    tok_embeddings -> layers["0"], layers["1"], ... -> norm -> output
    layer: h = x + attention(attention_norm(x));  out = h + feed_forward(ffn_norm(h))

As `SimplicialForCausalLM` (simplicial_attn.hf): RMSNorm, SwiGLU (torchtitan's names w1, w3 in, w2
out), GQA, rotary embeddings and q/k norms; the attention is `TwoSimplicialAttention` in layers
l = k, 2k, ... (counting from 1) and `DotProductAttention` in the others. Layers sit in a ModuleDict
keyed "0", "1", ... as torchtitan's models do. Nothing here imports torchtitan: the spec
(`__init__.py`) wraps it.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.layer import TwoSimplicialAttention
from ...nn.sdpa import DotProductAttention

__all__ = ["SimplicialTitanArgs", "SimplicialTitanModel"]


@dataclasses.dataclass
class SimplicialTitanArgs:
    """The model's shape. `update_from_config` and `get_nparams_and_flops` are what torchtitan's
    trainer calls on its model arguments (the spec mixes in its BaseModelArgs)."""

    dim: int = 256
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int | None = None
    simplicial_kv_heads: int | None = None
    vocab_size: int = 256
    ffn_hidden: int | None = None  # default: 8/3 dim, a multiple of 64
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    qk_norm: bool = True
    simplicial_every: int = 4
    w1: int | None = 512
    w2: int | None = 32
    logits: str = "trilinear"
    backend: str = "auto"
    max_seq_len: int = 2048

    def update_from_config(self, job_config, **kwargs):
        self.max_seq_len = job_config.training.seq_len

    def get_nparams_and_flops(self, model, seq_len):
        """Parameters, and training FLOPs per token: 6 per weight (the embedding is a lookup), plus the
        attention: 6 * 2 * D per key of an SDPA layer (causal: seq_len / 2 on average) and 6 * 4 * D / 2 per
        (j, k) pair of a 2-simplicial layer's windows (CONTRACT §2 counts 4 D forward FLOPs per triple)."""
        nparams = sum(p.numel() for p in model.parameters())
        dense = 6 * (nparams - model.tok_embeddings.weight.numel())
        attention = 0
        head_dim = self.dim // self.n_heads
        for layer in range(1, self.n_layers + 1):
            if self.simplicial_every and layer % self.simplicial_every == 0:
                w1, w2 = (seq_len if w is None else min(w, seq_len) for w in (self.w1, self.w2))
                attention += 6 * 2 * head_dim * self.n_heads * w1 * w2
            else:
                attention += 6 * 2 * head_dim * self.n_heads * seq_len // 2
        return nparams, dense + attention


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1(x)) * w3(x))."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, args, layer):
        super().__init__()
        simplicial = bool(args.simplicial_every) and (layer + 1) % args.simplicial_every == 0
        common = dict(dim=args.dim, num_heads=args.n_heads, rope=args.rope_theta, qk_norm=args.qk_norm,
                      norm_eps=args.norm_eps)  # fmt: skip
        if simplicial:
            kv = args.simplicial_kv_heads if args.simplicial_kv_heads is not None else args.n_kv_heads
            self.attention = TwoSimplicialAttention(num_kv_heads=kv, w1=args.w1, w2=args.w2, logits=args.logits,
                                                    backend=args.backend, **common)  # fmt: skip
        else:
            self.attention = DotProductAttention(num_kv_heads=args.n_kv_heads, **common)
        hidden = args.ffn_hidden or 64 * -(-8 * args.dim // 3 // 64)
        self.feed_forward = FeedForward(args.dim, hidden)
        self.attention_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, positions=None):
        h = x + self.attention(self.attention_norm(x), positions)
        return h + self.feed_forward(self.ffn_norm(h))


class SimplicialTitanModel(nn.Module):
    """tokens [B, N] -> logits [B, N, vocab_size]. `positions` (torchtitan passes the chunk's under
    context parallelism): the tokens' positions, default 0 .. N-1."""

    def __init__(self, args):
        # nn.Module's own: the spec's subclass adds torchtitan's ModelProtocol, whose __init__ wants the args.
        nn.Module.__init__(self)
        self.model_args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleDict({str(i): Block(args, i) for i in range(args.n_layers)})
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)

    @torch.no_grad()
    def init_weights(self, buffer_device=None):
        """LeCun-normal linear layers (as the package's layers), unit-variance embeddings, unit norms, a head of
        unit gain from the normalised features. Works on sharded (DTensor) parameters, as torchtitan calls it
        after parallelizing the meta-device model."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=module.in_features**-0.5)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=1.0)
            elif isinstance(module, nn.RMSNorm) and module.weight is not None:
                nn.init.ones_(module.weight)

    def forward(self, tokens, positions=None, **kwargs):
        if positions is not None and positions.dim() == 2:
            positions = positions[0]  # every row of a batch sits at the same positions
        h = self.tok_embeddings(tokens)
        for layer in self.layers.values():
            h = layer(h, positions)
        return self.output(self.norm(h))
