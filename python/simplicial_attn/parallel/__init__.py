"""Parallelism on PyTorch's own distributed stack.

    from simplicial_attn.parallel import two_simplicial_attention_cp   # context parallelism (context.py)

context.py: the sequence split across ranks, a halo exchange (comm.py) per call.
"""

from .context import CommStats, comm_stats, halo_plan, two_simplicial_attention_cp

__all__ = ["CommStats", "comm_stats", "halo_plan", "two_simplicial_attention_cp"]
