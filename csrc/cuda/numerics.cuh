// The softmax numerics every kernel shares (numerics rule of issue 14): logits in natural units,
// the running max subtracted before the change to base 2, and a backward P that cannot exceed 1.
//
// Why: exp2(fma(s, scale * log2e, -m * log2e)) puts the rounding of m * log2e (and of the base
// conversion of a saved lse) straight into the exponent; at |logit| = 1e3 that is ~1e-4 relative
// error in every P, from ~1e9 on overflow to inf and NaN. Subtracting first is exact near the
// max, so the error left is that of the (small) difference.
#pragma once

#include "common.cuh"

namespace simplicial_attn::cuda {

// The logit z = scale * s (natural units), rounded once. mul_rn keeps nvcc from contracting it
// with the subtraction that follows into fma(s, scale, -m): the forward's max element would then
// see exp2 of the product's rounding error instead of exp2(0) (exp2(+-700) at |z| = 1e10).
SA_DEV float logit(float s, float scale) { return mul_rn(s, scale); }

// exp(z - m) for a running max m (natural units): subtract, then scale to base 2.
SA_DEV float exp_shifted(float z, float m) { return fast_exp2((z - m) * kLog2e); }

// A row's log-sum-exp as two float32 numbers: lse = fl(m + ln l) (the CONTRACT's lse) and its
// residual lo = fl((m - lse) + ln l) (m - lse is exact), so lse + lo carries m + ln l to about
// twice float32 precision: the rounding of lse alone (ulp(|lse|) / 2, 3e-5 at |lse| = 1e3) would
// enter every P the backward recomputes. Where lse is not finite, lo = 0 (lse carries NaN / inf).
struct RowLse {
  float lse, lo;
};
SA_DEV RowLse row_lse(float m, float l) {
  const float ln_l = mul_rn(fast_log2(l), kLn2);  // one value for both sums
  const float lse = m + ln_l;
  return RowLse{lse, is_finite(lse) ? (m - lse) + ln_l : 0.f};
}

// P = exp(z - lse) for a logit the backward recomputed with the forward's operations:
// t = (z - lse) - lse_lo, subtracting in natural units first. A true P never exceeds 1, so t is
// clamped at 0: a recomputation that differs from the forward's by rounding can never overflow.
// The select keeps a NaN t (fminf would drop it and give P = 1).
SA_DEV float prob_from_lse(float z, float lse, float lse_lo) {
  const float t = (z - lse) - lse_lo;
  return fast_exp2((t > 0.f ? 0.f : t) * kLog2e);
}

}  // namespace simplicial_attn::cuda
