// Plain structs that pass a call from the host (api.cpp, or the emulator's driver.cc) to the
// launchers (launch.cuh) and on to the kernels. No torch, no CUDA types: both sides include it.
#pragma once

#include <cstdint>

namespace simplicial_attn::cuda {

enum class DType { kHalf, kBFloat16, kFloat };

// A [B, N, H, D] tensor: data pointer and element strides of the first three dims; D has unit
// stride (api.cpp makes a tensor contiguous when it does not).
struct TensorRef {
  const void* ptr;
  int64_t sb, sn, sh;
};
struct MutTensorRef {
  void* ptr;
  int64_t sb, sn, sh;
};

// The window of query position i as a band [i - left, i + right] (clipped to [0, N) by the
// kernels):  causal: left = w - 1, right = 0;  centred: left = w / 2, right = w - 1 - w / 2.
struct Band {
  int left, right;
};

// Kernel windows for user window w (CONTRACT: w >= 1; at most N (causal) or 2N - 1 (centred)
// after the Python normalisation; larger ones are clipped here for direct torch.ops callers).
inline Band make_band(int64_t w, int64_t n, bool causal) {
  const int64_t full = causal ? n : 2 * n - 1;
  const int64_t ww = w < full ? w : full;
  if (causal) return Band{static_cast<int>(ww - 1), 0};
  return Band{static_cast<int>(ww / 2), static_cast<int>(ww - 1 - ww / 2)};
}

struct Dims {
  int B, N, Hq, Hkv, D;
};

// fwd(q, k1, k2, v1, v2) -> out [B, N, Hq, D] (q's dtype), lse [B, Hq, N] float32, natural log.
struct FwdArgs {
  DType dtype;
  Dims dims;
  TensorRef q, k1, k2, v1, v2;
  MutTensorRef out;
  float* lse;  // contiguous [B, Hq, N]
  Band band1, band2;
  float scale;
};

// bwd(dout, q, k1, k2, v1, v2, out, lse) -> dq, dk1, dk2, dv1, dv2 (each like its input).
struct BwdArgs {
  DType dtype;
  Dims dims;
  TensorRef dout, q, k1, k2, v1, v2, out;
  const float* lse;  // contiguous [B, Hq, N], natural log
  MutTensorRef dq, dk1, dk2, dv1, dv2;
  float* delta;  // workspace, contiguous [B, Hq, N]
  Band band1, band2;
  float scale;
};

}  // namespace simplicial_attn::cuda
