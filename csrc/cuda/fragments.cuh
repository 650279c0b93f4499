// Tensor-core operand fragments of mma.m16n8k16 (layouts: see common.cuh): ldmatrix loads of A
// and B operands from shared tiles, A operands made of element-wise products or of C fragments,
// and the stores of C-fragment accumulators.
#pragma once

#include "common.cuh"
#include "smem_tile.cuh"

namespace simplicial_attn::cuda {

// Zeros a set of C-fragment accumulators.
template <int kTiles>
SA_DEV void zero_acc(float (&acc)[kTiles][4]) {
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;
}

// The row (within a 16-row warp tile) and column of C-fragment element i of this lane.
SA_DEV int frag_row(int i) { return (lane_id() >> 2) + 8 * (i >> 1); }
SA_DEV int frag_col(int i) { return 2 * (lane_id() & 3) + (i & 1); }

// A operand, 16 x 16, columns [c0, c0 + 16): each lane passes `my_row`, the shared row that holds
// A-row (lane % 16). Lanes 0-15 address column c0, lanes 16-31 column c0 + 8, so ldmatrix matrix
// 0..3 = (rows 0-7, cols c0), (rows 8-15, c0), (rows 0-7, c0+8), (rows 8-15, c0+8): the A registers.
template <class T>
SA_DEV void ldsm_a(uint32_t (&a)[4], const T* my_row, int c0 SA_SITE_ARG) {
  ldmatrix_x4<false>(a, my_row + c0 + (lane_id() >> 4) * 8 SA_SITE_NEXT);
}

// B operands of two n-tiles (n0..n0+7 -> b0, n0+8..n0+15 -> b1) over k in [k0, k0 + 16), from a
// tile stored n-major (row = n, column = k: e.g. k1[j][d] for S = A k1^T). Matrices: (n 0-7, k0),
// (n 0-7, k0+8), (n 8-15, k0), (n 8-15, k0+8) = b0[0], b0[1], b1[0], b1[1].
template <class T, int DP>
SA_DEV void ldsm_b_nmajor(uint32_t (&b0)[2], uint32_t (&b1)[2], const Tile<T, DP>& t, int n0, int k0 SA_SITE_ARG) {
  const int l = lane_id();
  uint32_t r[4];
  ldmatrix_x4<false>(r, t.row(n0 + (l & 7) + ((l >> 4) << 3)) + k0 + ((l >> 3) & 1) * 8 SA_SITE_NEXT);
  b0[0] = r[0];
  b0[1] = r[1];
  b1[0] = r[2];
  b1[1] = r[3];
}

// B operands of two n-tiles (n0..n0+7 -> b0, n0+8..n0+15 -> b1) over k in [k0, k0 + 16), from a
// tile stored k-major (row = k, column = n: e.g. v1[j][d] for P @ v1), transposed by ldmatrix.
// Matrices: (k 0-7, n0), (k 8-15, n0), (k 0-7, n0+8), (k 8-15, n0+8) = b0[0], b0[1], b1[0], b1[1].
template <class T, int DP>
SA_DEV void ldsm_b_kmajor(uint32_t (&b0)[2], uint32_t (&b1)[2], const Tile<T, DP>& t, int k0, int n0 SA_SITE_ARG) {
  const int l = lane_id();
  uint32_t r[4];
  ldmatrix_x4<true>(r, t.row(k0 + (l & 7) + ((l >> 3) & 1) * 8) + n0 + (l >> 4) * 8 SA_SITE_NEXT);
  b0[0] = r[0];
  b0[1] = r[1];
  b1[0] = r[2];
  b1[1] = r[3];
}

// The A operand (16 x 16) made of two C fragments: `lo` holds columns 0-7, `hi` columns 8-15.
// C pairs (row g, cols 2t..) and (row g+8, cols 2t..) of `lo` are A registers 0 and 1; those of
// `hi` registers 2 and 3 (this is how P goes from one mma's output into the next mma's input).
template <class T>
SA_DEV void c_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = Elem<T>::pack(lo[0], lo[1]);
  a[1] = Elem<T>::pack(lo[2], lo[3]);
  a[2] = Elem<T>::pack(hi[0], hi[1]);
  a[3] = Elem<T>::pack(hi[2], hi[3]);
}

