// The AVX-512F flavour (16 float lanes, 32 registers): float32/bf16/fp16 calls on CPUs that
// have it. Everything compiled for AVX-512 lives between SA_TARGET_BEGIN and SA_TARGET_END, in
// namespace `avx512`; the headers it needs are included first so they keep the baseline ISA.
#include "isa_target.h"
#include "kernel_args.h"

#if SA_TARGET_SUPPORTED
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>

#define SA_CPU_ISA avx512
SA_TARGET_BEGIN("avx512f,avx512dq,avx2,fma")
#include "kernel_impl.h"
#include "vec_avx512.h"
SA_TARGET_END

namespace simplicial_attn {
namespace cpu {

const KernelSet<float>* kernels_avx512_f32() {
  using V = avx512::VecAvx512;
  static const KernelSet<float> set{"avx512", V::W, &avx512::fwd_items<V>, &avx512::bwd_items<V>,
                                    &avx512::decode_items<V>};
  return &set;
}

}  // namespace cpu
}  // namespace simplicial_attn

#else

const simplicial_attn::cpu::KernelSet<float>* simplicial_attn::cpu::kernels_avx512_f32() { return nullptr; }

#endif
