// 16 float lanes in AVX-512F registers. Include only from kernel_avx512.cpp, inside its
// target region.
#pragma once

#include <immintrin.h>

#include "kernel_macros.h"
#include "vec_exp2.h"

namespace simplicial_attn {
namespace cpu {
namespace SA_CPU_ISA {

struct VecAvx512 {
  using T = float;
  using reg = __m512;
  static constexpr int W = 16;
  // 6 x 4 accumulators + 4 B vectors + 1 broadcast fit the 32 zmm registers.
  static constexpr int MR = 6;
  static constexpr int NV = 4;

  static SA_INLINE reg zero() { return _mm512_setzero_ps(); }
  static SA_INLINE reg set1(T x) { return _mm512_set1_ps(x); }
  static SA_INLINE reg load(const T* p) { return _mm512_loadu_ps(p); }
  static SA_INLINE void store(T* p, reg x) { _mm512_storeu_ps(p, x); }
  static SA_INLINE reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static SA_INLINE reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static SA_INLINE reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static SA_INLINE reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static SA_INLINE reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  // min(x, c) that returns x when x is NaN (the instruction returns its second operand then).
  static SA_INLINE reg min_keep_nan(reg x, reg c) { return _mm512_min_ps(c, x); }
  static SA_INLINE T reduce_add(reg a) { return _mm512_reduce_add_ps(a); }
  static SA_INLINE T reduce_max(reg a) { return _mm512_reduce_max_ps(a); }
  static SA_INLINE reg tail(reg x, int n, T fill) {
    return _mm512_mask_blend_ps(static_cast<__mmask16>((1u << n) - 1u), set1(fill), x);
  }
  static SA_INLINE reg round(reg x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p * 2^n for integral n in [-125, 127]: add n to the exponent field.
  static SA_INLINE reg scale_pow2(reg p, reg n) {
    const __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
  }
  static SA_INLINE reg zero_below(reg r, reg x, T limit) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, set1(limit), _CMP_LT_OQ), r, zero());
  }
  static SA_INLINE reg exp2(reg x) { return exp2_poly<VecAvx512>(x); }
  static SA_INLINE T exp2_scalar(T x) { return __builtin_exp2f(x); }
  static SA_INLINE T log_scalar(T x) { return __builtin_logf(x); }
};

}  // namespace SA_CPU_ISA
}  // namespace cpu
}  // namespace simplicial_attn
