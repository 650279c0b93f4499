// The choice of kernel flavour and compute type, shared by the torch glue (attention.cpp,
// decode.cpp). Not included by the per-ISA kernel files.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "kernel_args.h"

namespace simplicial_attn {
namespace cpu {

// The kernel flavour for compute type T: float picks the best instruction set the CPU and the
// build have, capped by SIMPLICIAL_ATTN_CPU_ISA=base|avx2|avx512 (read on every call, so the
// tests can run every flavour); double always runs the portable one.
template <typename T>
const KernelSet<T>& kernels_for();
template <>
const KernelSet<float>& kernels_for<float>();
template <>
const KernelSet<double>& kernels_for<double>();

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline void check_dtype(const at::Tensor& q) {
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble,
              "q must have dtype float32, bfloat16, float16 or float64 on the CPU, got ", dt);
}

// float64 inputs compute in float64, the others in float32 (lse, lse_lo and the partial
// softmax states have this dtype).
inline at::ScalarType compute_dtype(at::ScalarType dt) { return dt == at::kDouble ? at::kDouble : at::kFloat; }

// Calls fn.template operator()<T, S>() with the compute type T and the storage type S of `dt`
// (checked by check_dtype).
template <typename Fn>
auto with_types(at::ScalarType dt, const Fn& fn) {
  switch (dt) {
    case at::kDouble:
      return fn.template operator()<double, double>();
    case at::kBFloat16:
      return fn.template operator()<float, c10::BFloat16>();
    case at::kHalf:
      return fn.template operator()<float, c10::Half>();
    default:
      return fn.template operator()<float, float>();
  }
}

}  // namespace cpu
}  // namespace simplicial_attn
