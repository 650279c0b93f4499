"""simplicial-attn: 2-simplicial (trilinear) sliding-window attention as one torch op.

Usage: ``out = simplicial_attn.two_simplicial_attention(q, k1, k2, v1, v2, w1=512, w2=32)``.
"""

from . import _ops  # noqa: F401  (registers the torch.library ops)
from ._ext import build_info
from .api import two_simplicial_attention
from .backends import BackendNotSupported

__version__ = "0.1.0"

__all__ = [
    "BackendNotSupported",
    "build_info",
    "two_simplicial_attention",
]
