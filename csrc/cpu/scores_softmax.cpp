// CPU kernels of the unfused path: simplicial_attn::scores_fwd / scores_bwd (trilinear logits
// of every window slot) and softmax_fwd / softmax_bwd (one softmax over the last two dims).
//
// The softmax is memory-bound work with one exp per element, so its float32 rows are compiled
// three times (AVX-512, AVX2+FMA, baseline) from one plain loop body that the compiler
// vectorises, with an exp polynomial instead of a libm call; the flavour is picked at run time
// like the attention kernels (SIMPLICIAL_ATTN_CPU_ISA=base|avx2|avx512 caps it). Each row is
// read from memory once: the max pass brings it into L1/L2 and the exp and scale passes run on
// the cached row, as torch.softmax does. Other dtypes run a scalar loop in float (float64 in
// float64).
//
// The scores kernels are plain loops over D (analysis-sized work, no speed target); the
// backward gathers instead of scattering so the three gradients are computed in parallel
// without atomics and in a fixed order.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"
#include "problem.h"
#include "scores_common.h"

namespace simplicial_attn {
namespace cpu_scores {
namespace {

// Work per parallel chunk, in elements: large enough that scheduling costs nothing.
constexpr int64_t kGrainElements = 1 << 15;

#if defined(__GNUC__) || defined(__clang__)
#define SA_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SA_ALWAYS_INLINE inline
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define SA_HAS_ISA_FLAVOURS 1
#define SA_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma")))
#define SA_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define SA_HAS_ISA_FLAVOURS 0
#endif

// exp(x) for x <= 0 (a logit minus its row max) or NaN, branch-free so loops vectorise:
// exp(x) = 2^n exp(r), n = round(x / ln2), r = x - n ln2 (two-part ln2, Cody-Waite), exp(r) by
// a degree-7 polynomial on |r| <= ln2 / 2 (relative error ~1 float ulp). x below -88 (and -inf)
// gives exactly 0 (2^-127 has no normal float); NaN stays NaN.
SA_ALWAYS_INLINE float exp_nonpositive(float x) {
  const float xc = x < -88.0f ? -88.0f : x;  // NaN: the comparison is false, NaN passes
  constexpr float kShifter = 12582912.0f;    // 1.5 * 2^23: adding it rounds to an integer
  const float t = xc * 1.44269504088896341f + kShifter;
  const float n = t - kShifter;
  const int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kShifter);
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.0f;
  return er * std::bit_cast<float>((ni + 127) << 23);  // n in [-127, 0]: 2^n, or 0 for -127
}

// The float32 row loops. `rows` rows of m contiguous elements.
SA_ALWAYS_INLINE void softmax_fwd_rows_body(const float* x, float* y, int64_t rows, int64_t m) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r, x += m, y += m) {
    float mx = kNegInf;
#pragma omp simd reduction(max : mx)
    for (int64_t t = 0; t < m; ++t) mx = x[t] > mx ? x[t] : mx;
    const float shift = mx == kNegInf ? 0.0f : mx;  // an all -inf row: exp(-inf - 0) = 0, no NaN
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t t = 0; t < m; ++t) {
      const float e = exp_nonpositive(x[t] - shift);
      y[t] = e;
      sum += e;
    }
    // sum is 0 only for an all -inf row (the max contributes exp(0) = 1); NaN stays NaN.
    const float inv = sum == 0.0f ? 0.0f : 1.0f / sum;
#pragma omp simd
    for (int64_t t = 0; t < m; ++t) y[t] *= inv;
  }
}

SA_ALWAYS_INLINE void softmax_bwd_rows_body(const float* dp, const float* p, float* ds, int64_t rows, int64_t m) {
  for (int64_t r = 0; r < rows; ++r, dp += m, p += m, ds += m) {
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t t = 0; t < m; ++t) dot += p[t] * dp[t];
#pragma omp simd
    for (int64_t t = 0; t < m; ++t) ds[t] = p[t] * (dp[t] - dot);
  }
}

using FwdRows = void (*)(const float*, float*, int64_t, int64_t);
using BwdRows = void (*)(const float*, const float*, float*, int64_t, int64_t);

