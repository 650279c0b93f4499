// The problem description of one call, the C++ twin of python/simplicial_attn/problem.py: windows,
// window mode, scale, logit form, sequence layout and cache lengths, built and checked once per
// entry point and handed to the backend's launch structs as one object, so a new feature adds a
// field here instead of a positional argument to every kernel signature.
//
//   batched   q [B, N, Hq, D]               cu_seqlens, cache_seqlens undefined
//   packed    q [1, T, Hq, D]               cu_seqlens int32 [S + 1]: sequence s is rows [cu[s], cu[s+1])
//   decoding  q [B, Nq, Hq, D], ring caches cache_seqlens int32 [B]: row t of sequence b is at
//                                           position cache_seqlens[b] + t, position p in slot p % C
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <optional>

namespace simplicial_attn {

// CONTRACT §1 (trilinear) and §8 (determinant of each 3-channel chunk of q, k1, k2).
enum class Logits { kTrilinear = 0, kDeterminant = 1 };

struct Problem {
  int64_t w1 = 1, w2 = 1;  // kernel windows (>= 1; the Python side resolved None)
  bool causal = true;
  double scale = 1.0;
  Logits logits = Logits::kTrilinear;
  at::Tensor cu_seqlens;     // packed layout: int32 [S + 1], contiguous, on q's device
  int64_t max_seqlen = 0;    // packed layout: >= every sequence length
  at::Tensor cache_seqlens;  // decoding: int32 [B], contiguous, on q's device

  bool packed() const { return cu_seqlens.defined(); }
  bool decoding() const { return cache_seqlens.defined(); }
  int64_t num_seqs() const { return packed() ? cu_seqlens.size(0) - 1 : 0; }
};

inline Logits parse_logits(c10::string_view name, int64_t head_dim) {
  Logits logits;
  if (name == "trilinear") {
    logits = Logits::kTrilinear;
  } else if (name == "determinant") {
    logits = Logits::kDeterminant;
  } else {
    TORCH_CHECK(false, "logits must be 'trilinear' or 'determinant', got '", std::string(name), "'");
  }
  TORCH_CHECK(logits != Logits::kDeterminant || head_dim % 3 == 0,
              "logits='determinant' needs a head dim divisible by 3, got D = ", head_dim);
  return logits;
}

inline void check_windows_and_scale(int64_t w1, int64_t w2, double scale) {
  TORCH_CHECK(w1 >= 1, "w1 must be >= 1, got ", w1);
  TORCH_CHECK(w2 >= 1, "w2 must be >= 1, got ", w2);
  TORCH_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
}

// The problem of a fused forward / backward call. q is [B, N, Hq, D] (checked by the caller).
inline Problem make_problem(const at::Tensor& q, const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
                            int64_t w1, int64_t w2, bool causal, double scale, c10::string_view logits) {
  check_windows_and_scale(w1, w2, scale);
  Problem p;
  p.w1 = w1;
  p.w2 = w2;
  p.causal = causal;
  p.scale = scale;
  p.logits = parse_logits(logits, q.size(-1));
  if (cu_seqlens.has_value()) {
    const at::Tensor& cu = *cu_seqlens;
    TORCH_CHECK(cu.dim() == 1 && cu.numel() >= 1, "cu_seqlens must be 1-D [S + 1], got shape ", cu.sizes());
    TORCH_CHECK(cu.scalar_type() == at::kInt || cu.scalar_type() == at::kLong,
                "cu_seqlens must have dtype int32 or int64, got ", cu.scalar_type());
    TORCH_CHECK(cu.device() == q.device(), "cu_seqlens must be on q's device ", q.device(), ", got ", cu.device());
    TORCH_CHECK(q.size(0) == 1, "packed inputs are [1, T, H, D]; got q with batch ", q.size(0));
    TORCH_CHECK(max_seqlen >= 0, "max_seqlen must be >= 0, got ", max_seqlen);
    p.cu_seqlens = cu.to(at::kInt).contiguous();
    p.max_seqlen = max_seqlen;
  }
  return p;
}

// The problem of a decoding call: causal windows over ring caches.
inline Problem make_decode_problem(const at::Tensor& q, const at::Tensor& cache_seqlens, int64_t w1, int64_t w2,
                                   double scale, c10::string_view logits) {
  check_windows_and_scale(w1, w2, scale);
  TORCH_CHECK(cache_seqlens.dim() == 1 && cache_seqlens.size(0) == q.size(0), "cache_seqlens must have shape [B] = [",
              q.size(0), "], got ", cache_seqlens.sizes());
  TORCH_CHECK(cache_seqlens.scalar_type() == at::kInt, "cache_seqlens must have dtype int32, got ",
              cache_seqlens.scalar_type());
  TORCH_CHECK(cache_seqlens.device() == q.device(), "cache_seqlens must be on q's device ", q.device(), ", got ",
              cache_seqlens.device());
  Problem p;
  p.w1 = w1;
  p.w2 = w2;
  p.causal = true;
  p.scale = scale;
  p.logits = parse_logits(logits, q.size(-1));
  p.cache_seqlens = cache_seqlens.contiguous();
  return p;
}

}  // namespace simplicial_attn
