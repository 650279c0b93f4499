// One tiny kernel per device primitive of common.cuh (and per numerics helper of numerics.cuh),
// compiled on its own by tests/test_cuda_static.py (nvcc -x cu -cubin, the extension's flags) so
// that each one's SASS can be checked against the instruction it must become: LDSM.16.M88.4 vs
// LDSM.16.MT88.4, HMMA per dtype, LDGSTS with its zero-fill predicate, the DEPBAR wait counts,
// shuffle masks, MUFU for exp2 / log2, an uncontracted logit, a NaN-keeping clamp. The emulator
// never compiles the inline-PTX branches, so this is what checks them. Not part of the extension
// (setup.py builds *.cu / *.cpp only); the probes are compiled, never launched.
//
// Inputs come from global memory and results go back to it, so nothing folds away.
#include <cstdint>

#include "../common.cuh"
#include "../numerics.cuh"

using namespace simplicial_attn::cuda;

namespace {
__device__ __forceinline__ uint32_t mix(const uint32_t (&r)[4]) { return r[0] ^ r[1] ^ r[2] ^ r[3]; }
}  // namespace

extern "C" __global__ void probe_ldmatrix(const uint4* in, uint32_t* out) {
  __shared__ __align__(16) uint4 tile[32];
  tile[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  uint32_t r[4];
  ldmatrix_x4<false>(r, &tile[threadIdx.x]);
  out[threadIdx.x] = mix(r);
}

extern "C" __global__ void probe_ldmatrix_trans(const uint4* in, uint32_t* out) {
  __shared__ __align__(16) uint4 tile[32];
  tile[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  uint32_t r[4];
  ldmatrix_x4<true>(r, &tile[threadIdx.x]);
  out[threadIdx.x] = mix(r);
}

template <class T>
__device__ __forceinline__ void mma_probe(const uint32_t* in, float* out) {
  const uint32_t a[4] = {in[0], in[1], in[2], in[3]}, b[2] = {in[4], in[5]};
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  mma_acc<T>(d, a, b);
  out[threadIdx.x] = d[0] + d[1] + d[2] + d[3];
}
extern "C" __global__ void probe_mma_fp16(const uint32_t* in, float* out) {
  mma_probe<__half>(in + 6 * threadIdx.x, out);
}
extern "C" __global__ void probe_mma_bf16(const uint32_t* in, float* out) {
  mma_probe<__nv_bfloat16>(in + 6 * threadIdx.x, out);
}

// cp.async with a runtime validity flag (the zero-filling form) and with a constant one, then
// commit and the two waits the pipelined kernels use.
extern "C" __global__ void probe_cp_async(const uint4* in, const int* valid, uint4* out) {
  __shared__ __align__(16) uint4 tile[64];
  cp_async_16(&tile[threadIdx.x], in + threadIdx.x, valid[threadIdx.x] != 0);
  cp_async_commit();
  cp_async_16(&tile[32 + threadIdx.x], in + 32 + threadIdx.x, true);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x ^ 1];
  cp_async_wait<0>();
  __syncthreads();
  out[32 + threadIdx.x] = tile[32 + (threadIdx.x ^ 1)];
}

extern "C" __global__ void probe_quad_sum(const float* in, float* out) { out[threadIdx.x] = quad_sum(in[threadIdx.x]); }
extern "C" __global__ void probe_quad_max(const float* in, float* out) { out[threadIdx.x] = quad_max(in[threadIdx.x]); }
extern "C" __global__ void probe_warp_sum(const float* in, float* out) { out[threadIdx.x] = warp_sum(in[threadIdx.x]); }

extern "C" __global__ void probe_cta_sync(const float* in, float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = in[threadIdx.x];
  cta_sync();
  out[threadIdx.x] = s[threadIdx.x ^ 1];
}

extern "C" __global__ void probe_exp2(const float* in, float* out) { out[threadIdx.x] = fast_exp2(in[threadIdx.x]); }
extern "C" __global__ void probe_log2(const float* in, float* out) { out[threadIdx.x] = fast_log2(in[threadIdx.x]); }

// The logit minus the running max: a product, then a subtraction (FMUL + FADD), never one FFMA.
extern "C" __global__ void probe_logit(const float* in, float* out) {
  out[threadIdx.x] = logit(in[threadIdx.x], in[32]) - in[33];
}

// The backward's clamp t > 0 ? 0 : t must stay a select: FMNMX would drop a NaN t.
extern "C" __global__ void probe_prob_from_lse(const float* in, float* out) {
  out[threadIdx.x] = prob_from_lse(in[threadIdx.x], in[32], in[33]);
}

extern "C" __global__ void probe_warp_all(const int* in, int* out) {
  out[threadIdx.x] = warp_all(in[threadIdx.x] != 0);
}
extern "C" __global__ void probe_warp_any(const int* in, int* out) {
  out[threadIdx.x] = warp_any(in[threadIdx.x] != 0);
}

// The element-wise product of two packed pairs: one instruction, rounded once (no fp32 round trip).
extern "C" __global__ void probe_mul_pairs_fp16(const uint32_t* in, uint32_t* out) {
  out[threadIdx.x] = mul_pairs<__half>(in[2 * threadIdx.x], in[2 * threadIdx.x + 1]);
}
extern "C" __global__ void probe_mul_pairs_bf16(const uint32_t* in, uint32_t* out) {
  out[threadIdx.x] = mul_pairs<__nv_bfloat16>(in[2 * threadIdx.x], in[2 * threadIdx.x + 1]);
}
