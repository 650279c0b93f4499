"""CONTRACT §2 FLOP convention, counted exactly.

Per query head and per in-window triple (i, j, k): forward 4*D FLOPs (logit and value
aggregation, each a multiply-add over D), backward 14*D. Only triples inside the windows and
inside [0, N) count, so the ramp at the sequence start (causal) and both edges (centred)
count fewer than w1*w2 pairs.
"""

import torch

FWD_PER_TRIPLE = 4
BWD_PER_TRIPLE = 14
CONVENTION = "CONTRACT §2: 4*D fwd / 14*D bwd FLOPs per in-window (i,j,k) triple per query head"


def window_sizes(n, w, causal=True):
    """|J(i)| for every query i (int64 tensor of length n); w=None means unbounded."""
    i = torch.arange(n, dtype=torch.int64)
    if w is None:
        return i + 1 if causal else torch.full((n,), n, dtype=torch.int64)
    lo = i - w + 1 if causal else i - w // 2
    hi = lo + w - 1
    return (hi.clamp(max=n - 1) - lo.clamp(min=0) + 1).clamp(min=0)


def window_triples(n, w1, w2, causal=True):
    """Number of in-window (i, j, k) triples of one head: sum_i |J(i)| * |K(i)|."""
    return int((window_sizes(n, w1, causal) * window_sizes(n, w2, causal)).sum())


def attention_flops(B, N, Hq, D, w1, w2, causal=True, mode="fwd"):
    """FLOPs of one call in `mode` "fwd", "bwd" or "fwdbwd"."""
    per = {"fwd": FWD_PER_TRIPLE, "bwd": BWD_PER_TRIPLE, "fwdbwd": FWD_PER_TRIPLE + BWD_PER_TRIPLE}[mode]
    return per * D * B * Hq * window_triples(N, w1, w2, causal)
