// Forward launcher of the tensor-core kernel (fp16 / bf16), included by fwd_fp16.cu and fwd_bf16.cu.
#pragma once

#include "fwd_kernel.cuh"
#include "launch.cuh"
#include "static_switch.h"

namespace simplicial_attn::cuda {

template <class T, int DP>
void launch_fwd_tc(const FwdArgs& args, cudaStream_t stream) {
  using Cfg = FwdConfig<DP>;
  const FwdArgs a = with_smaller_window_second(args);
  FwdKernelParams p;
  set_tile_params(p, a, sizeof(T));
  p.out = a.out;
  p.lse = a.lse;
  p.lse_lo = a.lse_lo;
  const Grid grid = plan_query_tiles<Cfg>(p, a.dims, a.prob);
  // The k2/v2 regions of a tile of (kRows >> log2_heads) positions.
  const int smem = Cfg::smem_bytes((Cfg::kRows >> p.log2_heads) + Cfg::kChunkU - 1);
  // One instantiation per call: determinant logits; else, with >= 16 heads packed per position,
  // kOneRow (each warp's 16 rows at one position); else the plain trilinear kernel.
  void (*kernel)(FwdKernelParams) = &fwd_kernel<T, Cfg, false, false>;
  if (a.prob.determinant) {
    kernel = &fwd_kernel<T, Cfg, true, false>;
  } else if constexpr (Cfg::kHoldB) {
    if (p.log2_heads >= 4) kernel = &fwd_kernel<T, Cfg, false, true>;
  }
  launch_kernel("fwd_kernel", DP, kernel, grid, Cfg::kThreads, smem, stream, p);
}

template <class T>
void run_fwd_tc(const FwdArgs& a, cudaStream_t stream) {
  HEADDIM_SWITCH(a.dims.D, kHeadDim, [&] { launch_fwd_tc<T, kHeadDim>(a, stream); });
}

}  // namespace simplicial_attn::cuda
