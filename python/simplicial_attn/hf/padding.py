r"""Padded batches as the model sees them: each row is its real tokens (attention_mask != 0), in order.

transformers pads prompts of different lengths (left or right) and marks the padding with
attention_mask == 0. No padded token ever enters a window here: the model gathers each row's real
tokens to the front (`real_first`), runs every layer with plain causal attention on them (the
padding, now at the end of the row, is read by no real token), and puts the results back
(`back_index`). The k-th real token of a row is at position k (its RoPE position).

    attention_mask   0 0 1 1 1  (left padding)     1 1 1 0 0  (right padding)
    real first       a b c . .                     a b c . .
    put back         a a a b c                     a b c c c

A padded position gets the output of the last real token at or before it (of the first real token
when the padding leads), so `logits[:, -1]` of a right-padded prompt is the prediction after its last
real token: generate() continues every prompt where its text ends, whichever side was padded.
"""

import torch


def check_mask(attention_mask, batch, new, seen):
    """attention_mask [B, seen + new] (or [B, new]) of 0/1 -> the new tokens' mask [B, new] (bool), or None."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a 2-D [batch, length] tensor of 0/1 (1: a real token), got {got}")
    if attention_mask.dtype.is_floating_point or attention_mask.is_complex():
        raise ValueError(f"attention_mask must hold integers or bools (1: a real token), got {attention_mask.dtype}")
    lengths = (new,) if seen == 0 else (new, seen + new)
    if attention_mask.shape[0] != batch or attention_mask.shape[1] not in lengths:
        raise ValueError(
            f"attention_mask must have shape [{batch}, {' or '.join(map(str, lengths))}] (batch, the cached plus the "
            f"new tokens), got {list(attention_mask.shape)}"
        )
    return attention_mask[:, -new:] != 0


def real_first(mask):
    """[B, N] column indices: each row's real positions in order, then its padded ones."""
    return torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)


def back_index(mask):
    """[B, N]: for each position, the index (among its row's real tokens) of the last real token at or before it."""
    return (mask.to(torch.int64).cumsum(1) - 1).clamp(min=0)


def take(x, index):
    """x [B, N, ...], index [B, M] -> [B, M, ...] with row b's entries x[b, index[b]]."""
    expanded = index.view(*index.shape, *(1,) * (x.dim() - 2)).expand(*index.shape, *x.shape[2:])
    return x.gather(1, expanded)
