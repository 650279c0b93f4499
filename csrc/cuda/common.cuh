// Device primitives: the only file with inline PTX or CUDA intrinsics.
//
// Every kernel touches hardware only through the functions below. Compiled by nvcc they are the
// PTX they name; compiled with -DSA_EMULATE by a host compiler they call the CPU emulator
// (emulator/emulator.h), which runs the same kernel code and checks bounds, races and barrier
// agreement. So the kernels are tested here although no GPU is available.
//
// Fragment layouts of mma.m16n8k16 (PTX ISA 9.7.14.5.8), lane = 4 * g + t:
//   A 16x16 (row-major): register i holds the pair (row g + 8*(i & 1), cols 2t + 8*(i >> 1) + {0, 1})
//   B 16x8  (k x n):     register i holds the pair (rows k = 2t + 8*i + {0, 1}, col n = g)
//   C 16x8  fp32:        c[i] is (row g + 8*(i >> 1), col 2t + (i & 1))
// A pair is packed low half first (the lower column / row index in the low 16 bits).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "simplicial_attn's CUDA kernels need sm_80 or newer (bf16 mma.sync, cp.async); set TORCH_CUDA_ARCH_LIST >= 8.0"
#endif

// Device code for sm_90 (Hopper, where the Triton kernels are the fast path and these the
// fallback) and for sm_86 (A10G; sm_89 runs it too): ptxas allocates registers differently there,
// so a kernel may keep a form that frees registers where the sm_80 form spills (the kernels say
// where). Host and emulator code see neither: the emulator runs the sm_80 forms.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
inline constexpr bool kSm90Device = true;
#else
inline constexpr bool kSm90Device = false;
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 860
inline constexpr bool kSm86Device = true;
#else
inline constexpr bool kSm86Device = false;
#endif

#ifdef SA_EMULATE
#include <cmath>
#include <source_location>

#include "emulator/emulator.h"
#define SA_DEV inline
#define SA_GLOBAL(threads) void
// Emulator builds pass every collective its call site (sa_emu::Site: the chain of source
// locations from the kernel down), so lanes meeting at different calls are reported even when
// both go through one helper. A function with a collective inside takes SA_SITE_ARG (after other
// parameters) or SA_SITE_ONLY (alone) and passes SA_SITE_NEXT / SA_SITE_NEXT_ONLY on to what it
// calls. Device builds see none of it.
#define SA_SITE_ARG , sa_emu::Site site = std::source_location::current()
#define SA_SITE_ONLY sa_emu::Site site = std::source_location::current()
#define SA_SITE_NEXT , site.then(std::source_location::current())
#define SA_SITE_NEXT_ONLY site.then(std::source_location::current())
// Marks a code path for the emulator's coverage counts (tests/test_cuda_emulated.py fails if a
// marked path of a shipped kernel is never run); device builds compile it to nothing, the
// condition included.
#define SA_PATH(cond, name)           \
  do {                                \
    if (cond) sa_emu::path_hit(name); \
  } while (0)
#else
#define SA_DEV __device__ __forceinline__
#define SA_GLOBAL(threads) __global__ void __launch_bounds__(threads, 1)
#define SA_SITE_ARG
#define SA_SITE_ONLY
#define SA_SITE_NEXT
#define SA_SITE_NEXT_ONLY
#define SA_PATH(cond, name) \
  do {                      \
  } while (0)
#endif

namespace simplicial_attn::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

SA_DEV int ceil_div(int a, int b) { return (a + b - 1) / b; }
SA_DEV int imin(int a, int b) { return a < b ? a : b; }
SA_DEV int imax(int a, int b) { return a > b ? a : b; }

// ---------------------------------------------------------------------------------------------
// Thread identity and barriers.

SA_DEV int thread_id() {
#ifdef SA_EMULATE
  return sa_emu::thread_x();
#else
  return static_cast<int>(threadIdx.x);
#endif
}
SA_DEV int lane_id() { return thread_id() & 31; }
SA_DEV int warp_id() { return thread_id() >> 5; }

SA_DEV int block_x() {
#ifdef SA_EMULATE
  return sa_emu::block_idx().x;
#else
  return static_cast<int>(blockIdx.x);
#endif
}
SA_DEV int block_y() {
#ifdef SA_EMULATE
  return sa_emu::block_idx().y;
#else
  return static_cast<int>(blockIdx.y);
#endif
}
SA_DEV int block_z() {
#ifdef SA_EMULATE
  return sa_emu::block_idx().z;
#else
  return static_cast<int>(blockIdx.z);
#endif
}

// __syncthreads: every thread of the CTA must reach the same call.
SA_DEV void cta_sync(SA_SITE_ONLY) {
#ifdef SA_EMULATE
  sa_emu::cta_sync(site);
#else
  __syncthreads();
#endif
}

