// The portable flavour, compiled for the baseline of the target: 4-lane vector-extension code
// (SSE2 on x86-64, NEON on arm64) for float32 on CPUs without AVX2, one-lane code for float64
// (which only has to be right, for gradcheck) and for compilers without vector extensions.
#define SA_CPU_ISA base

#include "kernel_impl.h"
#include "vec_scalar.h"
#if defined(__GNUC__) || defined(__clang__)
#include "vec_portable.h"
#endif

namespace simplicial_attn {
namespace cpu {

const KernelSet<float>* kernels_base_f32() {
#if defined(__GNUC__) || defined(__clang__)
  using V = base::VecPortable;
#else
  using V = base::VecScalar<float>;
#endif
  static const KernelSet<float> set{"base", V::W, &base::fwd_items<V>, &base::bwd_items<V>, &base::decode_items<V>};
  return &set;
}

const KernelSet<double>* kernels_base_f64() {
  using V = base::VecScalar<double>;
  static const KernelSet<double> set{"base", V::W, &base::fwd_items<V>, &base::bwd_items<V>, &base::decode_items<V>};
  return &set;
}

}  // namespace cpu
}  // namespace simplicial_attn
