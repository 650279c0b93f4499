// The AVX2 + FMA flavour (8 float lanes, 16 registers): float32/bf16/fp16 calls on CPUs that
// have it. Everything compiled for AVX2 lives between SA_TARGET_BEGIN and SA_TARGET_END, in
// namespace `avx2`; the headers it needs are included first so they keep the baseline ISA.
#include "isa_target.h"
#include "kernel_args.h"

#if SA_TARGET_SUPPORTED
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>

#define SA_CPU_ISA avx2
SA_TARGET_BEGIN("avx2,fma")
#include "kernel_impl.h"
#include "vec_avx2.h"
SA_TARGET_END

namespace simplicial_attn {
namespace cpu {

const KernelSet<float>* kernels_avx2_f32() {
  using V = avx2::VecAvx2;
  static const KernelSet<float> set{"avx2", V::W, &avx2::fwd_items<V>, &avx2::bwd_items<V>, &avx2::decode_items<V>};
  return &set;
}

}  // namespace cpu
}  // namespace simplicial_attn

#else

const simplicial_attn::cpu::KernelSet<float>* simplicial_attn::cpu::kernels_avx2_f32() { return nullptr; }

#endif