// The sum of `v` over the 4 lanes of a quad (lanes 4g .. 4g+3), which share a fragment row.
SA_DEV float quad_sum(float v SA_SITE_ARG) {
#ifdef SA_EMULATE
  v += sa_emu::shfl_xor(v, 1, SA_SITE_NEXT_ONLY);
  v += sa_emu::shfl_xor(v, 2, SA_SITE_NEXT_ONLY);
#else
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
#endif
  return v;
}

SA_DEV float quad_max(float v SA_SITE_ARG) {
#ifdef SA_EMULATE
  v = std::fmax(v, sa_emu::shfl_xor(v, 1, SA_SITE_NEXT_ONLY));
  v = std::fmax(v, sa_emu::shfl_xor(v, 2, SA_SITE_NEXT_ONLY));
#else
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
#endif
  return v;
}

// v of lane (lane ^ mask): every lane of the warp must call it (the head sums' reduce-scatter).
SA_DEV float shuffle_xor(float v, int mask SA_SITE_ARG) {
#ifdef SA_EMULATE
  return sa_emu::shfl_xor(v, mask, SA_SITE_NEXT_ONLY);
#else
  return __shfl_xor_sync(0xffffffffu, v, mask);
#endif
}

// The sum of `v` over the warp; the butterfly gives every lane the same bits (a + b == b + a).
SA_DEV float warp_sum(float v SA_SITE_ARG) {
#pragma unroll
  for (int mask = 16; mask >= 1; mask >>= 1) {
#ifdef SA_EMULATE
    v += sa_emu::shfl_xor(v, mask, SA_SITE_NEXT_ONLY);
#else
    v += __shfl_xor_sync(0xffffffffu, v, mask);
#endif
  }
  return v;
}

// Whether `pred` holds on every lane of the warp (warp_all) or on some lane (warp_any): a
// warp-uniform answer for a branch. Every lane of the warp must call it.
SA_DEV bool warp_all(bool pred SA_SITE_ARG) {
#ifdef SA_EMULATE
  float v = pred ? 1.f : 0.f;
  for (int mask = 16; mask >= 1; mask >>= 1) v = std::fmin(v, sa_emu::shfl_xor(v, mask, SA_SITE_NEXT_ONLY));
  return v != 0.f;
#else
  return __all_sync(0xffffffffu, pred);
#endif
}
SA_DEV bool warp_any(bool pred SA_SITE_ARG) {
#ifdef SA_EMULATE
  float v = pred ? 1.f : 0.f;
  for (int mask = 16; mask >= 1; mask >>= 1) v = std::fmax(v, sa_emu::shfl_xor(v, mask, SA_SITE_NEXT_ONLY));
  return v != 0.f;
#else
  return __any_sync(0xffffffffu, pred);
#endif
}

SA_DEV float fast_exp2(float x) {
#ifdef SA_EMULATE
  return sa_emu::exp2f_emu(x);
#else
  return exp2f(x);  // ex2.approx under --use_fast_math: exp2(-inf) = 0
#endif
}

SA_DEV float fast_log2(float x) {
#ifdef SA_EMULATE
  return sa_emu::log2f_emu(x);
#else
  return log2f(x);
#endif
}

// x is neither infinite nor NaN (no finite-math assumption under --use_fast_math).
SA_DEV bool is_finite(float x) {
#ifdef SA_EMULATE
  return std::isfinite(x);
#else
  return isfinite(x);
#endif
}

// a * b rounded once, never contracted with a following add into an fma (nvcc fuses a plain
// a * b - c under -fmad=true, its default, and so does the emulator's build): the softmax needs
// the rounded logit (numerics.cuh).
SA_DEV float mul_rn(float a, float b) {
#ifdef SA_EMULATE
  float r = a * b;
  asm("" : "+x"(r));  // an opaque value: the host compiler cannot fuse it into an fma either
  return r;
#else
  return __fmul_rn(a, b);
#endif
}

// x, opaque to the compiler: a value computed from it inside a loop stays there instead of being
// hoisted into a register for the whole loop (where registers, not instructions, are scarce).
SA_DEV int opaque(int x) {
#ifdef SA_EMULATE
  asm volatile("" : "+r"(x));
#else
  asm volatile("mov.b32 %0, %0;" : "+r"(x));
#endif
  return x;
}

// ---------------------------------------------------------------------------------------------
// Memory. Global accesses go through gload / gstore, shared accesses through sload / sstore (or
// the collective ldmatrix and cp.async), so the emulator sees and checks each of them.

