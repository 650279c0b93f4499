"""simplicial-attn: 2-simplicial (trilinear) sliding-window attention as one torch op.

Usage: ``out = simplicial_attn.two_simplicial_attention(q, k1, k2, v1, v2, w1=512, w2=32)``;
packed sequences: ``two_simplicial_attention_varlen``; decoding with a rolling cache:
``two_simplicial_attention_with_kvcache`` and ``SimplicialCache``.
"""

from . import _ops  # noqa: F401  (registers the torch.library ops)
from ._ext import build_info
from .api import two_simplicial_attention
from .backends import BackendNotSupported
from .kvcache import SimplicialCache, two_simplicial_attention_with_kvcache
from .layer import SimplicialTransformerBlock, TwoSimplicialAttention
from .scores import attention_weights, trilinear_scores, windowed_softmax
from .varlen import two_simplicial_attention_varlen
from .viz import attention_summary, plot_attention

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
