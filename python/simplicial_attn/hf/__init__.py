"""A Hugging Face transformers model with 2-simplicial layers (`pip install simplicial-attn[hf]`).

    import simplicial_attn.hf                      # registers model_type "simplicial" with the Auto classes
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("simplicial", vocab_size=256, hidden_size=128, num_hidden_layers=4,
                                  num_attention_heads=4, intermediate_size=344, w1=64, w2=8)
    model = AutoModelForCausalLM.from_config(config)      # a SimplicialForCausalLM (layers AAAS)
    model.save_pretrained(path)                           # safetensors; AutoModelForCausalLM.from_pretrained(path)
    model.generate(input_ids, attention_mask=mask, max_new_tokens=64)   # rolling caches (cache.py)

`import simplicial_attn` does not import this package, and nothing else in simplicial_attn needs transformers.
"""

try:
    import transformers
except ImportError as exc:
    raise ImportError(
        "simplicial_attn.hf needs transformers >= 5: pip install 'simplicial-attn[hf]' (or transformers accelerate)"
    ) from exc

if int(transformers.__version__.split(".")[0]) < 5:
    raise ImportError(f"simplicial_attn.hf needs transformers >= 5, found {transformers.__version__}")

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM  # noqa: E402

from .cache import DotProductCacheLayer, SimplicialModelCache, TwoSimplicialCacheLayer  # noqa: E402
from .configuration import SimplicialConfig  # noqa: E402
from .modeling import SimplicialForCausalLM, SimplicialModel, SimplicialPreTrainedModel  # noqa: E402

AutoConfig.register(SimplicialConfig.model_type, SimplicialConfig, exist_ok=True)
AutoModel.register(SimplicialConfig, SimplicialModel, exist_ok=True)
AutoModelForCausalLM.register(SimplicialConfig, SimplicialForCausalLM, exist_ok=True)

__all__ = [
    "DotProductCacheLayer",
    "SimplicialConfig",
    "SimplicialForCausalLM",
    "SimplicialModel",
    "SimplicialModelCache",
    "SimplicialPreTrainedModel",
    "TwoSimplicialCacheLayer",
]