SA_DEV char* dynamic_smem() {
#ifdef SA_EMULATE
  return sa_emu::dynamic_smem();
#else
  extern __shared__ __align__(16) char smem_buffer[];
  return smem_buffer;
#endif
}

template <class V>
SA_DEV V gload(const V* p) {
#ifdef SA_EMULATE
  sa_emu::global_read(p, sizeof(V));
#endif
  return *p;
}

template <class V>
SA_DEV void gstore(V* p, V v) {
#ifdef SA_EMULATE
  sa_emu::global_write(p, sizeof(V));
#endif
  *p = v;
}

template <class V>
SA_DEV V sload(const V* p) {
#ifdef SA_EMULATE
  sa_emu::smem_read(p, sizeof(V));
#endif
  return *p;
}

template <class V>
SA_DEV void sstore(V* p, V v) {
#ifdef SA_EMULATE
  sa_emu::smem_write(p, sizeof(V));
#endif
  *p = v;
}

#ifndef SA_EMULATE
SA_DEV uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
#endif

// Copies 16 bytes global -> shared without staging in registers; with valid == false it writes
// 16 zero bytes and reads nothing (src-size 0). Both addresses must be 16-byte aligned.
SA_DEV void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
#ifdef SA_EMULATE
  sa_emu::cp_async_16(smem_dst, gmem_src, valid);
#else
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem_dst)), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
#endif
}

SA_DEV void cp_async_commit() {
#ifdef SA_EMULATE
  sa_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still in flight. Other threads see
// the data only after a following cta_sync().
template <int N>
SA_DEV void cp_async_wait() {
#ifdef SA_EMULATE
  sa_emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// ldmatrix.x4: lane l passes the address of row (l % 8) of 8x8 matrix (l / 8); r[i] receives
// matrix i in the mma fragment layout: (row l/4, cols 2(l%4)+{0,1}), or with kTrans the
// transposed pair (rows 2(l%4)+{0,1}, col l/4).
template <bool kTrans>
SA_DEV void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr SA_SITE_ARG) {
#ifdef SA_EMULATE
  sa_emu::ldmatrix_x4(r, row_addr, kTrans, site);
#else
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row_addr))
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row_addr))
                 : "memory");
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// 16-bit element types: packing pairs for the mma operands.

template <class T>
struct Elem;

template <>
struct Elem<__half> {
  using Pair = __half2;
  static constexpr bool kBf16 = false;
  SA_DEV static uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
  }
  SA_DEV static float2 unpack(uint32_t u) {
    __half2 h;
    memcpy(&h, &u, 4);
    return __half22float2(h);
  }
  SA_DEV static float to_float(__half x) { return __half2float(x); }
  SA_DEV static __half from_float(float x) { return __float2half_rn(x); }
};

template <>
struct Elem<__nv_bfloat16> {
  using Pair = __nv_bfloat162;
  static constexpr bool kBf16 = true;
  SA_DEV static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
  }
  SA_DEV static float2 unpack(uint32_t u) {
    __nv_bfloat162 h;
    memcpy(&h, &u, 4);
    return __bfloat1622float2(h);
  }
  SA_DEV static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  SA_DEV static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

template <>
struct Elem<float> {
  SA_DEV static float to_float(float x) { return x; }
  SA_DEV static float from_float(float x) { return x; }
};

// Element-wise product of two packed pairs, rounded once to T. The product of two 16-bit values
// is exact in fp32, so rounding it to T there (the emulator) and one HMUL2 (fp16) or
// HFMA2.BF16 with a -0 addend (bf16 on sm_80; mul.rn: never contracted) give the same bits.
template <class T>
SA_DEV uint32_t mul_pairs(uint32_t x, uint32_t y) {
#ifdef SA_EMULATE
  const float2 a = Elem<T>::unpack(x), b = Elem<T>::unpack(y);
  return Elem<T>::pack(a.x * b.x, a.y * b.y);
#else
  using Pair = typename Elem<T>::Pair;
  Pair a, b;
  memcpy(&a, &x, 4);
  memcpy(&b, &y, 4);
  const Pair c = __hmul2_rn(a, b);
  uint32_t u;
  memcpy(&u, &c, 4);
  return u;
#endif
}

// d = a @ b + c on tensor cores, fp32 accumulation (fragment layouts: see the top of this file).
template <class T>
SA_DEV void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4] SA_SITE_ARG) {
#ifdef SA_EMULATE
  sa_emu::mma_16816(d, a, b, c, Elem<T>::kBf16, site);
#else
  if constexpr (Elem<T>::kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
#endif
}

// In-place accumulate: c += a @ b.
template <class T>
SA_DEV void mma_acc(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2] SA_SITE_ARG) {
  mma_16816<T>(c, a, b, c SA_SITE_NEXT);
}

}  // namespace simplicial_attn::cuda
