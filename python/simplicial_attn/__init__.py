"""simplicial-attn: 2-simplicial (trilinear) sliding-window attention as one torch op.

Usage: ``out = simplicial_attn.two_simplicial_attention(q, k1, k2, v1, v2, w1=512, w2=32)``;
packed sequences: ``two_simplicial_attention_varlen``; decoding with a rolling cache:
``two_simplicial_attention_with_kvcache`` and ``SimplicialCache``.
"""

from .analysis.scores import attention_weights, trilinear_scores, windowed_softmax
from .analysis.viz import attention_summary, plot_attention
from .backends import BackendNotSupported
from .backends.extension import build_info
from .nn.cache import SimplicialCache
from .nn.layer import SimplicialTransformerBlock, TwoSimplicialAttention
from .ops import library  # noqa: F401  (registers the torch.library ops)
from .ops.attention import two_simplicial_attention
from .ops.kvcache import two_simplicial_attention_with_kvcache
from .ops.varlen import two_simplicial_attention_varlen

__version__ = "0.1.0"

__all__ = [
    "BackendNotSupported",
    "SimplicialCache",
    "SimplicialTransformerBlock",
    "TwoSimplicialAttention",
    "attention_summary",
    "attention_weights",
    "build_info",
    "plot_attention",
    "trilinear_scores",
    "two_simplicial_attention",
    "two_simplicial_attention_varlen",
    "two_simplicial_attention_with_kvcache",
    "windowed_softmax",
]
