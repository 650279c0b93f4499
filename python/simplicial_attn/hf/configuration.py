"""SimplicialConfig: a Llama-style decoder whose every `simplicial_every`-th layer is 2-simplicial.

The field names of the shared part are Llama's (`vocab_size`, `hidden_size`, `num_hidden_layers`,
`num_attention_heads`, `num_key_value_heads`, `intermediate_size`, `rms_norm_eps`, ...); the
2-simplicial layers add their windows `w1` / `w2` and the fields prefixed `simplicial_`.
"""

import functools

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from transformers import PreTrainedConfig

from .. import backends
from ..ops import checks

_POSITIVE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "simplicial_num_key_value_heads",
    "max_position_embeddings",
)


@strict
class SimplicialConfig(PreTrainedConfig):
    r"""Configuration of `SimplicialForCausalLM`.

    Layer l (counting from 1) is 2-simplicial when l is a multiple of `simplicial_every` (Roy et al.
    2025 use every fourth: `AAAS`), the others standard causal attention through
    `scaled_dot_product_attention`; `layer_kinds` spells it out ("A" / "S" per layer).
    `simplicial_every=0` gives a plain Llama-style model, `1` an all-2-simplicial one.

    Shared by every layer: RMSNorm (`rms_norm_eps`) before attention and MLP, a SwiGLU MLP
    (`intermediate_size`, `hidden_act` gating, `mlp_bias`), grouped-query attention
    (`num_attention_heads`, `num_key_value_heads`, `head_dim`, default hidden_size / heads), RMS q/k
    normalisation (`qk_norm`) and rotary embeddings at base `rope_theta` (None: no rotary).

    The 2-simplicial layers (`simplicial_attn.TwoSimplicialAttention`):
        w1, w2: their windows over k1/v1 and k2/v2 (int >= 1, or None: the whole prefix, which makes
            the generation cache linear, of `max_position_embeddings` slots).
        simplicial_num_key_value_heads: their kv heads (default `num_key_value_heads`).
        simplicial_logits: "trilinear" or "determinant" (CONTRACT §8; head_dim % 3 == 0).
        simplicial_rope: whether they use the package's exact rotary (the tied-pair policy for
            trilinear logits, head_dim % 4 == 0; the chunk rotary for determinant logits) at base
            `rope_theta`; False: position enters them only through the windows.
        simplicial_backend: the op's backend ("auto", "cpu", "cuda", "triton", "reference").

    Initialisation (`SimplicialPreTrainedModel._init_weights`): LeCun-normal linear layers (std
    fan_in^-1/2, as the package's layers), N(0, 1) embeddings (N(0, 1/hidden_size) when
    `tie_word_embeddings` ties them to the head), unit norms.
    """

    model_type = "simplicial"
    # Tensor parallelism by heads (`from_pretrained(..., tp_plan="auto")` under torchrun): every input
    # projection column-wise, the output projections row-wise (transformers adds the embedding,
    # vocabulary-sharded); the per-head q/k norms see a rank's heads only, so their gains' gradients
    # are summed across the ranks. The layers read their head counts off the projections' outputs.
    base_model_tp_plan = {
        **{
            f"layers.*.self_attn.{name}": "colwise"
            for name in ("q_proj", "k_proj", "v_proj", "k1_proj", "k2_proj", "v1_proj", "v2_proj")
        },  # fmt: skip
        "layers.*.self_attn.out_proj": "rowwise",
        **{
            f"layers.*.self_attn.{name}": "replicated_with_grad_allreduce"
            for name in ("q_norm", "k_norm", "k1_norm", "k2_norm")
        },  # fmt: skip
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }

    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 8
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: int | float | None = 10000.0
    qk_norm: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    use_cache: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    simplicial_every: int = 4
    w1: int | None = 512
    w2: int | None = 32
    simplicial_num_key_value_heads: int | None = None
    simplicial_logits: str = "trilinear"
    simplicial_rope: bool = True
    simplicial_backend: str = "auto"

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size = {self.hidden_size} must be a multiple of num_attention_heads = "
                    f"{self.num_attention_heads} (or give head_dim)"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.simplicial_num_key_value_heads is None:
            self.simplicial_num_key_value_heads = self.num_key_value_heads
        super().__post_init__(**kwargs)

    @property
    def layer_kinds(self):
        """'S' for a 2-simplicial layer, 'A' for an SDPA one, per layer (e.g. 'AAASAAAS')."""
        every = self.simplicial_every
        return "".join("S" if every and layer % every == 0 else "A" for layer in range(1, self.num_hidden_layers + 1))

    def validate_architecture(self):
        """Part of `@strict`-powered validation: a config that builds a model (each message names the field)."""
        for name in _POSITIVE_FIELDS:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_key_value_heads", "simplicial_num_key_value_heads"):
            if self.num_attention_heads % getattr(self, name):
                raise ValueError(f"num_attention_heads = {self.num_attention_heads} must be a multiple of {name}")
        if self.simplicial_every < 0:
            raise ValueError(f"simplicial_every must be >= 0 (0: no 2-simplicial layer), got {self.simplicial_every}")
        if self.rope_theta is not None and not self.rope_theta > 1:
            raise ValueError(f"rope_theta must be > 1 or None (no rotary), got {self.rope_theta}")
        if self.rope_theta is not None and self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {self.head_dim} (or set rope_theta=None)")
        checks.check_window("w1", self.w1)
        checks.check_window("w2", self.w2)
        for name, check in (
            ("simplicial_backend", lambda: backends.check_name(self.simplicial_backend)),
            ("simplicial_logits", lambda: checks.check_logits(self.simplicial_logits, self.head_dim)),
        ):
            try:
                check()
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}: {exc}") from None
        if "S" in self.layer_kinds and self.simplicial_rope and self.rope_theta is not None:
            need = 3 if self.simplicial_logits == "determinant" else 4
            if self.head_dim % need:
                raise ValueError(
                    f"simplicial_rope with {self.simplicial_logits} logits needs head_dim % {need} == 0, got head_dim "
                    f"{self.head_dim} (or set simplicial_rope=False)"
                )


def _plain_errors(method):
    """huggingface_hub's @strict wraps a field's TypeError / ValueError in its own
    StrictDataclass*Error, which is neither; CONTRACT §4 promises TypeError for a wrong type and
    ValueError for a bad value, so re-raise the cause's kind (the message still names the field)."""

    @functools.wraps(method)
    def checked(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except StrictDataclassError as exc:
            kind = TypeError if isinstance(exc.__cause__, TypeError) else ValueError
            raise kind(str(exc)) from exc.__cause__

    return checked


# Construction (also from config.json), assignment of a field, and validate().
SimplicialConfig.__init__ = _plain_errors(SimplicialConfig.__init__)
SimplicialConfig.__setattr__ = _plain_errors(SimplicialConfig.__setattr__)
SimplicialConfig.validate = _plain_errors(SimplicialConfig.validate)
