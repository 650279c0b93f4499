// Launchers of the float32 SIMT kernels (simt_kernels.cuh), included by fp32.cu only.
#pragma once

#include <utility>

#include "launch.cuh"
#include "launch_delta.cuh"
#include "simt_kernels.cuh"
#include "static_switch.h"

namespace simplicial_attn::cuda {

inline SimtParams simt_params(const Dims& d, const Band& band1, const Band& band2, float scale) {
  SimtParams p{};
  p.B = d.B;
  p.N = d.N;
  p.Hq = d.Hq;
  p.Hkv = d.Hkv;
  p.group = d.Hq / d.Hkv;
  p.D = d.D;
  p.band1 = band1;
  p.band2 = band2;
  p.scale = scale;
  return p;
}

template <int DP>
void launch_fwd_simt(const FwdArgs& a, cudaStream_t stream) {
  using Cfg = SimtConfig<DP>;
  SimtParams p = simt_params(a.dims, a.band1, a.band2, a.scale);
  p.q = a.q;
  p.k1 = a.k1;
  p.k2 = a.k2;
  p.v1 = a.v1;
  p.v2 = a.v2;
  p.out = a.out;
  p.lse = a.lse;
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
  SimtParams p = simt_params(a.dims, a.band1, a.band2, a.scale);
  p.q = a.q;
  p.dout = a.dout;
  p.k1 = a.k1;
  p.k2 = a.k2;
  p.v1 = a.v1;
  p.v2 = a.v2;
  p.lse = const_cast<float*>(a.lse);  // read-only in the backward kernels
  p.delta = a.delta;
  p.dq = a.dq;
  const int64_t q_rows = static_cast<int64_t>(a.dims.B) * a.dims.Hq * a.dims.N;
  const int64_t kv_rows = static_cast<int64_t>(a.dims.B) * a.dims.Hkv * a.dims.N;
  launch_kernel("dq_simt_kernel", DP, &dq_simt_kernel<Cfg>, Grid{ceil_div64(q_rows, Cfg::kWarps), 1, 1}, Cfg::kThreads,
                0, stream, p);
  p.dk = a.dk1;
  p.dv = a.dv1;
  launch_kernel("dkv_simt_kernel", DP, &dkv_simt_kernel<Cfg>, Grid{ceil_div64(kv_rows, Cfg::kWarps), 1, 1},
                Cfg::kThreads, 0, stream, p);
  // dk2, dv2: the same kernel with the two keys' roles exchanged (the math is symmetric).
  std::swap(p.k1, p.k2);
  std::swap(p.v1, p.v2);
  std::swap(p.band1, p.band2);
  p.dk = a.dk2;
  p.dv = a.dv2;
  launch_kernel("dkv_simt_kernel", DP, &dkv_simt_kernel<Cfg>, Grid{ceil_div64(kv_rows, Cfg::kWarps), 1, 1},
                Cfg::kThreads, 0, stream, p);
}

inline void run_bwd_simt(const BwdArgs& a, cudaStream_t stream) {
  HEADDIM_SWITCH(a.dims.D, kHeadDim, [&] { launch_bwd_simt<kHeadDim>(a, stream); });
}

}  // namespace simplicial_attn::cuda
