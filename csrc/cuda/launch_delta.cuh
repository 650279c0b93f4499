// Launcher of the backward preprocess (delta_kernel.cuh), shared by both backward paths.
#pragma once

#include "delta_kernel.cuh"
#include "launch.cuh"

namespace simplicial_attn::cuda {

template <class T>
void launch_delta(const BwdArgs& a, cudaStream_t stream) {
  const DeltaParams p{a.dout, a.out, a.delta, a.dims.B, a.dims.N, a.dims.Hq, a.dims.D};
  const int64_t rows = static_cast<int64_t>(a.dims.B) * a.dims.Hq * a.dims.N;
  launch_kernel("delta_kernel", 0, &delta_kernel<T>, Grid{ceil_div64(rows, kDeltaWarps), 1, 1}, 32 * kDeltaWarps, 0,
                stream, p);
}

}  // namespace simplicial_attn::cuda
