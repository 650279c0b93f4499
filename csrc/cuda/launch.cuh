// Host-side helpers of the launchers: one launch function (device build: the CUDA runtime on the
// caller's stream, launch errors checked; emulator build: the CPU emulator), host checks, and
// the host-side planning every launcher shares.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "params.h"

#ifdef SA_EMULATE
#include "emulator/emulator.h"
#define SA_HOST_CHECK(cond, ...) \
  if (!(cond)) sa_emu::fail("host check failed: %s", #cond)
#else
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#define SA_HOST_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)
#endif

namespace simplicial_attn::cuda {

struct Grid {
  int64_t x, y, z;
};

// Launches `kernel<<<grid, threads, smem_bytes, stream>>>(params)`. Kernels that use more than the
// default 48 KiB of dynamic shared memory opt in first (a host-side attribute, no synchronisation).
// `name` and `head_dim` (the padded head dim of the instantiation, 0 for none) label the launch in
// the emulator's reports.
template <class Params>
void launch_kernel(const char* name, int head_dim, void (*kernel)(Params), Grid grid, int threads, int smem_bytes,
                   cudaStream_t stream, const Params& params) {
  SA_HOST_CHECK(grid.x >= 1 && grid.x <= INT32_MAX && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 && grid.z <= 65535,
                "simplicial_attn: problem too large for one launch of ", name, " (grid ", grid.x, " x ", grid.y, " x ",
                grid.z, ")");
#ifdef SA_EMULATE
  (void)stream;
  sa_emu::launch(name, head_dim,
                 sa_emu::Dim3{static_cast<int>(grid.x), static_cast<int>(grid.y), static_cast<int>(grid.z)},
                 sa_emu::Dim3{threads, 1, 1}, smem_bytes, [&] { kernel(params); });
#else
  (void)name;
  (void)head_dim;
  if (smem_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  }
  // (clang-format would split the launch chevrons)
  // clang-format off
  kernel<<<dim3(static_cast<unsigned>(grid.x), static_cast<unsigned>(grid.y), static_cast<unsigned>(grid.z)),
           dim3(threads), smem_bytes, stream>>>(params);
  // clang-format on
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

inline int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int log2_floor(int x) {
  int r = 0;
  while ((2 << r) <= x) ++r;
  return r;
}

inline int band_width(const Band& band) { return band.left + band.right + 1; }

// The math is symmetric in (k1, v1, w1) <-> (k2, v2, w2). The tensor-core kernels loop over the
// offsets of the second window and over blocks of the first, so the smaller window goes second.
inline bool keys_swapped(const Band& band1, const Band& band2) { return band_width(band2) > band_width(band1); }

// True when every row [b, n, h, :] of `t` starts on a 16-byte boundary, so 16-byte cp.async
// loads may be used (together with D % 8 == 0).
inline bool rows_16b_aligned(const TensorRef& t, int elem_bytes) {
  const auto aligned = [&](int64_t stride) { return (stride * elem_bytes) % 16 == 0; };
  return reinterpret_cast<uintptr_t>(t.ptr) % 16 == 0 && aligned(t.sb) && aligned(t.sn) && aligned(t.sh);
}

// Query heads per row tile of the forward / dq kernels. Sequence tiling (1) unless the group has
// >= 16 query heads per kv head: then a tile takes heads of one position (a power of two, at most
// `rows`), whose windows coincide, so no tensor-core work is spent on pairs outside them.
inline int heads_per_tile(int group, int rows) {
  if (group < 16) return 1;
  int heads = 1;
  while (heads < group && heads < rows) heads *= 2;
  return heads;
}

}  // namespace simplicial_attn::cuda