// dA and P of a block of kSteps 16-wide steps as A operands (da, pa), from this warp's C
// fragments of kOwn of those steps (dp: dA, s: P), the first of them step `first`. Where kOwn <
// kSteps the warps that share these rows (the dkv kernels' column warps) each computed some
// steps: they meet in shared memory, `slot(kk, which)` this lane's uint4 of step kk (which 0:
// dA, 1: P), after the barrier [X] every warp of the CTA reaches; the caller orders the slots'
// reuse.
template <class T, int kOwn, int kSteps, class Slot>
SA_DEV void block_step_operands(uint32_t (&da)[kSteps][4], uint32_t (&pa)[kSteps][4], const float (&dp)[2 * kOwn][4],
                                const float (&s)[2 * kOwn][4], int first, const Slot& slot SA_SITE_ARG) {
#pragma unroll
  for (int kk = 0; kk < kOwn; ++kk) {
    c_to_a<T>(da[kk], dp[2 * kk], dp[2 * kk + 1]);
    c_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);
  }
  if constexpr (kOwn < kSteps) {
#pragma unroll
    for (int kk = 0; kk < kOwn; ++kk) {
      sstore(slot(first + kk, 0), uint4{da[kk][0], da[kk][1], da[kk][2], da[kk][3]});
      sstore(slot(first + kk, 1), uint4{pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3]});
    }
    cuda::cta_sync(SA_SITE_NEXT_ONLY);  // [X]: every warp's steps are visible
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      const uint4 x = sload(slot(kk, 0)), y = sload(slot(kk, 1));
      da[kk][0] = x.x, da[kk][1] = x.y, da[kk][2] = x.z, da[kk][3] = x.w;
      pa[kk][0] = y.x, pa[kk][1] = y.y, pa[kk][2] = y.z, pa[kk][3] = y.w;
    }
  }
}

// The A operand (16 x 16, columns [c0, c0 + 16)) of the element-wise product x ⊙ y of two row
// sets: lane passes the shared rows holding row (lane % 16) of x and of y (y may be a shifted row).
template <class T>
SA_DEV void ldsm_a_product(uint32_t (&a)[4], const T* x_row, const T* y_row, int c0 SA_SITE_ARG) {
  uint32_t xa[4], ya[4];
  ldsm_a(xa, x_row, c0 SA_SITE_NEXT);
  ldsm_a(ya, y_row, c0 SA_SITE_NEXT);
#pragma unroll
  for (int i = 0; i < 4; ++i) a[i] = mul_pairs<T>(xa[i], ya[i]);
}

// Reads the pair (cols c, c+1) of a shared row as floats.
template <class T>
SA_DEV float2 sload_pair(const T* row, int c) {
  return Elem<T>::unpack(sload(reinterpret_cast<const uint32_t*>(row + c)));
}

// 8 products of 8 pairs of 16-bit elements (one 16-byte vector each), rounded once to T.
template <class T>
SA_DEV uint4 product8(const uint4 a, const uint4 b) {
  return uint4{mul_pairs<T>(a.x, b.x), mul_pairs<T>(a.y, b.y), mul_pairs<T>(a.z, b.z), mul_pairs<T>(a.w, b.w)};
}

// The same of two 16-byte shared rows, stored to a shared row.
template <class T>
SA_DEV void store_product8(T* dst, const T* x, const T* y) {
  sstore(reinterpret_cast<uint4*>(dst),
         product8<T>(sload(reinterpret_cast<const uint4*>(x)), sload(reinterpret_cast<const uint4*>(y))));
}

// acc[nt] += t ⊙ w: t the C fragment of n-tile nt (output columns col0 + 8 nt ..), w the shared
// rows the lane's two fragment rows are multiplied by, element-wise in fp32. same_rows: w[1] is
// w[0] (head packing: one position), read once.
template <class T, int kTiles>
SA_DEV void add_times_rows(float (&acc)[kTiles][4], int nt, const float (&t)[4], const T* const (&w)[2], int col0,
                           bool same_rows = false) {
  float2 wh;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (h == 0 || !same_rows) wh = sload_pair(w[h], col0 + nt * 8 + frag_col(2 * h));
    acc[nt][2 * h] += t[2 * h] * wh.x;
    acc[nt][2 * h + 1] += t[2 * h + 1] * wh.y;
  }
}

