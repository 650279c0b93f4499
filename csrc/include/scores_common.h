// Argument checks of the unfused path (simplicial_attn::scores_* and softmax_*), shared by the
// CPU and CUDA entry points. The window geometry is in scores_window.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "checks.h"
#include "scores_window.h"

namespace simplicial_attn {

// q, k1, k2 as in check_inputs (the values' rules apply to the keys alone here) and the windows.
inline Dims check_scores_inputs(const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2,
                                std::optional<int64_t> w1, std::optional<int64_t> w2) {
  TORCH_CHECK(!w1.has_value() || *w1 >= 1, "w1 must be >= 1 or None, got ", w1.value_or(0));
  TORCH_CHECK(!w2.has_value() || *w2 >= 1, "w2 must be >= 1 or None, got ", w2.value_or(0));
  // check_inputs also checks v1 and v2; passing the keys again checks q, k1, k2 alone.
  return check_inputs(q, k1, k2, k1, k2);
}

// dscores must be the scores' shape [B, Hq, N, W1, W2].
inline void check_dscores(const at::Tensor& dscores, const at::Tensor& q, const Dims& d, const WindowAxis& ax1,
                          const WindowAxis& ax2) {
  SA_CHECK_DEVICE(dscores, q.device());
  TORCH_CHECK(dscores.is_floating_point(), "dscores must be a floating tensor, got ", dscores.scalar_type());
  SA_CHECK_SHAPE(dscores, d.B, d.Hq, d.N, ax1.size, ax2.size);
}

// The softmax ops take any floating tensor of rank >= 2 (softmax over the last two dims).
inline void check_softmax_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() >= 2, name, " must have rank >= 2 [..., W1, W2], got rank ", x.dim());
  TORCH_CHECK(x.is_floating_point(), name, " must be a floating tensor, got ", x.scalar_type());
}

}  // namespace simplicial_attn
