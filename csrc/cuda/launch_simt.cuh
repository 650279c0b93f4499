// Launchers of the float32 SIMT kernels (simt_kernels.cuh), included by fp32.cu only.
#pragma once

#include "launch.cuh"
#include "launch_delta.cuh"
#include "simt_kernels.cuh"
#include "static_switch.h"

namespace simplicial_attn::cuda {

template <class Args>
SimtParams simt_params(const Args& a) {
  SimtParams p{};
  set_inputs(p, a);
  p.B = a.dims.B;
  p.N = a.dims.N;
  p.Hq = a.dims.Hq;
  p.Hkv = a.dims.Hkv;
  p.group = a.dims.Hq / a.dims.Hkv;
  p.D = a.dims.D;
  p.prob = a.prob;
  return p;
}

template <int DP>
void launch_fwd_simt(const FwdArgs& a, cudaStream_t stream) {
  using Cfg = SimtConfig<DP>;
  SimtParams p = simt_params(a);
  p.out = a.out;
  p.lse = a.lse;
  p.lse_lo = a.lse_lo;
  const int64_t rows = static_cast<int64_t>(a.dims.B) * a.dims.Hq * a.dims.N;
  launch_kernel("fwd_simt_kernel", DP, &fwd_simt_kernel<Cfg>, Grid{ceil_div64(rows, Cfg::kWarps), 1, 1}, Cfg::kThreads,
                0, stream, p);
}

inline void run_fwd_simt(const FwdArgs& a, cudaStream_t stream) {
  HEADDIM_SWITCH(a.dims.D, kHeadDim, [&] { launch_fwd_simt<kHeadDim>(a, stream); });
}

template <int DP>
void launch_bwd_simt(const BwdArgs& a, cudaStream_t stream) {
  using Cfg = SimtConfig<DP>;
  launch_delta<float>(a, stream);
  SimtParams p = simt_params(a);
  p.dout = a.dout;
  p.lse = const_cast<float*>(a.lse);  // read-only in the backward kernels
  p.lse_lo = const_cast<float*>(a.lse_lo);
  p.delta = a.delta;
  p.dq = a.dq;
  const int64_t q_rows = static_cast<int64_t>(a.dims.B) * a.dims.Hq * a.dims.N;
  const int64_t kv_rows = static_cast<int64_t>(a.dims.B) * a.dims.Hkv * a.dims.N;
  launch_kernel("dq_simt_kernel", DP, &dq_simt_kernel<Cfg>, Grid{ceil_div64(q_rows, Cfg::kWarps), 1, 1}, Cfg::kThreads,
                0, stream, p);
  // dk1, dv1 (rows of key 1), then dk2, dv2 (rows of key 2): one kernel, the keys in their roles.
  for (const bool second : {false, true}) {
    p.second = second;
    p.dk = second ? a.dk2 : a.dk1;
    p.dv = second ? a.dv2 : a.dv1;
    launch_kernel("dkv_simt_kernel", DP, &dkv_simt_kernel<Cfg>, Grid{ceil_div64(kv_rows, Cfg::kWarps), 1, 1},
                  Cfg::kThreads, 0, stream, p);
  }
}

inline void run_bwd_simt(const BwdArgs& a, cudaStream_t stream) {
  HEADDIM_SWITCH(a.dims.D, kHeadDim, [&] { launch_bwd_simt<kHeadDim>(a, stream); });
}

}  // namespace simplicial_attn::cuda