// acc += (a @ b) ⊙ w over output columns col0 + 8 nt (nt < kTiles): a the A fragments of kK
// 16-deep steps (P or dA over a block's positions), b a k-major tile (row = k, e.g. v1[j][d]), w the
// shared rows the lane's two fragment rows are multiplied by (e.g. v2[i - u]), element-wise in fp32;
// kSameRows as add_times_rows' same_rows.
template <class T, bool kSameRows = false, int DP, int kK, int kTiles>
SA_DEV void add_product_times_rows(float (&acc)[kTiles][4], const uint32_t (&a)[kK][4], const Tile<T, DP>& b, int col0,
                                   const T* const (&w)[2] SA_SITE_ARG) {
#pragma unroll
  for (int nt = 0; nt < kTiles; nt += 2) {
    float t0[4] = {0.f, 0.f, 0.f, 0.f}, t1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < kK; ++kk) {
      uint32_t b0[2], b1[2];
      ldsm_b_kmajor(b0, b1, b, kk * 16, col0 + nt * 8 SA_SITE_NEXT);
      mma_acc<T>(t0, a[kk], b0 SA_SITE_NEXT);
      mma_acc<T>(t1, a[kk], b1 SA_SITE_NEXT);
    }
    add_times_rows<T>(acc, nt, t0, w, col0, kSameRows);
    add_times_rows<T>(acc, nt + 1, t1, w, col0, kSameRows);
  }
}

// The same with b held in registers (held_b_kmajor), one n-tile at a time: the forward's P @ v1
// of a stage; kSameRows as add_times_rows' same_rows.
template <class T, bool kSameRows, int kK, int kTiles>
SA_DEV void add_held_product_times_rows(float (&acc)[kTiles][4], const uint32_t (&a)[kK][4],
                                        const uint32_t (&b)[kK][kTiles][2], int col0,
                                        const T* const (&w)[2] SA_SITE_ARG) {
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
    float t[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < kK; ++kk) mma_acc<T>(t, a[kk], b[kk][nt] SA_SITE_NEXT);
    add_times_rows<T>(acc, nt, t, w, col0, kSameRows);
  }
}

// Register-held operands: every fragment a warp reads of a shared tile, loaded once and used for
// many products (the forward holds a stage's k1 / v1 fragments over all offsets u of a chunk, and
// its q fragments over the whole loop).
//   held_a            A fragments of the warp's 16 rows (my_row: the lane's ldmatrix row), DP columns
//   held_b_nmajor     B fragments of S = A @ t^T: all DP channels (k) of the BN rows (n) of t
//   held_b_kmajor     B fragments of P @ t: the BK rows (k) of t, its columns [col0, col0 + 8 kTiles)
template <class T, int DP>
SA_DEV void held_a(uint32_t (&a)[DP / 16][4], const T* my_row SA_SITE_ARG) {
#pragma unroll
  for (int kt = 0; kt < DP / 16; ++kt) ldsm_a(a[kt], my_row, kt * 16 SA_SITE_NEXT);
}
template <class T, int DP, int BN>
SA_DEV void held_b_nmajor(uint32_t (&b)[DP / 16][BN / 8][2], const Tile<T, DP>& t SA_SITE_ARG) {
#pragma unroll
  for (int kt = 0; kt < DP / 16; ++kt)
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt += 2) ldsm_b_nmajor(b[kt][nt], b[kt][nt + 1], t, nt * 8, kt * 16 SA_SITE_NEXT);
}
template <class T, int DP, int BK, int kTiles>
SA_DEV void held_b_kmajor(uint32_t (&b)[BK / 16][kTiles][2], const Tile<T, DP>& t, int col0 SA_SITE_ARG) {
#pragma unroll
  for (int kk = 0; kk < BK / 16; ++kk)
#pragma unroll
    for (int nt = 0; nt < kTiles; nt += 2)
      ldsm_b_kmajor(b[kk][nt], b[kk][nt + 1], t, kk * 16, col0 + nt * 8 SA_SITE_NEXT);
}

// Stores the C-fragment accumulators acc[n-tile][4] of this lane's two rows to global memory:
// element (row h, col d) gets acc * row_scale[h]; rows with row_dst[h] == nullptr and columns
// >= D are skipped. Columns are `col0 + 8 * nt + frag_col(i)`.
template <class T, int kTiles>
SA_DEV void store_acc_rows(const float (&acc)[kTiles][4], T* const (&row_dst)[2], const float (&row_scale)[2], int col0,
                           int D) {
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = i >> 1, d = col0 + nt * 8 + frag_col(i);
      if (row_dst[h] != nullptr && d < D) gstore(row_dst[h] + d, Elem<T>::from_float(acc[nt][i] * row_scale[h]));
    }
  }
}

}  // namespace simplicial_attn::cuda
