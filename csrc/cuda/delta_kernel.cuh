// Backward preprocess: Delta[b, h, i] = sum_d dout[b, i, h, d] * out[b, i, h, d] in fp32, one warp
// per row, written to a contiguous [B, Hq, N] float32 workspace that every backward kernel reads.
#pragma once

#include "addressing.cuh"

namespace simplicial_attn::cuda {

struct DeltaParams {
  TensorRef dout, out;
  float* delta;
  int B, N, Hq, D;
};

constexpr int kDeltaWarps = 4;

template <class T>
SA_GLOBAL(32 * kDeltaWarps)
delta_kernel(const DeltaParams p) {
  const int64_t row = static_cast<int64_t>(block_x()) * kDeltaWarps + warp_id();  // (b, h, i), i fastest
  SA_PATH(row >= static_cast<int64_t>(p.B) * p.Hq * p.N, "tail: warps past the last row");
  if (row >= static_cast<int64_t>(p.B) * p.Hq * p.N) return;  // whole warp; no barrier follows
  const int i = static_cast<int>(row % p.N);
  const int h = static_cast<int>((row / p.N) % p.Hq);
  const int b = static_cast<int>(row / (static_cast<int64_t>(p.N) * p.Hq));
  const T* dout = row_ptr<T>(p.dout, b, i, h);
  const T* out = row_ptr<T>(p.out, b, i, h);
  SA_PATH(lane_id() >= p.D, "lanes past D");
  SA_PATH(lane_id() + 32 < p.D, "several elements per lane");
  float s = 0.f;
  for (int d = lane_id(); d < p.D; d += 32) s += Elem<T>::to_float(gload(dout + d)) * Elem<T>::to_float(gload(out + d));
  s = warp_sum(s);
  if (lane_id() == 0) gstore(p.delta + row, s);
}

}  // namespace simplicial_attn::cuda
