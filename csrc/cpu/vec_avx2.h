// 8 float lanes in AVX2 + FMA registers. Include only from kernel_avx2.cpp, inside its target
// region.
#pragma once

#include <immintrin.h>

#include "kernel_macros.h"
#include "vec_exp2.h"

namespace simplicial_attn {
namespace cpu {
namespace SA_CPU_ISA {

struct VecAvx2 {
  using T = float;
  using reg = __m256;
  static constexpr int W = 8;
  // 4 x 3 accumulators + 3 B vectors + 1 broadcast fit the 16 ymm registers; 4 rows divide the
  // 32-row k tiles exactly (6 rows would leave a 2-row, latency-bound tile).
  static constexpr int MR = 4;
  static constexpr int NV = 3;

  static SA_INLINE reg zero() { return _mm256_setzero_ps(); }
  static SA_INLINE reg set1(T x) { return _mm256_set1_ps(x); }
  static SA_INLINE reg load(const T* p) { return _mm256_loadu_ps(p); }
  static SA_INLINE void store(T* p, reg x) { _mm256_storeu_ps(p, x); }
  static SA_INLINE reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static SA_INLINE reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static SA_INLINE reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static SA_INLINE reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static SA_INLINE reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  // min(x, c) that returns x when x is NaN (the instruction returns its second operand then).
  static SA_INLINE reg min_keep_nan(reg x, reg c) { return _mm256_min_ps(c, x); }
  static SA_INLINE T reduce_add(reg a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static SA_INLINE T reduce_max(reg a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static SA_INLINE reg tail(reg x, int n, T fill) {
    const reg lane = _mm256_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f);
    return _mm256_blendv_ps(set1(fill), x, _mm256_cmp_ps(lane, set1(static_cast<T>(n)), _CMP_LT_OQ));
  }
  static SA_INLINE reg round(reg x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static SA_INLINE reg scale_pow2(reg p, reg n) {
    const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
  }
  static SA_INLINE reg zero_below(reg r, reg x, T limit) {
    return _mm256_blendv_ps(r, zero(), _mm256_cmp_ps(x, set1(limit), _CMP_LT_OQ));
  }
  static SA_INLINE reg exp2(reg x) { return exp2_poly<VecAvx2>(x); }
  static SA_INLINE T exp2_scalar(T x) { return __builtin_exp2f(x); }
  static SA_INLINE T log_scalar(T x) { return __builtin_logf(x); }
};

}  // namespace SA_CPU_ISA
}  // namespace cpu
}  // namespace simplicial_attn
