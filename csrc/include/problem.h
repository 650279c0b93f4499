// The problem description of one call, the C++ twin of python/simplicial_attn/problem.py: window
// bands, scale, logit form, sequence layout and cache lengths, built and checked once per entry
// point and handed to the backend's launch structs as one object, so a new feature adds a field
// here instead of a positional argument to every kernel signature. The CPU and CUDA code read
// their bands from here; Python's window_band is the one place a (window, causal) pair becomes one.
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

// The key window of query i on one axis: positions [i - left, i + right], clipped to the row's
// sequence by the kernels. causal w: (w - 1, 0); centred w: (w / 2, w - 1 - w / 2).
struct Band {
  int64_t left = 0, right = 0;

  int64_t width() const { return left + right + 1; }
  // The same in-sequence positions for sequences of at most `longest` rows, with neither reach
  // past longest - 1: keeps scratch sizes and 32-bit kernel arithmetic meaningful for huge bands.
  Band clipped(int64_t longest) const {
    const int64_t reach = longest > 1 ? longest - 1 : 0;
    return {left < reach ? left : reach, right < reach ? right : reach};
  }
};

struct Problem {
  Band band1, band2;  // windows of j (k1/v1) and k (k2/v2), reaches >= 0
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

// Bands, scale and logit form, checked; q is [..., D].
inline Problem make_base_problem(const at::Tensor& q, int64_t left1, int64_t right1, int64_t left2, int64_t right2,
                                 double scale, c10::string_view logits) {
  TORCH_CHECK(left1 >= 0 && right1 >= 0, "the band of k1 (left1, right1) must have reaches >= 0, got (", left1, ", ",
              right1, ")");
  TORCH_CHECK(left2 >= 0 && right2 >= 0, "the band of k2 (left2, right2) must have reaches >= 0, got (", left2, ", ",
              right2, ")");
  TORCH_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
  Problem p;
  p.band1 = {left1, right1};
  p.band2 = {left2, right2};
  p.scale = scale;
  p.logits = parse_logits(logits, q.size(-1));
  return p;
}

// The problem of a fused forward / backward call. q is [B, N, Hq, D] (checked by the caller).
inline Problem make_problem(const at::Tensor& q, const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
                            int64_t left1, int64_t right1, int64_t left2, int64_t right2, double scale,
                            c10::string_view logits) {
  Problem p = make_base_problem(q, left1, right1, left2, right2, scale, logits);
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

// The problem of a decoding call: causal bands (right == 0) over ring caches.
inline Problem make_decode_problem(const at::Tensor& q, const at::Tensor& cache_seqlens, int64_t left1, int64_t right1,
                                   int64_t left2, int64_t right2, double scale, c10::string_view logits) {
  TORCH_CHECK(right1 == 0 && right2 == 0, "decoding takes causal bands (right1 = right2 = 0), got right1 = ", right1,
              ", right2 = ", right2);
  Problem p = make_base_problem(q, left1, right1, left2, right2, scale, logits);
  TORCH_CHECK(cache_seqlens.dim() == 1 && cache_seqlens.size(0) == q.size(0), "cache_seqlens must have shape [B] = [",
              q.size(0), "], got ", cache_seqlens.sizes());
  TORCH_CHECK(cache_seqlens.scalar_type() == at::kInt, "cache_seqlens must have dtype int32, got ",
              cache_seqlens.scalar_type());
  TORCH_CHECK(cache_seqlens.device() == q.device(), "cache_seqlens must be on q's device ", q.device(), ", got ",
              cache_seqlens.device());
  p.cache_seqlens = cache_seqlens.contiguous();
  return p;
}

}  // namespace simplicial_attn
