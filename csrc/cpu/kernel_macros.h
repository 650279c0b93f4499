// Macros shared by the kernel headers. Every kernel header puts its code in the namespace
// SA_CPU_ISA, which each kernel_<isa>.cpp defines differently, so no inline function or
// template instantiation compiled for one instruction set can be merged by the linker with
// the same-named one of another (an AVX-512 copy picked for the baseline caller would crash
// on CPUs without AVX-512).
#pragma once

#ifndef SA_CPU_ISA
#error "define SA_CPU_ISA (the per-instruction-set namespace) before including the kernel headers"
#endif

#if defined(__GNUC__) || defined(__clang__)
#define SA_INLINE inline __attribute__((always_inline))
#define SA_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define SA_INLINE __forceinline
#define SA_RESTRICT __restrict
#else
#define SA_INLINE inline
#define SA_RESTRICT
#endif

// Full unrolling of the micro-kernel loops keeps its accumulators in registers.
#if defined(__clang__)
#define SA_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define SA_UNROLL _Pragma("GCC unroll 16")
#else
#define SA_UNROLL
#endif
