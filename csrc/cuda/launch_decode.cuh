// Launchers of the decode kernels (decode_kernel.cuh), included by decode.cu.
#pragma once

#include "decode_kernel.cuh"
#include "launch.cuh"
#include "static_switch.h"

namespace simplicial_attn::cuda {

template <class T, int DP>
void launch_decode(const DecodeArgs& a, cudaStream_t stream) {
  using Cfg = DecodeConfig<DP>;
  DecodeParams p;
  set_inputs(p, a);
  p.out = a.out;
  p.lse = a.lse;
  p.cache_seqlens = a.cache_seqlens;
  p.B = a.B;
  p.Nq = a.Nq;
  p.Hq = a.Hq;
  p.group = a.Hq / a.Hkv;
  p.D = a.D;
  p.C1 = a.C1;
  p.C2 = a.C2;
  p.prob = a.prob;
  p.splits = decode_splits(a.prob.band1);
  const int64_t rows = static_cast<int64_t>(a.B) * a.Nq * a.Hq;
  p.partial_acc = a.workspace;
  p.partial_ml = a.workspace + rows * p.splits * a.D;
  launch_kernel("decode_split_kernel", DP, &decode_split_kernel<T, Cfg>,
                Grid{ceil_div64(rows * p.splits, Cfg::kWarps), 1, 1}, Cfg::kThreads, 0, stream, p);
  launch_kernel("decode_combine_kernel", DP, &decode_combine_kernel<T, Cfg>, Grid{ceil_div64(rows, Cfg::kWarps), 1, 1},
                Cfg::kThreads, 0, stream, p);
}

template <class T>
void run_decode_t(const DecodeArgs& a, cudaStream_t stream) {
  HEADDIM_SWITCH(a.D, kHeadDim, [&] { launch_decode<T, kHeadDim>(a, stream); });
}

}  // namespace simplicial_attn::cuda
