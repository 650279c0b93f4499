// Backward launchers. Four launches on the caller's stream, each kernel the only writer of its
// outputs (no atomics, deterministic):
//   1. delta_kernel   Delta = rowsum(dout * out)               [B, Hq, N] workspace
//   2. dq             per query tile
//   3. dk1, dv1       per k1/v1 tile, looping over the query heads of its kv head
//   4. dk2, dv2       per k2/v2 tile, likewise
// This file: the tensor-core kernels (fp16 / bf16), included by bwd_fp16.cu and bwd_bf16.cu;
// fp32 runs the SIMT kernels (launch_simt.cuh).
#pragma once

#include <utility>

#include "bwd_dkv1_kernel.cuh"
#include "bwd_dkv2_kernel.cuh"
#include "bwd_dq_kernel.cuh"
#include "launch.cuh"
#include "launch_delta.cuh"
#include "static_switch.h"

namespace simplicial_attn::cuda {

// The backward with (k1, v1, dk1, dv1, w1) and (k2, v2, dk2, dv2, w2) exchanged when w2 > w1 (see
// keys_swapped): the same math (with_keys_swapped), with the offset loops over the smaller window.
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

// The fields every tensor-core backward kernel's parameters share.
template <class Params>
void set_common(Params& p, const BwdArgs& a, int group, bool vec) {
  p.q = a.q;
  p.dout = a.dout;
  p.k1 = a.k1;
  p.k2 = a.k2;
  p.v1 = a.v1;
  p.v2 = a.v2;
  p.lse = a.lse;
  p.lse_lo = a.lse_lo;
  p.delta = a.delta;
  p.N = a.dims.N;
  p.Hq = a.dims.Hq;
  p.group = group;
  p.D = a.dims.D;
  p.prob = a.prob;
  p.vec = vec;
}

template <class T, int DP>
void launch_bwd_tc(const BwdArgs& args, cudaStream_t stream) {
  const BwdArgs a = with_smaller_window_second(args);
  const int group = a.dims.Hq / a.dims.Hkv, seqs = a.prob.num_seqs, len = a.prob.max_seqlen;
  bool vec = a.dims.D % 8 == 0;
  for (const TensorRef* t : {&a.dout, &a.q, &a.k1, &a.k2, &a.v1, &a.v2}) vec = vec && rows_16b_aligned(*t, sizeof(T));
  launch_delta<T>(a, stream);
  {
    using Cfg = DqConfig<DP>;
    DqKernelParams p;
    set_common(p, a, group, vec);
    p.dq = a.dq;
    const int heads = heads_per_tile(group, Cfg::kRows);
    p.log2_heads = log2_floor(heads);
    p.head_blocks = static_cast<int>(ceil_div64(group, heads));
    p.pos_tiles = static_cast<int>(ceil_div64(len, Cfg::kRows / heads));
    const Grid grid{static_cast<int64_t>(p.pos_tiles) * seqs, static_cast<int64_t>(a.dims.Hkv) * p.head_blocks,
                    DP / Cfg::kOutCols};
    if (a.prob.determinant)
      launch_kernel("dq_kernel", DP, &dq_kernel<T, Cfg, true>, grid, Cfg::kThreads, Cfg::kSmemBytesDet, stream, p);
    else
      launch_kernel("dq_kernel", DP, &dq_kernel<T, Cfg, false>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
  }
  {
    using Cfg = Dkv1Config<DP>;
    Dkv1KernelParams p;
    set_common(p, a, group, vec);
    p.dk1 = a.dk1;
    p.dv1 = a.dv1;
    p.pos_tiles = static_cast<int>(ceil_div64(len, Cfg::kRows));
    const Grid grid{static_cast<int64_t>(p.pos_tiles) * seqs, a.dims.Hkv, DP / Cfg::kOutCols};
    launch_kernel("dkv1_kernel", DP, &dkv1_kernel<T, Cfg>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
  }
  {
    using Cfg = Dkv2Config<DP>;
    Dkv2KernelParams p;
    set_common(p, a, group, vec);
    p.dk2 = a.dk2;
    p.dv2 = a.dv2;
    p.pos_tiles = static_cast<int>(ceil_div64(len, Cfg::kRows));
    const Grid grid{static_cast<int64_t>(p.pos_tiles) * seqs, a.dims.Hkv, DP / Cfg::kOutCols};
    if (a.prob.determinant)
      launch_kernel("dkv2_kernel", DP, &dkv2_kernel<T, Cfg, true>, grid, Cfg::kThreads, Cfg::kSmemBytesDet, stream, p);
    else
      launch_kernel("dkv2_kernel", DP, &dkv2_kernel<T, Cfg, false>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
  }
}

template <class T>
void run_bwd_tc(const BwdArgs& a, cudaStream_t stream) {
  HEADDIM_SWITCH(a.dims.D, kHeadDim, [&] { launch_bwd_tc<T, kHeadDim>(a, stream); });
}

}  // namespace simplicial_attn::cuda