void softmax_fwd_rows_base(const float* x, float* y, int64_t rows, int64_t m) { softmax_fwd_rows_body(x, y, rows, m); }
void softmax_bwd_rows_base(const float* dp, const float* p, float* ds, int64_t rows, int64_t m) {
  softmax_bwd_rows_body(dp, p, ds, rows, m);
}
#if SA_HAS_ISA_FLAVOURS
SA_TARGET_AVX2 void softmax_fwd_rows_avx2(const float* x, float* y, int64_t rows, int64_t m) {
  softmax_fwd_rows_body(x, y, rows, m);
}
SA_TARGET_AVX2 void softmax_bwd_rows_avx2(const float* dp, const float* p, float* ds, int64_t rows, int64_t m) {
  softmax_bwd_rows_body(dp, p, ds, rows, m);
}
SA_TARGET_AVX512 void softmax_fwd_rows_avx512(const float* x, float* y, int64_t rows, int64_t m) {
  softmax_fwd_rows_body(x, y, rows, m);
}
SA_TARGET_AVX512 void softmax_bwd_rows_avx512(const float* dp, const float* p, float* ds, int64_t rows, int64_t m) {
  softmax_bwd_rows_body(dp, p, ds, rows, m);
}
#endif

enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

// The best flavour this CPU runs, capped by SIMPLICIAL_ATTN_CPU_ISA (read per call, so tests
// can run every flavour the machine has).
Isa selected_isa() {
  Isa best = Isa::kBase;
#if SA_HAS_ISA_FLAVOURS
  static const Isa detected = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kBase;
  }();
  best = detected;
#endif
  const char* env = std::getenv("SIMPLICIAL_ATTN_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  const std::string want(env);
  Isa cap = Isa::kAvx512;
  if (want == "base") {
    cap = Isa::kBase;
  } else if (want == "avx2") {
    cap = Isa::kAvx2;
  } else {
    TORCH_CHECK(want == "avx512", "SIMPLICIAL_ATTN_CPU_ISA must be one of base, avx2, avx512 (or unset), got '", want,
                "'");
  }
  return cap < best ? cap : best;
}

FwdRows fwd_rows_f32() {
#if SA_HAS_ISA_FLAVOURS
  switch (selected_isa()) {
    case Isa::kAvx512:
      return softmax_fwd_rows_avx512;
    case Isa::kAvx2:
      return softmax_fwd_rows_avx2;
    default:
      break;
  }
#endif
  return softmax_fwd_rows_base;
}

BwdRows bwd_rows_f32() {
#if SA_HAS_ISA_FLAVOURS
  switch (selected_isa()) {
    case Isa::kAvx512:
      return softmax_bwd_rows_avx512;
    case Isa::kAvx2:
      return softmax_bwd_rows_avx2;
    default:
      break;
  }
#endif
  return softmax_bwd_rows_base;
}

// Other dtypes: float math for half/bfloat16, double for double. A row buffer keeps the
// unrounded exps so a half/bfloat16 output is rounded once.
template <typename T, typename acc_t>
void softmax_fwd_rows_generic(const T* x, T* y, int64_t rows, int64_t m) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  std::vector<acc_t> e(m);
  for (int64_t r = 0; r < rows; ++r, x += m, y += m) {
    acc_t mx = kNegInf;
    for (int64_t t = 0; t < m; ++t) mx = static_cast<acc_t>(x[t]) > mx ? static_cast<acc_t>(x[t]) : mx;
    const acc_t shift = mx == kNegInf ? acc_t(0) : mx;
    acc_t sum = 0;
    for (int64_t t = 0; t < m; ++t) {
      e[t] = std::exp(static_cast<acc_t>(x[t]) - shift);
      sum += e[t];
    }
    const acc_t inv = sum == acc_t(0) ? acc_t(0) : acc_t(1) / sum;
    for (int64_t t = 0; t < m; ++t) y[t] = static_cast<T>(e[t] * inv);
  }
}

template <typename T, typename acc_t>
void softmax_bwd_rows_generic(const T* dp, const T* p, T* ds, int64_t rows, int64_t m) {
  for (int64_t r = 0; r < rows; ++r, dp += m, p += m, ds += m) {
    acc_t dot = 0;
    for (int64_t t = 0; t < m; ++t) dot += static_cast<acc_t>(p[t]) * static_cast<acc_t>(dp[t]);
    for (int64_t t = 0; t < m; ++t) {
      ds[t] = static_cast<T>(static_cast<acc_t>(p[t]) * (static_cast<acc_t>(dp[t]) - dot));
    }
  }
}

