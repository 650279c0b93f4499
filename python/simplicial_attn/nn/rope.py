r"""Rotary position embedding (RoPE), and the policy that makes it exact for the trilinear form.

Standard RoPE rotates every pair of dims (2p, 2p+1) of a query at position i by the angle
i * theta_p and of a key at position j by j * theta_p, so <R_i q, R_j k> = q^T R_{j-i} k
depends on positions only through j - i.

The trilinear logit  sum_d q_d k1_d k2_d  has no such property. Per pair of dims it is
q_x k1_x k2_x + q_y k1_y k2_y, and written with complex numbers every one of the eight
terms q^(*) k1^(*) k2^(*) appears, so rotating q, k1, k2 by i, j, k times any frequencies
leaves phases +-a i +-b j +-c k that cannot all vanish under a common shift of i, j, k
(Roy et al. 2025, §5, who replace the form by a determinant; that is a different op).

`TiedRotary` keeps the op and changes what it is fed instead. The head dim is split in two
halves of D/2 dims (D % 4 == 0):

    dims           q            k1                        k2
    [0, D/2)       rotated @ i  rotated @ j               tied pairs: k2[2p] == k2[2p+1]
    [D/2, D)       rotated @ i  tied pairs: k1[2p] == k1[2p+1]   rotated @ k

With a tied pair (u, u) the pair's term is u * <R_i q_p, R_j k1_p> = u * q_p^T R_{j-i} k1_p,
so the logit is

    A[i,j,k] = scale * ( sum_{p in first half}  k2_p(k) * q_p^T R_{(j-i) theta_p} k1_p
                       + sum_{p in second half} k1_p(j) * q_p^T R_{(k-i) theta_p} k2_p )

a function of token contents and of the offsets j - i and k - i only: shifting every position
by the same amount leaves every logit, hence the layer's output, unchanged (tested). The
price: a tied pair carries one number instead of two, so k1 and k2 each get 3D/4 free dims.
"""

import torch


def inv_frequencies(num_pairs, base, device=None):
    """theta_p = base ** (-p / num_pairs), p = 0 .. num_pairs - 1 (the usual RoPE spectrum)."""
    return base ** (-torch.arange(num_pairs, dtype=torch.float32, device=device) / num_pairs)


def rotary_tables(positions, num_pairs, base):
    """cos and sin of positions * theta_p: positions [N] or [B, N] -> two [..., N, 1, num_pairs] tables.

    The singleton dim broadcasts over heads of [B, N, H, ...] tensors.
    """
    angles = positions.to(torch.float32)[..., None] * inv_frequencies(num_pairs, base, positions.device)
    return angles.cos()[..., None, :], angles.sin()[..., None, :]


def rotate_pairs(x, cos, sin):
    """Rotate each interleaved pair (x[2p], x[2p+1]) of the last dim by the angle whose cos/sin are given.

    Computed in float32 and returned in x's dtype, so bf16 activations are not rotated in bf16.
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def check_rope(rope):
    """Normalise the `rope` argument: None/False (off), True (base 10000) or a base > 1. Returns the base or None."""
    if rope is None or rope is False:
        return None
    if rope is True:
        return 10000.0
    if isinstance(rope, (int, float)) and rope > 1:
        return float(rope)
    raise ValueError(f"rope must be None, a bool or a RoPE base > 1 (e.g. 10000.0), got {rope!r}")


class TiedRotary:
    """The tied-pair policy above for head dim D: how wide k1/k2 are projected, and how they are expanded.

    k1 is projected to [free D/2 | tied D/4] and k2 to [tied D/4 | free D/2] (3D/4 numbers each);
    `expand_and_rotate` duplicates the tied numbers into pairs and rotates q, k1, k2.
    """

    def __init__(self, head_dim, base):
        if head_dim % 4 != 0:
            raise ValueError(f"rope needs head_dim divisible by 4 (two halves of dim pairs), got head_dim={head_dim}")
        self.head_dim = head_dim
        self.base = base
        self.half = head_dim // 2
        self.key_dim = 3 * head_dim // 4

    def expand_and_rotate(self, q, k1, k2, positions):
        """q [B, N, Hq, D], k1/k2 [B, N, Hkv, 3D/4], positions [N] or [B, N] -> q, k1, k2 [.., D] rotated."""
        h = self.half
        cos, sin = rotary_tables(positions, h // 2, self.base)
        q = rotate_pairs(q, torch.cat((cos, cos), -1), torch.cat((sin, sin), -1))
        k1 = torch.cat((rotate_pairs(k1[..., :h], cos, sin), k1[..., h:].repeat_interleave(2, dim=-1)), -1)
        k2 = torch.cat((k2[..., : h // 2].repeat_interleave(2, dim=-1), rotate_pairs(k2[..., h // 2 :], cos, sin)), -1)
        return q, k1, k2


class ChunkRotary:
    r"""Rotary embedding for the determinant logits (CONTRACT §8): exact relative positions.

    The determinant logit sums det[q^(m); k1^(m); k2^(m)] over 3-channel chunks m. Rotate every
    chunk of a token at position p about the chunk's third axis by the angle p * theta_m:

        channels      3m          3m+1         3m+2
        rotated       cos x - sin y, sin x + cos y, z        (angle p * theta_m)

    R_p is in SO(3) and R_{a+b} = R_a R_b, so det(R_i q, R_j k1, R_k k2) = det(q, R_{j-i} k1, R_{k-i} k2):
    every logit depends on positions only through j - i and k - i, and shifting all positions
    leaves the output unchanged (tested). Unlike `TiedRotary`, nothing is tied: k1 and k2 keep
    all D channels. Needs head_dim % 3 == 0 (the determinant does anyway).
    """

    def __init__(self, head_dim, base):
        if head_dim % 3 != 0:
            raise ValueError(f"the chunk rotary needs head_dim divisible by 3 (determinant logits), got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        self.chunks = head_dim // 3
        self.key_dim = head_dim  # k1 and k2 are projected to the full head dim

    def rotate(self, x, positions):
        """x [..., N, H, D] (or [T, H, D]) rotated chunk-wise at positions [N] / [B, N] / [T]."""
        angles = positions.to(torch.float32)[..., None] * inv_frequencies(self.chunks, self.base, positions.device)
        cos, sin = angles.cos()[..., None, :], angles.sin()[..., None, :]  # broadcast over heads
        c = x.float().unflatten(-1, (self.chunks, 3))
        a, b, z = c[..., 0], c[..., 1], c[..., 2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos, z), dim=-1).flatten(-2).to(x.dtype)

    def expand_and_rotate(self, q, k1, k2, positions):
        """q, k1, k2 rotated at their tokens' positions (same interface as TiedRotary)."""
        return tuple(self.rotate(t, positions) for t in (q, k1, k2))
