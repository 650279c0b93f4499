// What the CPU kernels run on this machine, for build_info() in csrc/bindings.cpp.
#pragma once

namespace simplicial_attn {
namespace cpu {

// The instruction-set flavour a float32/bf16/fp16 call uses now: "avx512", "avx2" or "base"
// (the best the CPU and the build support, capped by SIMPLICIAL_ATTN_CPU_ISA when set).
// float64 always runs the "base" flavour.
const char* float_kernel_isa();

// The best flavour this CPU and this build support, whatever SIMPLICIAL_ATTN_CPU_ISA says:
// the machine's ceiling (fma_peak.h) is measured with it.
const char* machine_isa();

}  // namespace cpu
}  // namespace simplicial_attn