// Runs fn(first_row, n_rows) over all rows in parallel chunks of about kGrainElements elements.
template <typename Fn>
void for_row_chunks(int64_t rows, int64_t m, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(m, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { fn(begin, end - begin); });
}

at::Tensor softmax_fwd(const at::Tensor& scores) {
  check_softmax_input(scores, "scores");
  const auto x = scores.contiguous();
  auto y = at::empty_like(x);
  const int64_t m = x.size(-1) * x.size(-2);
  if (x.numel() == 0) return y;
  const int64_t rows = x.numel() / m;
  if (x.scalar_type() == at::kFloat) {
    const FwdRows rows_fn = fwd_rows_f32();
    const float* xp = x.const_data_ptr<float>();
    float* yp = y.mutable_data_ptr<float>();
    for_row_chunks(rows, m, [&](int64_t r0, int64_t n) { rows_fn(xp + r0 * m, yp + r0 * m, n, m); });
    return y;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softmax_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    for_row_chunks(rows, m, [&](int64_t r0, int64_t n) {
      softmax_fwd_rows_generic<scalar_t, acc_t>(xp + r0 * m, yp + r0 * m, n, m);
    });
  });
  return y;
}

at::Tensor softmax_bwd(const at::Tensor& dprobs, const at::Tensor& probs) {
  check_softmax_input(probs, "probs");
  SA_CHECK_DEVICE(dprobs, probs.device());
  TORCH_CHECK(dprobs.sizes() == probs.sizes(), "dprobs must have probs' shape ", probs.sizes(), ", got ",
              dprobs.sizes());
  const auto p = probs.contiguous();
  const auto dp = dprobs.to(p.scalar_type()).contiguous();
  auto ds = at::empty_like(p);
  const int64_t m = p.size(-1) * p.size(-2);
  if (p.numel() == 0) return ds;
  const int64_t rows = p.numel() / m;
  if (p.scalar_type() == at::kFloat) {
    const BwdRows rows_fn = bwd_rows_f32();
    const float* dpp = dp.const_data_ptr<float>();
    const float* pp = p.const_data_ptr<float>();
    float* dsp = ds.mutable_data_ptr<float>();
    for_row_chunks(rows, m, [&](int64_t r0, int64_t n) { rows_fn(dpp + r0 * m, pp + r0 * m, dsp + r0 * m, n, m); });
    return ds;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "softmax_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dpp = dp.const_data_ptr<scalar_t>();
    const scalar_t* pp = p.const_data_ptr<scalar_t>();
    scalar_t* dsp = ds.mutable_data_ptr<scalar_t>();
    for_row_chunks(rows, m, [&](int64_t r0, int64_t n) {
      softmax_bwd_rows_generic<scalar_t, acc_t>(dpp + r0 * m, pp + r0 * m, dsp + r0 * m, n, m);
    });
  });
  return ds;
}

// ---- trilinear scores -------------------------------------------------------------------
// Inputs are packed once into contiguous acc_t tensors (float32, or float64 for float64):
//   q [B, N, Hq, D], k1 / k2 [B, N, Hkv, D]; scores and dscores [B, Hq, N, W1, W2].

template <typename acc_t>
struct ScoresArgs {
  const acc_t* q;
  const acc_t* k1;
  const acc_t* k2;
  Dims d;
  WindowAxis ax1, ax2;
  acc_t scale;

  const acc_t* q_row(int64_t b, int64_t i, int64_t h) const { return q + ((b * d.N + i) * d.Hq + h) * d.D; }
  const acc_t* k_row(const acc_t* k, int64_t b, int64_t p, int64_t g) const {
    return k + ((b * d.N + p) * d.Hkv + g) * d.D;
  }
  bool inside(int64_t p) const { return p >= 0 && p < d.N; }
  int64_t group() const { return d.Hq / d.Hkv; }
};

template <typename acc_t>
SA_ALWAYS_INLINE acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t t = 0; t < n; ++t) s += a[t] * b[t];
  return s;
}

template <typename acc_t>
SA_ALWAYS_INLINE void axpy(acc_t alpha, const acc_t* x, acc_t* y, int64_t n) {
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) y[t] += alpha * x[t];
}

