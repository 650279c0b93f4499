// Determinant logits (CONTRACT §8) in the tensor-core kernels. Per 3-channel chunk
// det(q, k1, k2) = k1 · (k2 × q), so the kernels replace the element-wise a = q ⊙ k2 of the
// trilinear form by the chunkwise cross product a = k2 × q (the same GEMM depth: it is O(D) per
// (query, k) pair, like q ⊙ k2), and the dq / dk2 epilogues by cross products with M = dA @ k1
// (the derivative of k1 · (k2 × q) in q is k1 × k2, in k2 it is q × k1):
//   dq += scale * (M × k2),  dk2 += scale * (q × M),  dk1 += scale * dA^T (k2 × q).
#pragma once

#include "common.cuh"
#include "fragments.cuh"
#include "smem_tile.cuh"

namespace simplicial_attn::cuda {

// The next channel of d's chunk, cyclically (s(d) of CONTRACT §8), and the one after (s(s(d))).
SA_DEV int chunk_next(int d) { return d + (d % 3 == 2 ? -2 : 1); }
SA_DEV int chunk_prev(int d) { return d + (d % 3 == 0 ? 2 : -1); }

// (x × y)[d] = x[s(d)] y[s(s(d))] - x[s(s(d))] y[s(d)] of two 16-bit rows in shared memory, in fp32
// (products of 16-bit values are exact there); 0 for a channel d >= D (no chunk reaches those).
template <class T>
SA_DEV float cross_at(const T* x, const T* y, int d, int D) {
  if (d >= D) return 0.f;
  const int a = chunk_next(d), b = chunk_prev(d);
  return Elem<T>::to_float(sload(x + a)) * Elem<T>::to_float(sload(y + b)) -
         Elem<T>::to_float(sload(x + b)) * Elem<T>::to_float(sload(y + a));
}

// The A operand (16 x 16, columns [c0, c0 + 16)) of a = k2 × q, each element rounded once to T: the
// determinant's replacement of ldsm_a_product. Lane (g, t) passes the shared rows of its two
// fragment rows g and g + 8 (k2_rows[h], q_rows[h]); register i is (row h = i & 1, columns
// c0 + 2t + 8 (i >> 1) + {0, 1}) as in common.cuh. Scalar shared loads: a chunk's channels lie in
// other lanes' ldmatrix fragments.
template <class T>
SA_DEV void cross_a(uint32_t (&a)[4], const T* const* k2_rows, const T* const* q_rows, int c0, int D) {
  const int c = c0 + 2 * (lane_id() & 3);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int h = i & 1, cc = c + 8 * (i >> 1);
    a[i] = Elem<T>::pack(cross_at(k2_rows[h], q_rows[h], cc, D), cross_at(k2_rows[h], q_rows[h], cc + 1, D));
  }
}

// 8 channels [c, c + 8) of k2 × q, rounded as cross_a rounds them, to a 16-byte shared row slot.
template <class T>
SA_DEV void store_cross8(T* dst, const T* k2, const T* q, int c, int D) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) w[i] = Elem<T>::pack(cross_at(k2, q, c + 2 * i, D), cross_at(k2, q, c + 2 * i + 1, D));
  sstore(reinterpret_cast<uint4*>(dst), uint4{w[0], w[1], w[2], w[3]});
}

// The fp32 shared tile through which the determinant epilogues read M = dA @ k1 at the other
// channels of a chunk (they lie in other lanes' C fragments): rows of the CTA, columns
// [m_lo, m_lo + kWidth) of M. A CTA owning output columns [col0, col0 + DO) of DP needs M on
// [col0 - 2, col0 + DO + 2): it computes whole 16-column groups, one more on each side of a split.
template <int DO, int DP>
struct CrossTile {
  static constexpr int kWidth = DO < DP ? DO + 32 : DO;
  float* base;
  int m_lo, m_hi;  // the 16-column groups of M this CTA computes
  SA_DEV CrossTile(float* b, int col0) : base(b), m_lo(imax(0, col0 - 16)), m_hi(imin(DP, col0 + DO + 16)) {}
  SA_DEV float* at(int r, int c) const { return base + r * kWidth + (c - m_lo); }
};

// M = dA @ k1 (da: the A fragments of dA over the stage's BJ positions, k1: the stage, k-major) for
// this warp's 16 rows and the CrossTile's columns, stored to the tile. Callers put a cta_sync
// between this and the reads, and another before the tile is written again.
template <class T, int DP, int BJ, int DO>
SA_DEV void store_m(const CrossTile<DO, DP>& t, int warp_row0, const uint32_t (&da)[BJ / 16][4],
                    const Tile<T, DP>& k1 SA_SITE_ARG) {
  for (int c16 = t.m_lo; c16 < t.m_hi; c16 += 16) {
    float t0[4] = {0.f, 0.f, 0.f, 0.f}, t1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < BJ / 16; ++kk) {
      uint32_t b0[2], b1[2];
      ldsm_b_kmajor(b0, b1, k1, kk * 16, c16 SA_SITE_NEXT);
      mma_acc<T>(t0, da[kk], b0 SA_SITE_NEXT);
      mma_acc<T>(t1, da[kk], b1 SA_SITE_NEXT);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      sstore(t.at(warp_row0 + frag_row(i), c16 + frag_col(i)), t0[i]);
      sstore(t.at(warp_row0 + frag_row(i), c16 + 8 + frag_col(i)), t1[i]);
    }
  }
}

// The determinant epilogue of dq and dk2 for one (u, k1/v1 block) step: M = dA @ k1 to the shared
// tile, then acc[nt][i] += x[c1] y[c2] - x[c2] y[c1] at each of the lane's output elements (row of
// fragment element i, column c = col0 + 8 nt + frag_col(i) < D; c1 = s(c), c2 = s(s(c))), where
// x(h, r, c) and y(h, r, c) read a channel of the lane's fragment row h (CTA row r): M from the tile
// or a shared operand row. dq: x = M, y = k2 (M × k2); dk2: x = q, y = M (q × M). Every thread of
// the CTA calls it (two barriers: [X1] M is complete, [X2] every warp is done reading it).
template <class T, int DP, int BJ, int DO, int kTiles, class X, class Y>
SA_DEV void add_cross_m(float (&acc)[kTiles][4], const CrossTile<DO, DP>& sm, int warp_row0,
                        const uint32_t (&da)[BJ / 16][4], const Tile<T, DP>& k1, int col0, int D, const X& x,
                        const Y& y SA_SITE_ARG) {
  store_m<T, DP, BJ, DO>(sm, warp_row0, da, k1 SA_SITE_NEXT);
  // (qualified: with a site argument, argument-dependent lookup would also find the emulator's)
  cuda::cta_sync(SA_SITE_NEXT_ONLY);  // [X1]: M of every row is in sm
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = i >> 1, r = warp_row0 + frag_row(i), c = col0 + nt * 8 + frag_col(i);
      if (c >= D) continue;
      const int c1 = chunk_next(c), c2 = chunk_prev(c);
      acc[nt][i] += x(h, r, c1) * y(h, r, c2) - x(h, r, c2) * y(h, r, c1);
    }
  }
  cuda::cta_sync(SA_SITE_NEXT_ONLY);  // [X2]: every warp is done reading sm
}

}  // namespace simplicial_attn::cuda
