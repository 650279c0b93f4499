// Run-time choice of the kernel flavour (dispatch.h, cpu_info.h): ATen's per-capability scheme,
// with the flavours compiled for their instruction sets in kernel_<isa>.cpp.
#include "dispatch.h"

#include <cstdlib>
#include <string>

#include "cpu_info.h"

namespace simplicial_attn {
namespace cpu {
namespace {

enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

Isa detected_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (kernels_avx512_f32() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) {
      return Isa::kAvx512;
    }
    if (kernels_avx2_f32() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kBase;
  }();
  return isa;
#else
  return Isa::kBase;
#endif
}

Isa selected_isa() {
  const Isa best = detected_isa();
  const char* env = std::getenv("SIMPLICIAL_ATTN_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  const std::string want(env);
  Isa cap;
  if (want == "base") {
    cap = Isa::kBase;
  } else if (want == "avx2") {
    cap = Isa::kAvx2;
  } else if (want == "avx512") {
    cap = Isa::kAvx512;
  } else {
    TORCH_CHECK(false, "SIMPLICIAL_ATTN_CPU_ISA must be one of base, avx2, avx512 (or unset), got '", want, "'");
  }
  return cap < best ? cap : best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "base";
  }
}

}  // namespace

template <>
const KernelSet<float>& kernels_for<float>() {
  switch (selected_isa()) {
    case Isa::kAvx512:
      return *kernels_avx512_f32();
    case Isa::kAvx2:
      return *kernels_avx2_f32();
    default:
      return *kernels_base_f32();
  }
}

template <>
const KernelSet<double>& kernels_for<double>() {
  return *kernels_base_f64();
}

const char* float_kernel_isa() { return kernels_for<float>().isa; }

const char* machine_isa() { return isa_name(detected_isa()); }

}  // namespace cpu
}  // namespace simplicial_attn
