r"""Operands of the tensor-core products: the dot wrapper, and the pair operand of the two
key axes formed in registers.

Trilinear logits (CONTRACT §1) multiply q by k2 elementwise; determinant logits (CONTRACT §8)
take the chunkwise cross product instead. With s(d) = 3 (d // 3) + (d + 1) % 3, the next channel
of d's 3-channel chunk,

    (a x b)[d] = a[s(d)] b[s(s(d))] - a[s(s(d))] b[s(d)]

formed from a and b at their two permuted channel orders: register tiles permuted with
tl.gather (`permuted`), or loads at shifted channels (`chunk_shifts`). Padded channels d >= D
(D % 3 == 0) shift by 0 and stay zero.
"""

import triton
import triton.language as tl


@triton.jit
def mma(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with float32 accumulation.

    The interpreter's tl.dot on bfloat16 multiplies the raw uint16 bits (numpy
    matmul; triton 3.8 and 3.9), so when interpreting the operands, already rounded to the input
    dtype, are widened to float32: the products are then exact and the sum float32, which is
    what tensor cores compute.
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def chunk_shifts(d, D):
    """Channel shifts s(d) - d and s(s(d)) - d of channels d (see the module doc); 0 for d >= D."""
    c = 3 * (d // 3)
    return tl.where(d < D, c + (d + 1) % 3 - d, 0), tl.where(d < D, c + (d + 2) % 3 - d, 0)


@triton.jit
def channels_at(x, d, shift):
    """x[:, d + shift[d]]: a register tile's channels permuted along axis 1 (chunk_shifts)."""
    return tl.gather(x, tl.broadcast_to((d + shift)[None, :], x.shape), 1)


@triton.jit
def permuted(x, d, sh1, sh2):
    """x at its two permuted channel orders, s(d) and s(s(d)), in float32."""
    return channels_at(x, d, sh1).to(tl.float32), channels_at(x, d, sh2).to(tl.float32)


@triton.jit
def cross(a1, a2, b1, b2):
    """The chunkwise cross product a x b from a and b at their permuted channels (a1 = a[s(d)],
    a2 = a[s(s(d))], likewise b), broadcasting."""
    return a1 * b2 - a2 * b1


@triton.jit
def pair_operand(q, k2, d, sh1, sh2, dt, DET: tl.constexpr):
    """The left operand of the logits against k1, in dtype dt: q * k2, or with determinant
    logits the cross product k2 x q (q and k2 register tiles of the same shape)."""
    if DET:
        k2_1, k2_2 = permuted(k2, d, sh1, sh2)
        q_2 = channels_at(q, d, sh2).to(tl.float32)
        return cross(k2_1, k2_2, channels_at(q, d, sh1).to(tl.float32), q_2).to(dt)
    return (q.to(tl.float32) * k2.to(tl.float32)).to(dt)
