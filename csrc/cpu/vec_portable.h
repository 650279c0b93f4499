// 4 float lanes written with GCC/Clang vector extensions: compiles to SSE2 on any x86-64 and
// to NEON on arm64, so CPUs without AVX2 (and Apple/Graviton machines) still get vector code.
// Compilers without the extensions (MSVC) use VecScalar<float> instead (kernel_base.cpp).
#pragma once

#include <cstring>

#include "kernel_macros.h"
#include "vec_exp2.h"

namespace simplicial_attn {
namespace cpu {
namespace SA_CPU_ISA {

struct VecPortable {
  using T = float;
  typedef float reg __attribute__((vector_size(16)));
  typedef int mask __attribute__((vector_size(16)));
  typedef unsigned bits __attribute__((vector_size(16)));
  static constexpr int W = 4;
  // 4 x 3 accumulators + 3 B vectors + 1 broadcast fit the 16 SSE registers.
  static constexpr int MR = 4;
  static constexpr int NV = 3;

  template <class To, class From>
  static SA_INLINE To cast(From x) {
    To y;
    std::memcpy(&y, &x, sizeof(y));
    return y;
  }
  // Lanes where m is set take a, the others b (m is all-ones or all-zeros per lane).
  static SA_INLINE reg select(mask m, reg a, reg b) {
    return cast<reg>((cast<bits>(a) & cast<bits>(m)) | (cast<bits>(b) & ~cast<bits>(m)));
  }

  static SA_INLINE reg zero() { return reg{0.f, 0.f, 0.f, 0.f}; }
  static SA_INLINE reg set1(T x) { return reg{x, x, x, x}; }
  static SA_INLINE reg load(const T* p) {
    reg x;
    std::memcpy(&x, p, sizeof(x));
    return x;
  }
  static SA_INLINE void store(T* p, reg x) { std::memcpy(p, &x, sizeof(x)); }
  static SA_INLINE reg add(reg a, reg b) { return a + b; }
  static SA_INLINE reg sub(reg a, reg b) { return a - b; }
  static SA_INLINE reg mul(reg a, reg b) { return a * b; }
  static SA_INLINE reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static SA_INLINE reg max(reg a, reg b) { return select(b > a, b, a); }
  static SA_INLINE reg min_keep_nan(reg x, reg c) { return select(x >= c, c, x); }
  static SA_INLINE T reduce_add(reg a) { return (a[0] + a[1]) + (a[2] + a[3]); }
  static SA_INLINE T reduce_max(reg a) {
    const T x = a[0] < a[1] ? a[1] : a[0], y = a[2] < a[3] ? a[3] : a[2];
    return x < y ? y : x;
  }
  static SA_INLINE reg tail(reg x, int n, T fill) {
    const mask lane{0, 1, 2, 3};
    return select(lane < mask{n, n, n, n}, x, set1(fill));
  }
  // Round to nearest by adding and subtracting 1.5 * 2^23 (exact for |x| < 2^22; the sum's low
  // mantissa bits then hold round(x) as an integer, which scale_pow2 reads back).
  static constexpr float kMagic = 12582912.f;
  static SA_INLINE reg round(reg x) { return (x + set1(kMagic)) - set1(kMagic); }
  static SA_INLINE reg scale_pow2(reg p, reg n) {
    const bits ni = cast<bits>(n + set1(kMagic)) - cast<bits>(set1(kMagic));
    return cast<reg>(cast<bits>(p) + (ni << 23));
  }
  static SA_INLINE reg zero_below(reg r, reg x, T limit) { return select(x < set1(limit), zero(), r); }
  // Unlike the x86 conversion (NaN -> 0x80000000, whose shifted exponent is 0), the integer
  // trick above can turn a NaN into a number, so NaN lanes are restored explicitly.
  static SA_INLINE reg exp2(reg x) { return select(x != x, x, exp2_poly<VecPortable>(x)); }
  static SA_INLINE T exp2_scalar(T x) { return __builtin_exp2f(x); }
  static SA_INLINE T log_scalar(T x) { return __builtin_logf(x); }
};

}  // namespace SA_CPU_ISA
}  // namespace cpu
}  // namespace simplicial_attn
