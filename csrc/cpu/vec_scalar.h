// Portable "vector" of one lane: the fallback for CPUs without AVX2 (and other architectures)
// and the float64 path, which only has to be right (gradcheck), not fast.
#pragma once

#include <cmath>

#include "kernel_macros.h"

namespace simplicial_attn {
namespace cpu {
namespace SA_CPU_ISA {

template <typename T_>
struct VecScalar {
  using T = T_;
  using reg = T;
  static constexpr int W = 1;
  // Register tile of the micro-kernel: MR rows x NV vectors of accumulators.
  static constexpr int MR = 4;
  static constexpr int NV = 8;

  static SA_INLINE reg zero() { return T(0); }
  static SA_INLINE reg set1(T x) { return x; }
  static SA_INLINE reg load(const T* p) { return *p; }
  static SA_INLINE void store(T* p, reg x) { *p = x; }
  static SA_INLINE reg add(reg a, reg b) { return a + b; }
  static SA_INLINE reg sub(reg a, reg b) { return a - b; }
  static SA_INLINE reg mul(reg a, reg b) { return a * b; }
  static SA_INLINE reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static SA_INLINE reg max(reg a, reg b) { return a < b ? b : a; }
  // min(x, c) that returns x when x is NaN (the comparison is false then).
  static SA_INLINE reg min_keep_nan(reg x, reg c) { return x > c ? c : x; }
  static SA_INLINE T reduce_add(reg a) { return a; }
  static SA_INLINE T reduce_max(reg a) { return a; }
  // Lanes >= n take `fill`; with one lane n is always 1.
  static SA_INLINE reg tail(reg x, int /*n*/, T /*fill*/) { return x; }
  static SA_INLINE reg exp2(reg x) { return std::exp2(x); }
  static SA_INLINE T exp2_scalar(T x) { return std::exp2(x); }
  static SA_INLINE T log_scalar(T x) { return std::log(x); }
};

}  // namespace SA_CPU_ISA
}  // namespace cpu
}  // namespace simplicial_attn
