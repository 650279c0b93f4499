// Host-side helpers of the launchers: one launch function (device build: the CUDA runtime on the
// caller's stream, launch errors checked; emulator build: the CPU emulator), host checks, and
// the host-side planning every launcher shares.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <utility>

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

// The call with (k1, v1, w1) and (k2, v2, w2) exchanged when keys_swapped says so: the same math
// (with_keys_swapped), with the offset loops over the smaller window. BwdArgs exchange the key
// gradients with them.
inline FwdArgs with_smaller_window_second(FwdArgs a) {
  if (keys_swapped(a.prob.band1, a.prob.band2)) {
    std::swap(a.k1, a.k2);
    std::swap(a.v1, a.v2);
    a.prob = with_keys_swapped(a.prob);
  }
  return a;
}
inline BwdArgs with_smaller_window_second(BwdArgs a) {
  if (keys_swapped(a.prob.band1, a.prob.band2)) {
    std::swap(a.k1, a.k2);
    std::swap(a.v1, a.v2);
    std::swap(a.dk1, a.dk2);
    std::swap(a.dv1, a.dv2);
    a.prob = with_keys_swapped(a.prob);
  }
  return a;
}

// Passes the five inputs of a call (q, k1, k2, v1, v2) on to a kernel's parameters.
template <class Params, class Args>
void set_inputs(Params& p, const Args& a) {
  p.q = a.q;
  p.k1 = a.k1;
  p.k2 = a.k2;
  p.v1 = a.v1;
  p.v2 = a.v2;
}

// The TileParams fields of a call (already with_smaller_window_second) for 16-bit elements of
// `elem_bytes` bytes; pos_tiles is the planner's (plan_query_tiles / plan_key_tiles).
template <class Args>
void set_tile_params(TileParams& p, const Args& a, int elem_bytes) {
  set_inputs(p, a);
  p.N = a.dims.N;
  p.Hq = a.dims.Hq;
  p.group = a.dims.Hq / a.dims.Hkv;
  p.D = a.dims.D;
  p.prob = a.prob;
  p.vec = a.dims.D % 8 == 0;
  for (const TensorRef* t : {&a.q, &a.k1, &a.k2, &a.v1, &a.v2}) p.vec = p.vec && rows_16b_aligned(*t, elem_bytes);
}

// Query tiles (fwd, dq) of Cfg::kRows rows: head packing or sequence tiling (heads_per_tile), and
// the grid: (sequence, position tile) x (kv head, head block) x output column blocks.
template <class Cfg>
Grid plan_query_tiles(QueryTileParams& p, const Dims& d, const ProblemDesc& prob) {
  const int heads = heads_per_tile(p.group, Cfg::kRows);
  p.log2_heads = log2_floor(heads);
  p.head_blocks = static_cast<int>(ceil_div64(p.group, heads));
  p.pos_tiles = static_cast<int>(ceil_div64(prob.max_seqlen, Cfg::kRows / heads));
  return Grid{static_cast<int64_t>(p.pos_tiles) * prob.num_seqs, static_cast<int64_t>(d.Hkv) * p.head_blocks,
              Cfg::kHeadDim / Cfg::kOutCols};
}

// Key tiles (dk1/dv1, dk2/dv2) of Cfg::kRows positions: (sequence, position tile) x kv head x
// output column blocks.
template <class Cfg>
Grid plan_key_tiles(TileParams& p, const Dims& d, const ProblemDesc& prob) {
  p.pos_tiles = static_cast<int>(ceil_div64(prob.max_seqlen, Cfg::kRows));
  return Grid{static_cast<int64_t>(p.pos_tiles) * prob.num_seqs, d.Hkv, Cfg::kHeadDim / Cfg::kOutCols};
}

}  // namespace simplicial_attn::cuda
