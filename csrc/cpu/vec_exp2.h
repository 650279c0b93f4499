// Vectorised 2^x for float lanes, shared by the AVX2 and AVX-512 flavours.
//
// The softmax spends one exp per (i, j, k) triple against 4*D flops of products, so a libm
// call per element would cost more than the matrix products; this polynomial is ~15 vector
// instructions per register. Inputs are logits minus the running max (<= 0) in log2 units.
#pragma once

#include "kernel_macros.h"

namespace simplicial_attn {
namespace cpu {
namespace SA_CPU_ISA {

// 2^x = 2^n * 2^f with n = round(x), f in [-0.5, 0.5]; 2^f by its degree-6 Taylor series in
// f*ln2 (relative error < 1.2e-7, under one float ulp near 1). Lanes below -125 return 0
// (their true value, < 2^-125, is far below what a softmax with a term of 1 can resolve), so
// masked -inf logits give exactly 0; NaN stays NaN.
template <class V>
SA_INLINE typename V::reg exp2_poly(typename V::reg x) {
  using reg = typename V::reg;
  const reg xc = V::min_keep_nan(x, V::set1(127.f));
  const reg n = V::round(xc);
  const reg f = V::sub(xc, n);
  reg p = V::set1(1.5403530393381606e-4f);
  p = V::fmadd(p, f, V::set1(1.3333558146428443e-3f));
  p = V::fmadd(p, f, V::set1(9.6181291076284772e-3f));
  p = V::fmadd(p, f, V::set1(5.5504108664821580e-2f));
  p = V::fmadd(p, f, V::set1(2.4022650695910071e-1f));
  p = V::fmadd(p, f, V::set1(6.9314718055994531e-1f));
  p = V::fmadd(p, f, V::set1(1.f));
  return V::zero_below(V::scale_pow2(p, n), xc, -125.f);
}

}  // namespace SA_CPU_ISA
}  // namespace cpu
}  // namespace simplicial_attn