template <typename acc_t>
void scores_fwd_impl(const ScoresArgs<acc_t>& s, acc_t* out) {
  const Dims& d = s.d;
  const int64_t W1 = s.ax1.size, W2 = s.ax2.size, D = d.D;
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(W1 * W2 * D, 1));
  // One work item per (b, h, i): its W1 x W2 scores are contiguous.
  at::parallel_for(0, d.B * d.Hq * d.N, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> qk1(D);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item % d.N, h = item / d.N % d.Hq, b = item / (d.N * d.Hq), g = h / s.group();
      const acc_t* qi = s.q_row(b, i, h);
      acc_t* o = out + item * W1 * W2;
      for (int64_t a = 0; a < W1; ++a, o += W2) {
        const int64_t j = s.ax1.start(i) + a;
        if (!s.inside(j)) {
          std::fill(o, o + W2, neg_inf);
          continue;
        }
        const acc_t* k1j = s.k_row(s.k1, b, j, g);
        for (int64_t t = 0; t < D; ++t) qk1[t] = qi[t] * k1j[t];
        for (int64_t c = 0; c < W2; ++c) {
          const int64_t k = s.ax2.start(i) + c;
          o[c] = s.inside(k) ? s.scale * dot(qk1.data(), s.k_row(s.k2, b, k, g), D) : neg_inf;
        }
      }
    }
  });
}

// dq[i] = scale sum_{a,c} dS[i,a,c] k1[j_a] k2[k_c], one item per (b, h, i).
template <typename acc_t>
void scores_dq(const ScoresArgs<acc_t>& s, const acc_t* ds, acc_t* dq) {
  const Dims& d = s.d;
  const int64_t W1 = s.ax1.size, W2 = s.ax2.size, D = d.D;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(W1 * W2 * D, 1));
  at::parallel_for(0, d.B * d.Hq * d.N, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> r(D), acc(D);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item % d.N, h = item / d.N % d.Hq, b = item / (d.N * d.Hq), g = h / s.group();
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t a = 0; a < W1; ++a) {
        const int64_t j = s.ax1.start(i) + a;
        if (!s.inside(j)) continue;
        const acc_t* row = ds + (item * W1 + a) * W2;
        std::fill(r.begin(), r.end(), acc_t(0));
        for (int64_t c = 0; c < W2; ++c) {
          const int64_t k = s.ax2.start(i) + c;
          if (s.inside(k)) axpy(row[c], s.k_row(s.k2, b, k, g), r.data(), D);
        }
        const acc_t* k1j = s.k_row(s.k1, b, j, g);
        for (int64_t t = 0; t < D; ++t) acc[t] += r[t] * k1j[t];
      }
      acc_t* o = dq + ((b * d.N + i) * d.Hq + h) * D;
      for (int64_t t = 0; t < D; ++t) o[t] = s.scale * acc[t];
    }
  });
}

