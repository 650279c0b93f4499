// The online softmax of a warp's 16 rows in the tensor-core forward: each lane holds two of them
// (fragment rows g and g + 8, common.cuh) and all their state, so no row statistics are shared
// between warps. Numerics (natural-unit logits, max subtracted before the base change, lse and
// lse_lo): numerics.cuh.
#pragma once

#include "common.cuh"
#include "numerics.cuh"

namespace simplicial_attn::cuda {

struct RowSoftmax {
  static constexpr float kNegInf = -__builtin_huge_valf();
  float m[2] = {kNegInf, kNegInf};  // running max of the logits (natural units)
  float l[2] = {0.f, 0.f};          // running sum of exp(logit - m)

  // One step: s holds this step's logits of the lane's two rows (C fragments of kTiles n-tiles,
  // kNegInf outside the window); they become exp(logit - m) with m the new running max, and
  // alpha[h] the factor that rescales what row h summed before.
  template <int kTiles>
  SA_DEV void step(float (&s)[kTiles][4], float (&alpha)[2] SA_SITE_ARG) {
    float row_max[2] = {kNegInf, kNegInf};
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) row_max[i >> 1] = fmaxf(row_max[i >> 1], s[nt][i]);
    float m_use[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float m_new = fmaxf(m[h], quad_max(row_max[h] SA_SITE_NEXT));
      // A row with nothing in its window so far keeps m = -inf; subtracting 0 instead keeps
      // exp2 at 0 there rather than NaN (-inf - -inf).
      m_use[h] = m_new == kNegInf ? 0.f : m_new;
      alpha[h] = exp_shifted(m[h], m_use[h]);
      m[h] = m_new;
    }
    float row_sum[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[nt][i] = exp_shifted(s[nt][i], m_use[i >> 1]);
        row_sum[i >> 1] += s[nt][i];
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + quad_sum(row_sum[h] SA_SITE_NEXT);
  }

  // 1 / l of row h (0 for a row that saw no logit), and its log-sum-exp (numerics.cuh).
  SA_DEV float inv_sum(int h) const { return l[h] > 0.f ? 1.f / l[h] : 0.f; }
  SA_DEV RowLse lse(int h) const { return row_lse(m[h], l[h]); }
};

// Multiplies the C-fragment accumulators of the lane's two rows by their rescale factors.
template <int kTiles>
SA_DEV void rescale_rows(float (&acc)[kTiles][4], const float (&alpha)[2]) {
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] *= alpha[i >> 1];
}

}  // namespace simplicial_attn::cuda
