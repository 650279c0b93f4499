// Argument checks shared by every C++ entry point. Python validates the public API first
// (simplicial_attn/ops/checks.py); these guard direct torch.ops calls and libtorch users, so
// a bad call is a readable TORCH_CHECK message instead of an out-of-bounds read.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace simplicial_attn {

#define SA_CHECK_DEVICE(x, dev) \
  TORCH_CHECK((x).device() == (dev), #x " must be on ", (dev), " like q, but is on ", (x).device())
#define SA_CHECK_DTYPE(x, dt) \
  TORCH_CHECK((x).scalar_type() == (dt), #x " must have dtype ", (dt), " like q, got ", (x).scalar_type())
#define SA_CHECK_SHAPE(x, ...)                                                                                       \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape ", at::IntArrayRef({__VA_ARGS__}), \
              ", got ", (x).sizes())

// Sizes of one call, read from q and k1 after the checks below.
struct Dims {
  int64_t B, N, Hq, Hkv, D;
};

// Checks q, k1, k2, v1, v2 (problem.h checks the bands); returns the sizes.
inline Dims check_inputs(const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1,
                         const at::Tensor& v2) {
  TORCH_CHECK(q.dim() == 4, "q must have rank 4 [B, N, Hq, D], got rank ", q.dim());
  TORCH_CHECK(k1.dim() == 4, "k1 must have rank 4 [B, N, Hkv, D], got rank ", k1.dim());
  const Dims d{q.size(0), q.size(1), q.size(2), k1.size(2), q.size(3)};
  SA_CHECK_DEVICE(k1, q.device());
  SA_CHECK_DEVICE(k2, q.device());
  SA_CHECK_DEVICE(v1, q.device());
  SA_CHECK_DEVICE(v2, q.device());
  SA_CHECK_DTYPE(k1, q.scalar_type());
  SA_CHECK_DTYPE(k2, q.scalar_type());
  SA_CHECK_DTYPE(v1, q.scalar_type());
  SA_CHECK_DTYPE(v2, q.scalar_type());
  SA_CHECK_SHAPE(k1, d.B, d.N, d.Hkv, d.D);
  SA_CHECK_SHAPE(k2, d.B, d.N, d.Hkv, d.D);
  SA_CHECK_SHAPE(v1, d.B, d.N, d.Hkv, d.D);
  SA_CHECK_SHAPE(v2, d.B, d.N, d.Hkv, d.D);
  TORCH_CHECK(d.Hkv >= 1 && d.Hq % d.Hkv == 0, "Hq (", d.Hq, ") must be a multiple of Hkv (", d.Hkv, ")");
  TORCH_CHECK(d.D >= 1 && d.D <= 256, "head dim D must be in 1..256, got ", d.D);
  return d;
}

// Checks the extra tensors of the backward against the forward's sizes.
inline void check_grad_inputs(const Dims& d, const at::Tensor& q, const at::Tensor& dout, const at::Tensor& out,
                              const at::Tensor& lse) {
  SA_CHECK_DEVICE(dout, q.device());
  SA_CHECK_DEVICE(out, q.device());
  SA_CHECK_DEVICE(lse, q.device());
  SA_CHECK_DTYPE(dout, q.scalar_type());
  SA_CHECK_DTYPE(out, q.scalar_type());
  const auto lse_dtype = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(lse.scalar_type() == lse_dtype, "lse must have dtype ", lse_dtype, ", got ", lse.scalar_type());
  SA_CHECK_SHAPE(dout, d.B, d.N, d.Hq, d.D);
  SA_CHECK_SHAPE(out, d.B, d.N, d.Hq, d.D);
  SA_CHECK_SHAPE(lse, d.B, d.Hq, d.N);
}

}  // namespace simplicial_attn
