// The A operand of the logit product S = A @ k1^T in the tensor-core kernels, trilinear (q ⊙ k2)
// or determinant (k2 × q), and the two products the backward kernels open each step with.
#pragma once

#include "common.cuh"
#include "cross.cuh"
#include "fragments.cuh"
#include "smem_tile.cuh"

namespace simplicial_attn::cuda {

// The shared rows a lane's A operand of the logit product S = A @ k1^T comes from: trilinear,
// A = q ⊙ k2 from its ldmatrix rows (row lane % 16 of the warp's 16); determinant, A = k2 × q from
// its two fragment rows g and g + 8 (cross_a).
template <class T>
struct LogitRows {
  bool det;
  int D;
  const T* q_row;  // ldmatrix rows
  const T* k2_row;
  const T* const* q_frag;  // fragment rows [2]
  const T* const* k2_frag;
  // The A operand over columns [c0, c0 + 16).
  SA_DEV void a_operand(uint32_t (&a)[4], int c0 SA_SITE_ARG) const {
    if (det)
      cross_a<T>(a, k2_frag, q_frag, c0, D);
    else
      ldsm_a_product<T>(a, q_row, k2_row, c0 SA_SITE_NEXT);
  }
};

// The A operand q ⊙ k2 over columns [16 kt, 16 kt + 16): q's factor from fragments held in
// registers (kHoldQ: held_a) or from the lane's ldmatrix row of q, k2's from the lane's ldmatrix
// row of k2. kOneRow: all 16 rows of the warp read one k2 row (head packing, one position per
// warp), so k2's fragment is that row's columns twice (A rows g and g + 8 alike): two 32-bit
// shared loads in place of an ldmatrix of 16 equal rows, half the shared-memory traffic.
template <class T, int DP, bool kHoldQ, bool kOneRow>
SA_DEV void q_times_k2(uint32_t (&a)[4], const uint32_t (&held_q)[DP / 16][4], const T* q_row, const T* k2_row,
                       int kt SA_SITE_ARG) {
  uint32_t q[4], k[4];
  if constexpr (kHoldQ) {
#pragma unroll
    for (int i = 0; i < 4; ++i) q[i] = held_q[kt][i];
  } else {
    ldsm_a(q, q_row, kt * 16 SA_SITE_NEXT);
  }
  if constexpr (kOneRow) {
    const T* pair = k2_row + kt * 16 + frag_col(0);
    k[0] = k[1] = sload(reinterpret_cast<const uint32_t*>(pair));
    k[2] = k[3] = sload(reinterpret_cast<const uint32_t*>(pair + 8));
  } else {
    ldsm_a(k, k2_row, kt * 16 SA_SITE_NEXT);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) a[i] = mul_pairs<T>(q[i], k[i]);
}

// The logits S = A @ k1^T (A of `logit`: q ⊙ k2 or k2 × q) of one warp's 16 rows and the BJ
// k1/v1 positions of a stage, over all DP channels.
template <class T, int DP, int BJ>
SA_DEV void logits(float (&s)[BJ / 8][4], const LogitRows<T>& logit, const Tile<T, DP>& k1 SA_SITE_ARG) {
  zero_acc(s);
#pragma unroll 2
  for (int kt = 0; kt < DP / 16; ++kt) {
    uint32_t a[4];
    logit.a_operand(a, kt * 16 SA_SITE_NEXT);
#pragma unroll
    for (int nt = 0; nt < BJ / 8; nt += 2) {
      uint32_t b0[2], b1[2];
      ldsm_b_nmajor(b0, b1, k1, nt * 8, kt * 16 SA_SITE_NEXT);
      mma_acc<T>(s[nt], a, b0 SA_SITE_NEXT);
      mma_acc<T>(s[nt + 1], a, b1 SA_SITE_NEXT);
    }
  }
}

// One k-step (channels [16 kt, 16 kt + 16)) of the backward's two products: s += a @ k1^T and
// dp += e @ v1^T over kN columns of the B tiles from column n0 (k1 / v1 positions; in dk1 / dv1's
// transposed form, queries of the products aq / bdo), a and e the step's A fragments.
template <class T, int DP, int kN>
SA_DEV void s_dp_kstep(float (&s)[kN / 8][4], float (&dp)[kN / 8][4], const uint32_t (&a)[4], const uint32_t (&e)[4],
                       const Tile<T, DP>& k1, const Tile<T, DP>& v1, int n0, int kt SA_SITE_ARG) {
#pragma unroll
  for (int nt = 0; nt < kN / 8; nt += 2) {
    uint32_t b0[2], b1[2];
    ldsm_b_nmajor(b0, b1, k1, n0 + nt * 8, kt * 16 SA_SITE_NEXT);
    mma_acc<T>(s[nt], a, b0 SA_SITE_NEXT);
    mma_acc<T>(s[nt + 1], a, b1 SA_SITE_NEXT);
    ldsm_b_nmajor(b0, b1, v1, n0 + nt * 8, kt * 16 SA_SITE_NEXT);
    mma_acc<T>(dp[nt], e, b0 SA_SITE_NEXT);
    mma_acc<T>(dp[nt + 1], e, b1 SA_SITE_NEXT);
  }
}

// The two products the dq and dk2/dv2 kernels start each (u, j-block) step with, for one warp's 16
// rows and the BJ k1/v1 positions of the stage, over all DP channels:
//   s = A @ k1^T (A of `logit`: q ⊙ k2 or k2 × q)    dp = (e ⊙ f) @ v1^T
// Each lane passes the shared rows holding row (lane % 16) of e and f (see ldsm_a_product).
// kOneRow (trilinear logits, head packing of >= 16 heads: the warp's 16 rows at one position): k2
// and f are one row each for the whole warp, read with two 32-bit loads as in q_times_k2.
template <class T, int DP, int BJ, bool kOneRow = false>
SA_DEV void logits_and_dp(float (&s)[BJ / 8][4], float (&dp)[BJ / 8][4], const LogitRows<T>& logit, const T* e_row,
                          const T* f_row, const Tile<T, DP>& k1, const Tile<T, DP>& v1 SA_SITE_ARG) {
  zero_acc(s);
  zero_acc(dp);
  [[maybe_unused]] const uint32_t no_held[DP / 16][4] = {};  // q_times_k2's held q, unused (kHoldQ false)
#pragma unroll 2
  for (int kt = 0; kt < DP / 16; ++kt) {
    uint32_t a[4], e[4];
    if constexpr (kOneRow) {
      q_times_k2<T, DP, false, true>(a, no_held, logit.q_row, logit.k2_row, kt SA_SITE_NEXT);
      q_times_k2<T, DP, false, true>(e, no_held, e_row, f_row, kt SA_SITE_NEXT);
    } else {
      logit.a_operand(a, kt * 16 SA_SITE_NEXT);
      ldsm_a_product<T>(e, e_row, f_row, kt * 16 SA_SITE_NEXT);
    }
    s_dp_kstep<T, DP, BJ>(s, dp, a, e, k1, v1, 0, kt SA_SITE_NEXT);
  }
}

// The pair operands a = q ⊙ k2 (logits) and e = dout ⊙ v2 (dP) of one warp's 16 rows over all DP
// channels as A fragments, for a loop that holds them (the fused dq / dk2 / dv2 kernel: one offset
// u's whole j window), from the lane's ldmatrix rows; kOneRow (head packing, one position a warp):
// one k2 and one v2 row for the warp (q_times_k2).
template <class T, int DP, bool kOneRow>
SA_DEV void pair_operands(uint32_t (&a)[DP / 16][4], uint32_t (&e)[DP / 16][4], const T* q_row, const T* k2_row,
                          const T* e_row, const T* f_row SA_SITE_ARG) {
  [[maybe_unused]] const uint32_t no_held[DP / 16][4] = {};  // q_times_k2's held q, unused (kHoldQ false)
#pragma unroll
  for (int kt = 0; kt < DP / 16; ++kt) {
    q_times_k2<T, DP, false, kOneRow>(a[kt], no_held, q_row, k2_row, kt SA_SITE_NEXT);
    q_times_k2<T, DP, false, kOneRow>(e[kt], no_held, e_row, f_row, kt SA_SITE_NEXT);
  }
}

// logits_and_dp with the pair operands held (pair_operands): s = a @ k1^T, dp = e @ v1^T over the
// BJ k1/v1 positions of a stage; only the B fragments come from shared memory.
template <class T, int DP, int BJ>
SA_DEV void held_logits_and_dp(float (&s)[BJ / 8][4], float (&dp)[BJ / 8][4], const uint32_t (&a)[DP / 16][4],
                               const uint32_t (&e)[DP / 16][4], const Tile<T, DP>& k1,
                               const Tile<T, DP>& v1 SA_SITE_ARG) {
  zero_acc(s);
  zero_acc(dp);
#pragma unroll
  for (int kt = 0; kt < DP / 16; ++kt) {
    s_dp_kstep<T, DP, BJ>(s, dp, a[kt], e[kt], k1, v1, 0, kt SA_SITE_NEXT);
  }
}

}  // namespace simplicial_attn::cuda
