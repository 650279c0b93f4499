// Forward launcher of the tensor-core kernel (fp16 / bf16), included by fwd_fp16.cu and fwd_bf16.cu.
#pragma once

#include "fwd_kernel.cuh"
#include "launch.cuh"
#include "static_switch.h"

namespace simplicial_attn::cuda {

template <class T, int DP>
void launch_fwd_tc(const FwdArgs& a, cudaStream_t stream) {
  using Cfg = FwdConfig<DP>;
  const bool swap = keys_swapped(a.prob.band1, a.prob.band2);
  FwdKernelParams p;
  p.q = a.q;
  p.k1 = swap ? a.k2 : a.k1;
  p.k2 = swap ? a.k1 : a.k2;
  p.v1 = swap ? a.v2 : a.v1;
  p.v2 = swap ? a.v1 : a.v2;
  p.prob = swap ? with_keys_swapped(a.prob) : a.prob;
  p.out = a.out;
  p.lse = a.lse;
  p.lse_lo = a.lse_lo;
  p.N = a.dims.N;
  p.Hq = a.dims.Hq;
  p.group = a.dims.Hq / a.dims.Hkv;
  p.D = a.dims.D;
  const int heads = heads_per_tile(p.group, Cfg::kRows);
  p.log2_heads = log2_floor(heads);
  p.head_blocks = static_cast<int>(ceil_div64(p.group, heads));
  p.pos_tiles = static_cast<int>(ceil_div64(a.prob.max_seqlen, Cfg::kRows / heads));
  p.vec = a.dims.D % 8 == 0;
  for (const TensorRef* t : {&a.q, &a.k1, &a.k2, &a.v1, &a.v2}) p.vec = p.vec && rows_16b_aligned(*t, sizeof(T));
  const Grid grid{static_cast<int64_t>(p.pos_tiles) * a.prob.num_seqs, static_cast<int64_t>(a.dims.Hkv) * p.head_blocks,
                  DP / Cfg::kOutCols};
  launch_kernel("fwd_kernel", DP, &fwd_kernel<T, Cfg>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
}

template <class T>
void run_fwd_tc(const FwdArgs& a, cudaStream_t stream) {
  HEADDIM_SWITCH(a.dims.D, kHeadDim, [&] { launch_fwd_tc<T, kHeadDim>(a, stream); });
}

}  // namespace simplicial_attn::cuda