// dk1[j] = scale sum over the query heads h of kv head g and the queries i whose window holds
// j (slot a = j - j0(i)) of q[i] * sum_c dS[h,i,a,c] k2[k_c]; for_k2 swaps the two axes
// (dk2[k] = scale sum q[i] * sum_a dS[h,i,a,c] k1[j_a]). One item per (b, g, position).
template <typename acc_t>
void scores_dk(const ScoresArgs<acc_t>& s, const acc_t* ds, acc_t* dk, bool for_k2) {
  const Dims& d = s.d;
  const int64_t W1 = s.ax1.size, W2 = s.ax2.size, D = d.D, G = s.group();
  const WindowAxis& own = for_k2 ? s.ax2 : s.ax1;
  const WindowAxis& other = for_k2 ? s.ax1 : s.ax2;
  const acc_t* other_keys = for_k2 ? s.k1 : s.k2;
  // Stride between consecutive slots of the other axis, and of this axis, inside dS[h, i].
  const int64_t other_stride = for_k2 ? W2 : 1, own_stride = for_k2 ? 1 : W2;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(W1 * W2 * D * G, 1));
  at::parallel_for(0, d.B * d.Hkv * d.N, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> r(D), acc(D);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t p = item % d.N, g = item / d.N % d.Hkv, b = item / (d.N * d.Hkv);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      int64_t i_first, i_last;
      own.queries_holding(p, d.N, &i_first, &i_last);
      for (int64_t h = g * G; h < (g + 1) * G; ++h) {
        for (int64_t i = i_first; i < i_last; ++i) {
          const acc_t* slots = ds + ((b * d.Hq + h) * d.N + i) * W1 * W2 + (p - own.start(i)) * own_stride;
          std::fill(r.begin(), r.end(), acc_t(0));
          for (int64_t o = 0; o < other.size; ++o) {
            const int64_t pos = other.start(i) + o;
            if (s.inside(pos)) axpy(slots[o * other_stride], s.k_row(other_keys, b, pos, g), r.data(), D);
          }
          const acc_t* qi = s.q_row(b, i, h);
          for (int64_t t = 0; t < D; ++t) acc[t] += qi[t] * r[t];
        }
      }
      acc_t* out = dk + ((b * d.N + p) * d.Hkv + g) * D;
      for (int64_t t = 0; t < D; ++t) out[t] = s.scale * acc[t];
    }
  });
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor scores_fwd(const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, std::optional<int64_t> w1,
                      std::optional<int64_t> w2, bool causal, double scale, c10::string_view logits) {
  // TODO(interface): the determinant form is not in these kernels yet.
  TORCH_CHECK(parse_logits(logits, q.size(-1)) == Logits::kTrilinear,
              "the cpu scores kernels do not implement logits='determinant' yet");
  const Dims d = check_scores_inputs(q, k1, k2, w1, w2);
  const WindowAxis ax1 = window_axis(w1, d.N, causal), ax2 = window_axis(w2, d.N, causal);
  const auto acc = acc_type(q.scalar_type());
  auto out = at::empty({d.B, d.Hq, d.N, ax1.size, ax2.size}, q.options().dtype(acc));
  if (out.numel() == 0) return out;
  const auto qa = q.to(acc).contiguous(), k1a = k1.to(acc).contiguous(), k2a = k2.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "scores_fwd_cpu", [&] {
    const ScoresArgs<scalar_t> s{
        qa.const_data_ptr<scalar_t>(), k1a.const_data_ptr<scalar_t>(), k2a.const_data_ptr<scalar_t>(), d, ax1, ax2,
        static_cast<scalar_t>(scale)};
    scores_fwd_impl(s, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scores_bwd(const at::Tensor& dscores, const at::Tensor& q,
                                                          const at::Tensor& k1, const at::Tensor& k2,
                                                          std::optional<int64_t> w1, std::optional<int64_t> w2,
                                                          bool causal, double scale, c10::string_view logits) {
  TORCH_CHECK(parse_logits(logits, q.size(-1)) == Logits::kTrilinear,
              "the cpu scores kernels do not implement logits='determinant' yet");
  const Dims d = check_scores_inputs(q, k1, k2, w1, w2);
  const WindowAxis ax1 = window_axis(w1, d.N, causal), ax2 = window_axis(w2, d.N, causal);
  check_dscores(dscores, q, d, ax1, ax2);
  const auto acc = acc_type(q.scalar_type());
  const auto qa = q.to(acc).contiguous(), k1a = k1.to(acc).contiguous(), k2a = k2.to(acc).contiguous();
  auto dq = at::empty_like(qa), dk1 = at::empty_like(k1a), dk2 = at::empty_like(k2a);
  if (d.B * d.N > 0) {
    const auto ds = dscores.to(acc).contiguous();
    AT_DISPATCH_FLOATING_TYPES(acc, "scores_bwd_cpu", [&] {
      const ScoresArgs<scalar_t> s{
          qa.const_data_ptr<scalar_t>(), k1a.const_data_ptr<scalar_t>(), k2a.const_data_ptr<scalar_t>(), d, ax1, ax2,
          static_cast<scalar_t>(scale)};
      const scalar_t* dsp = ds.const_data_ptr<scalar_t>();
      scores_dq(s, dsp, dq.mutable_data_ptr<scalar_t>());
      scores_dk(s, dsp, dk1.mutable_data_ptr<scalar_t>(), /*for_k2=*/false);
      scores_dk(s, dsp, dk2.mutable_data_ptr<scalar_t>(), /*for_k2=*/true);
    });
  }
  return {dq.to(q.scalar_type()), dk1.to(k1.scalar_type()), dk2.to(k2.scalar_type())};
}

}  // namespace
}  // namespace cpu_scores
}  // namespace simplicial_attn

TORCH_LIBRARY_IMPL(simplicial_attn, CPU, m) {
  m.impl("scores_fwd", &simplicial_attn::cpu_scores::scores_fwd);
  m.impl("scores_bwd", &simplicial_attn::cpu_scores::scores_bwd);
  m.impl("softmax_fwd", &simplicial_attn::cpu_scores::softmax_fwd);
  m.impl("softmax_bwd", &simplicial_attn::cpu_scores::softmax_bwd);
}
