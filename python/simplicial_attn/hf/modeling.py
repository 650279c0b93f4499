r"""SimplicialModel / SimplicialForCausalLM: a Llama-style decoder with 2-simplicial layers, for transformers.

    embed_tokens -> layers -> norm (-> lm_head)
    layer: h = x + attn(RMSNorm(x));  out = h + SwiGLU(RMSNorm(h))
    attn:  `simplicial_attn.TwoSimplicialAttention` in every `simplicial_every`-th layer,
           `simplicial_attn.nn.sdpa.DotProductAttention` (scaled_dot_product_attention) in the others

Three ways through the layers, one result:

    no cache        training, scoring, generate(use_cache=False): the whole sequence at once
    cache, no pad   generate()'s decoding steps and unpadded prompts: the batch in one call per layer,
                    each layer reading and advancing its rolling cache (cache.py)
    cache, padding  padded prompts: each row's real tokens alone, through narrowed views of the caches

Padding never enters a window (padding.py): each row is its real tokens, and the k-th of them is
at position k, so positions come from attention_mask and the cache, not from `position_ids`.
"""

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import can_return_tuple

from ..nn.layer import TwoSimplicialAttention
from ..nn.sdpa import DotProductAttention
from . import padding
from .cache import SimplicialModelCache
from .configuration import SimplicialConfig

# Arguments transformers' own models take that this one refuses, with the reason.
_REFUSED = {
    "position_ids": "positions come from attention_mask (the k-th real token of a row is at position k) and the cache",
    "output_attentions": "the fused kernels never form attention weights (simplicial_attn.attention_weights does)",
    "output_hidden_states": "per-layer hidden states are not returned",
}


class SimplicialMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, config):
        super().__init__()
        dim, hidden, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def attention_for(config, layer_idx):
    """The attention module of layer `layer_idx` (0-based): 2-simplicial or SDPA, per `config.layer_kinds`."""
    common = dict(
        dim=config.hidden_size,
        num_heads=config.num_attention_heads,
        head_dim=config.head_dim,
        causal=True,
        qk_norm=config.qk_norm,
        bias=config.attention_bias,
        norm_eps=config.rms_norm_eps,
    )
    if config.layer_kinds[layer_idx] == "S":
        return TwoSimplicialAttention(
            num_kv_heads=config.simplicial_num_key_value_heads,
            w1=config.w1,
            w2=config.w2,
            rope=config.rope_theta if config.simplicial_rope else None,
            backend=config.simplicial_backend,
            logits=config.simplicial_logits,
            **common,
        )
    return DotProductAttention(num_kv_heads=config.num_key_value_heads, rope=config.rope_theta, **common)


class SimplicialDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: h = x + attn(norm(x)), then h + mlp(norm(h)). [B, N, hidden] -> [B, N, hidden].

    `cache`: the layer's package cache (`SimplicialCache` / `DotProductCache`, or a one-row view of it);
    x then holds the next tokens of the cached sequences.
    """

    def __init__(self, config, layer_idx):
        super().__init__()
        self.is_simplicial = config.layer_kinds[layer_idx] == "S"
        self.self_attn = attention_for(config, layer_idx)
        self.mlp = SimplicialMLP(config)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, cache=None):
        h = hidden_states + self.self_attn(self.input_layernorm(hidden_states), cache=cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class SimplicialPreTrainedModel(PreTrainedModel):
    config_class = SimplicialConfig
    config: SimplicialConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SimplicialDecoderLayer"]
    # Rings cannot roll back to an earlier token: no assisted generation (transformers checks this flag).
    _is_stateful = True

    @torch.no_grad()
    def _init_weights(self, module):
        """LeCun-normal linear layers (unit-variance q, k1, k2 and trilinear logits, as the package's
        layers), N(0, 1) embeddings (the head's std when tied to it), unit norms. `init.*` skips
        tensors loaded from a checkpoint."""
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, std=module.in_features**-0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            tied = self.config.tie_word_embeddings
            init.normal_(module.weight, std=module.embedding_dim**-0.5 if tied else 1.0)
        elif isinstance(module, nn.RMSNorm) and module.weight is not None:
            init.ones_(module.weight)


def _refuse(kwargs):
    for name, why in _REFUSED.items():
        if kwargs.get(name) is not None and kwargs.get(name) is not False:
            raise ValueError(f"SimplicialModel does not take {name}: {why}")


class SimplicialModel(SimplicialPreTrainedModel):
    """The decoder without its head: input_ids [B, N] -> last_hidden_state [B, N, hidden] (after the final norm).

    forward(input_ids=None, attention_mask=None, cache=None, inputs_embeds=None, use_cache=None):
        attention_mask: [B, N] (or [B, cached + N] with a cache) of 0/1; 0 marks padding, on either side.
        cache: a `SimplicialModelCache` holding the sequences being continued; use_cache=True makes one
            when none is given (default False: a plain forward runs the training kernels). The cache
            serves inference only: call it under torch.no_grad() (generate() does).
    """

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(SimplicialDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, cache=None, inputs_embeds=None, use_cache=None, **kwargs):
        _refuse(kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids [B, N] and inputs_embeds [B, N, hidden]")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if x.dim() != 3:
            raise ValueError(f"input_ids must be [B, N] (inputs_embeds [B, N, hidden]), got {tuple(x.shape[:-1])}")
        if use_cache and cache is None:
            cache = SimplicialModelCache(self.config)
        if cache is None:
            hidden = self._forward_whole(x, padding.check_mask(attention_mask, x.shape[0], x.shape[1], 0))
        else:
            hidden = self._forward_cached(x, attention_mask, cache)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), cache=cache)

    def _forward_whole(self, x, mask):
        """Every token at once; padded rows are gathered real-tokens-first (static shapes: compiles)."""
        if mask is not None and any(getattr(layer.self_attn, "context_parallel_group", None) for layer in self.layers):
            # Under context parallelism x is one rank's chunk of each row: moving real tokens first would
            # move them between ranks.
            raise ValueError(
                "a SimplicialModel under context parallelism (simplicial_attn.parallel) takes unpadded rows: pass "
                "attention_mask=None (and labels -100 where a row should not count)"
            )
        if mask is not None:
            x = padding.take(x, padding.real_first(mask))
        for layer in self.layers:
            x = layer(x)
        return x if mask is None else padding.take(x, padding.back_index(mask))

    def _forward_cached(self, x, attention_mask, cache):
        if not isinstance(cache, SimplicialModelCache):
            raise TypeError(
                f"cache must be a SimplicialModelCache (generate() makes one; or SimplicialModelCache(model.config)), "
                f"got {type(cache).__name__}"
            )
        if torch.is_grad_enabled():
            raise RuntimeError(
                "the generation cache serves inference only (its kernels have no backward): call the model under "
                "torch.no_grad() or torch.inference_mode(), or pass use_cache=False"
            )
        B, N = x.shape[:2]
        mask = padding.check_mask(attention_mask, B, N, cache.get_seq_length())
        cache.prepare([layer.self_attn for layer in self.layers], B, N, x.dtype, x.device)
        if mask is None or bool(mask.all()):
            hidden = self._through_caches(x, cache.views(), cache.max_chunk)
        else:  # padded prompts: each row's real tokens alone, into its own rows of the caches
            compact = padding.take(x, padding.real_first(mask))
            out = torch.zeros_like(compact)
            for b, n in enumerate(mask.sum(1).tolist()):
                if n:
                    out[b : b + 1, :n] = self._through_caches(compact[b : b + 1, :n], cache.views(b), cache.max_chunk)
            hidden = padding.take(out, padding.back_index(mask))
        cache.advance(N)
        return hidden

    def _through_caches(self, x, caches, max_chunk):
        """The next tokens x [B, n] of the cached sequences through every layer, in pieces of <= max_chunk
        tokens (the rings' chunk size; exact, as every layer is causal)."""
        pieces = []
        for piece in x.split(max_chunk, dim=1):
            for layer, c in zip(self.layers, caches, strict=True):
                piece = layer(piece, cache=c)
            pieces.append(piece)
        return torch.cat(pieces, dim=1)


class SimplicialForCausalLM(SimplicialPreTrainedModel, GenerationMixin):
    """SimplicialModel with a language-model head: logits [B, N, vocab_size], and the loss when labels are given.

    generate() decodes with a `SimplicialModelCache` (rolling caches for the 2-simplicial layers),
    greedy, sampled or beam search, batched prompts padded on either side.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config):
        super().__init__(config)
        self.model = SimplicialModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        """input_ids [B, N] -> CausalLMOutputWithPast(logits [B, N or logits_to_keep, vocab_size], loss, cache).

        labels [B, N]: next-token cross-entropy over the labels != -100 (shifted inside, as transformers
        does). The rest as in `SimplicialModel.forward`.
        """
        _refuse(kwargs)
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, cache=cache, inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )  # fmt: skip
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """generate()'s cache: a SimplicialModelCache sized for the generation (transformers would make a
        DynamicCache, which cannot hold the 2-simplicial layers' five tensors or per-sequence lengths)."""
        if model_kwargs.get("cache") is not None or generation_config.use_cache is False:
            return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        if generation_config.cache_implementation not in (None, "dynamic"):
            raise ValueError(
                f"SimplicialForCausalLM generates with its own SimplicialModelCache; cache_implementation="
                f"{generation_config.cache_implementation!r} is not supported"
            )
        model_kwargs["cache"] = SimplicialModelCache(self.config, max_length=generation_config.max_length)
