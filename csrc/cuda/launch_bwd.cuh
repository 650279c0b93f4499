// Backward launchers. Four launches on the caller's stream, each kernel the only writer of its
// outputs (no atomics, deterministic):
//   1. delta_kernel   Delta = rowsum(dout * out)               [B, Hq, N] workspace
//   2. dq             per query tile
//   3. dk1, dv1       per k1/v1 tile, looping over the query heads of its kv head
//   4. dk2, dv2       per k2/v2 tile, likewise
// This file: the tensor-core kernels (fp16 / bf16), included by bwd_fp16.cu and bwd_bf16.cu;
// fp32 runs the SIMT kernels (launch_simt.cuh).
#pragma once

#include "bwd_dkv1_kernel.cuh"
#include "bwd_dkv2_kernel.cuh"
#include "bwd_dq_kernel.cuh"
#include "launch.cuh"
#include "launch_delta.cuh"
#include "static_switch.h"

namespace simplicial_attn::cuda {

// The backward kernels' parameters: TileParams and what they read besides the inputs.
template <class Params>
void set_grad_params(Params& p, const BwdArgs& a, int elem_bytes) {
  set_tile_params(p, a, elem_bytes);
  p.vec = p.vec && rows_16b_aligned(a.dout, elem_bytes);
  p.dout = a.dout;
  p.lse = a.lse;
  p.lse_lo = a.lse_lo;
  p.delta = a.delta;
}

template <class T, int DP>
void launch_bwd_tc(const BwdArgs& args, cudaStream_t stream) {
  const BwdArgs a = with_smaller_window_second(args);
  launch_delta<T>(a, stream);
  {
    using Cfg = DqConfig<DP>;
    DqKernelParams p;
    set_grad_params(p, a, sizeof(T));
    p.dq = a.dq;
    const Grid grid = plan_query_tiles<Cfg>(p, a.dims, a.prob);
    // One instantiation per call: determinant logits; else, with >= 16 heads packed per position
    // (head dims <= 128), kOneRow (each warp's 16 rows at one position); else the plain trilinear one.
    void (*kernel)(DqKernelParams) = &dq_kernel<T, Cfg, false, false>;
    int smem = Cfg::kSmemBytes;
    if (a.prob.determinant) {
      kernel = &dq_kernel<T, Cfg, true, false>;
      smem = Cfg::kSmemBytesDet;
    } else if constexpr (DP <= 128) {
      if (p.log2_heads >= 4) kernel = &dq_kernel<T, Cfg, false, true>;
    }
    launch_kernel("dq_kernel", DP, kernel, grid, Cfg::kThreads, smem, stream, p);
  }
  {
    using Cfg = Dkv1Config<DP>;
    Dkv1KernelParams p;
    set_grad_params(p, a, sizeof(T));
    p.dk1 = a.dk1;
    p.dv1 = a.dv1;
    const Grid grid = plan_key_tiles<Cfg>(p, a.dims, a.prob);
    launch_kernel("dkv1_kernel", DP, &dkv1_kernel<T, Cfg>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
  }
  {
    Dkv2KernelParams p;
    set_grad_params(p, a, sizeof(T));
    p.dk2 = a.dk2;
    p.dv2 = a.dv2;
    // Each logit form has its own tiles (Dkv2Config: the determinant keeps the column split at 128).
    if (a.prob.determinant) {
      using Cfg = Dkv2Config<DP, true>;
      const Grid grid = plan_key_tiles<Cfg>(p, a.dims, a.prob);
      launch_kernel("dkv2_kernel", DP, &dkv2_kernel<T, Cfg, true>, grid, Cfg::kThreads, Cfg::kSmemBytesDet, stream, p);
    } else {
      using Cfg = Dkv2Config<DP, false>;
      const Grid grid = plan_key_tiles<Cfg>(p, a.dims, a.prob);
      launch_kernel("dkv2_kernel", DP, &dkv2_kernel<T, Cfg, false>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
    }
  }
}

template <class T>
void run_bwd_tc(const BwdArgs& a, cudaStream_t stream) {
  HEADDIM_SWITCH(a.dims.D, kHeadDim, [&] { launch_bwd_tc<T, kHeadDim>(a, stream); });
}

}  // namespace simplicial_attn::cuda
