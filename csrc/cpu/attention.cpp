// CPU implementation of simplicial_attn::fused_fwd / fused_bwd: argument checks, the choice of
// kernel flavour, and the three parallel phases of a call: pack the inputs (layout.h), run the
// kernel over work items (kernel_impl.h), unpack the outputs and, in the backward, sum the
// key/value partials in a fixed order (layout.h).
//
// Inputs of any strides and of dtype float32/bfloat16/float16 are packed once into float32
// (float64 stays float64), so the kernels accumulate in float32 and bf16/fp16 calls run the
// float32 kernels at the same speed; packing costs O(N*H*D), the kernels O(N*H*D*w1*w2).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <tuple>

#include "checks.h"
#include "cpu_info.h"
#include "kernel_args.h"
#include "layout.h"
#include "problem.h"

namespace simplicial_attn {
namespace cpu {
namespace {

// Tile of the k (w2) window per GEMM and cap of the j (w1) tile: a [KT x JT] logit tile is
// 16 KiB in float32, so S and dP of the backward stay in L1 together.
constexpr int64_t kMaxKTile = 32;
constexpr int64_t kMaxJTile = 128;
// Forward work item: queries per (b, h) block (scheduling granularity only).
constexpr int64_t kFwdBlock = 32;
// Backward: the partition into query blocks fixes the summation order of the key gradients,
// so it must not depend on the thread count (bitwise-equal results with 1 or N threads).
constexpr int64_t kBwdMinItems = 16;

enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

Isa detected_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (kernels_avx512_f32() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) {
      return Isa::kAvx512;
    }
    if (kernels_avx2_f32() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kBase;
  }();
  return isa;
#else
  return Isa::kBase;
#endif
}

// SIMPLICIAL_ATTN_CPU_ISA=base|avx2|avx512 caps the instruction set (the tests run every
// flavour the CPU has; a user can rule one out). Read on every call so a test can switch it.
Isa selected_isa() {
  const Isa best = detected_isa();
  const char* env = std::getenv("SIMPLICIAL_ATTN_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  const std::string want(env);
  Isa cap;
  if (want == "base") {
    cap = Isa::kBase;
  } else if (want == "avx2") {
    cap = Isa::kAvx2;
  } else if (want == "avx512") {
    cap = Isa::kAvx512;
  } else {
    TORCH_CHECK(false, "SIMPLICIAL_ATTN_CPU_ISA must be one of base, avx2, avx512 (or unset), got '", want, "'");
  }
  return cap < best ? cap : best;
}

const KernelSet<float>& float_kernels() {
  switch (selected_isa()) {
    case Isa::kAvx512:
      return *kernels_avx512_f32();
    case Isa::kAvx2:
      return *kernels_avx2_f32();
    default:
      return *kernels_base_f32();
  }
}

template <typename T>
const KernelSet<T>& kernels_for();
template <>
const KernelSet<float>& kernels_for<float>() {
  return float_kernels();
}
template <>
const KernelSet<double>& kernels_for<double>() {
  return *kernels_base_f64();
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

void check_dtype(const at::Tensor& q) {
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble,
              "q must have dtype float32, bfloat16, float16 or float64 on the CPU, got ", dt);
}

at::ScalarType lse_dtype(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Windows wider than the sequence behave like the widest useful one; clipping them keeps the
// scratch sizes below (BQ + w - 1 rows) meaningful for direct calls with huge windows.
int64_t clip_window(int64_t w, int64_t N, bool causal) {
  const int64_t full = causal ? N : 2 * N - 1;
  return w < full ? w : full;
}

Geometry make_geometry(const Dims& d, int64_t vector_width, int64_t w1, int64_t w2, bool causal) {
  Geometry g;
  g.B = d.B;
  g.N = d.N;
  g.Hq = d.Hq;
  g.Hkv = d.Hkv;
  g.D = d.D;
  g.DP = round_up(d.D, vector_width);
  g.NP = d.N + vector_width;
  g.w1 = clip_window(w1, d.N, causal);
  g.w2 = clip_window(w2, d.N, causal);
  g.causal = causal;
  g.KT = g.w2 < kMaxKTile ? g.w2 : kMaxKTile;
  g.JT = round_up(g.w1 < kMaxJTile ? g.w1 : kMaxJTile, vector_width);
  return g;
}

template <typename T, typename S>
std::tuple<at::Tensor, at::Tensor> run_fwd(const Dims& d, const at::Tensor& q, const at::Tensor& k1,
                                           const at::Tensor& k2, const at::Tensor& v1, const at::Tensor& v2, int64_t w1,
                                           int64_t w2, bool causal, double scale) {
  const KernelSet<T>& ks = kernels_for<T>();
  const Geometry g = make_geometry(d, ks.vector_width, w1, w2, causal);
  const auto opts = q.options().dtype(c10::CppTypeToScalarType<T>::value);
  const auto q_rows = {g.B, g.Hq, g.N, g.DP}, kv_rows = {g.B, g.Hkv, g.N, g.DP}, kv_cols = {g.B, g.Hkv, g.D, g.NP};
  const at::Tensor qp = at::empty(q_rows, opts), k1t = at::empty(kv_cols, opts), k2p = at::empty(kv_rows, opts),
                   v1p = at::empty(kv_rows, opts), v2p = at::empty(kv_rows, opts), outp = at::empty(q_rows, opts);
  at::Tensor lse = at::empty({g.B, g.Hq, g.N}, opts);
  at::Tensor out = at::empty(q.sizes(), q.options());
  Transfers<T, S> in(g);
  in.pack_rows(q, qp.data_ptr<T>());
  in.pack_cols(k1, k1t.data_ptr<T>());
  in.pack_rows(k2, k2p.data_ptr<T>());
  in.pack_rows(v1, v1p.data_ptr<T>());
  in.pack_rows(v2, v2p.data_ptr<T>());
  in.run();

  FwdArgs<T> a;
  a.g = g;
  a.scale = static_cast<T>(scale);
  a.BQ = kFwdBlock;
  a.q = qp.data_ptr<T>();
  a.k1t = k1t.data_ptr<T>();
  a.k2 = k2p.data_ptr<T>();
  a.v1 = v1p.data_ptr<T>();
  a.v2 = v2p.data_ptr<T>();
  a.out = outp.data_ptr<T>();
  a.lse = lse.data_ptr<T>();
  const int64_t items = g.B * g.Hq * ((g.N + a.BQ - 1) / a.BQ);
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) { ks.fwd(a, begin, end); });

  Transfers<T, S> back(g);
  back.unpack_rows(outp.data_ptr<T>(), out);
  back.run();
  return {out, lse};
}

// Query block of the backward: at least ~w1/2 so the scratch (BQ + w1 - 1 rows per block)
// stays within ~3x the gradient, smaller only to give kBwdMinItems items.
int64_t backward_block(const Geometry& g) {
  int64_t bq = round_up(g.w1 / 2 > 64 ? g.w1 / 2 : 64, 16);
  auto items = [&](int64_t b) { return g.B * g.Hkv * ((g.N + b - 1) / b); };
  while (bq > 16 && items(bq) < kBwdMinItems) bq = round_up(bq / 2, 16);
  return bq;
}

template <typename T, typename S>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_bwd(
    const Dims& d, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2,
    const at::Tensor& v1, const at::Tensor& v2, const at::Tensor& out, const at::Tensor& lse, int64_t w1, int64_t w2,
    bool causal, double scale) {
  const KernelSet<T>& ks = kernels_for<T>();
  const Geometry g = make_geometry(d, ks.vector_width, w1, w2, causal);
  const auto opts = q.options().dtype(c10::CppTypeToScalarType<T>::value);
  const auto q_rows = {g.B, g.Hq, g.N, g.DP}, kv_rows = {g.B, g.Hkv, g.N, g.DP}, kv_cols = {g.B, g.Hkv, g.D, g.NP};
  const at::Tensor qp = at::empty(q_rows, opts), dop = at::empty(q_rows, opts), k1p = at::empty(kv_rows, opts),
                   k1t = at::empty(kv_cols, opts), k2p = at::empty(kv_rows, opts), v1p = at::empty(kv_rows, opts),
                   v1t = at::empty(kv_cols, opts), v2p = at::empty(kv_rows, opts);
  const at::Tensor delta = at::empty({g.B, g.Hq, g.N}, opts);
  const at::Tensor lse_c = lse.contiguous();
  Transfers<T, S> in(g);
  in.pack_rows(q, qp.data_ptr<T>());
  in.pack_rows(dout, dop.data_ptr<T>());
  in.pack_rows(k1, k1p.data_ptr<T>());
  in.pack_cols(k1, k1t.data_ptr<T>());
  in.pack_rows(k2, k2p.data_ptr<T>());
  in.pack_rows(v1, v1p.data_ptr<T>());
  in.pack_cols(v1, v1t.data_ptr<T>());
  in.pack_rows(v2, v2p.data_ptr<T>());
  in.row_dots(dout, out, delta.data_ptr<T>());  // Delta, from the saved (rounded) output
  in.run();

  BwdArgs<T> a;
  a.g = g;
  a.scale = static_cast<T>(scale);
  a.BQ = backward_block(g);
  a.R1 = a.BQ + g.w1 - 1 < g.N ? a.BQ + g.w1 - 1 : g.N;
  a.R2 = a.BQ + g.w2 - 1 < g.N ? a.BQ + g.w2 - 1 : g.N;
  const int64_t items = g.B * g.Hkv * ((g.N + a.BQ - 1) / a.BQ);
  const at::Tensor dqp = at::empty(q_rows, opts);
  const at::Tensor dk1s = at::empty({items, a.R1, g.DP}, opts), dv1s = at::empty({items, a.R1, g.DP}, opts);
  const at::Tensor dk2s = at::empty({items, a.R2, g.DP}, opts), dv2s = at::empty({items, a.R2, g.DP}, opts);
  a.q = qp.data_ptr<T>();
  a.k1 = k1p.data_ptr<T>();
  a.k1t = k1t.data_ptr<T>();
  a.k2 = k2p.data_ptr<T>();
  a.v1 = v1p.data_ptr<T>();
  a.v1t = v1t.data_ptr<T>();
  a.v2 = v2p.data_ptr<T>();
  a.dout = dop.data_ptr<T>();
  a.lse = lse_c.data_ptr<T>();
  a.delta = delta.data_ptr<T>();
  a.dq = dqp.data_ptr<T>();
  a.dk1s = dk1s.data_ptr<T>();
  a.dv1s = dv1s.data_ptr<T>();
  a.dk2s = dk2s.data_ptr<T>();
  a.dv2s = dv2s.data_ptr<T>();
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) { ks.bwd(a, begin, end); });

  at::Tensor dq = at::empty(q.sizes(), q.options()), dk1 = at::empty(k1.sizes(), k1.options()),
             dk2 = at::empty(k2.sizes(), k2.options()), dv1 = at::empty(v1.sizes(), v1.options()),
             dv2 = at::empty(v2.sizes(), v2.options());
  Transfers<T, S> back(g);
  back.unpack_rows(a.dq, dq);
  back.reduce_rows(a.dk1s, g.w1, a.BQ, a.R1, dk1);
  back.reduce_rows(a.dv1s, g.w1, a.BQ, a.R1, dv1);
  back.reduce_rows(a.dk2s, g.w2, a.BQ, a.R2, dk2);
  back.reduce_rows(a.dv2s, g.w2, a.BQ, a.R2, dv2);
  back.run();
  return {dq, dk1, dk2, dv1, dv2};
}

// The kernels vectorise over the j window (w1) and cut the k window (w2) into tiles of 32
// rows, so a narrow j window wastes vector lanes (w1 = 1 uses one of 16). The math is symmetric
// in the pairs (k1, v1, w1) and (k2, v2, w2), so when w2 is the wider window the pairs are
// passed swapped (and the gradients swapped back).
bool wider_second_window(const Dims& d, int64_t w1, int64_t w2, bool causal) {
  return clip_window(w2, d.N, causal) > clip_window(w1, d.N, causal);
}

template <typename T, typename S>
std::tuple<at::Tensor, at::Tensor> fwd_pairs(const Dims& d, const at::Tensor& q, const at::Tensor& k1,
                                             const at::Tensor& k2, const at::Tensor& v1, const at::Tensor& v2,
                                             int64_t w1, int64_t w2, bool causal, double scale) {
  if (wider_second_window(d, w1, w2, causal)) return run_fwd<T, S>(d, q, k2, k1, v2, v1, w2, w1, causal, scale);
  return run_fwd<T, S>(d, q, k1, k2, v1, v2, w1, w2, causal, scale);
}

template <typename T, typename S>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_pairs(
    const Dims& d, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2,
    const at::Tensor& v1, const at::Tensor& v2, const at::Tensor& out, const at::Tensor& lse, int64_t w1, int64_t w2,
    bool causal, double scale) {
  if (!wider_second_window(d, w1, w2, causal)) {
    return run_bwd<T, S>(d, dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, scale);
  }
  const auto g = run_bwd<T, S>(d, dout, q, k2, k1, v2, v1, out, lse, w2, w1, causal, scale);
  return {std::get<0>(g), std::get<2>(g), std::get<1>(g), std::get<4>(g), std::get<3>(g)};
}

// Each input dtype S runs with its compute type T: double for double, float otherwise.
std::tuple<at::Tensor, at::Tensor> fused_fwd_cpu(const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2,
                                                 const at::Tensor& v1, const at::Tensor& v2, int64_t w1, int64_t w2,
                                                 bool causal, double scale) {
  const Dims d = check_inputs(q, k1, k2, v1, v2, w1, w2);
  check_dtype(q);
  if (d.B == 0 || d.N == 0) {  // Python returns before calling; direct calls get empty results too
    return {at::empty(q.sizes(), q.options()), at::empty({d.B, d.Hq, d.N}, q.options().dtype(lse_dtype(q)))};
  }
  switch (q.scalar_type()) {
    case at::kDouble:
      return fwd_pairs<double, double>(d, q, k1, k2, v1, v2, w1, w2, causal, scale);
    case at::kBFloat16:
      return fwd_pairs<float, c10::BFloat16>(d, q, k1, k2, v1, v2, w1, w2, causal, scale);
    case at::kHalf:
      return fwd_pairs<float, c10::Half>(d, q, k1, k2, v1, v2, w1, w2, causal, scale);
    default:
      return fwd_pairs<float, float>(d, q, k1, k2, v1, v2, w1, w2, causal, scale);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1,
    const at::Tensor& v2, const at::Tensor& out, const at::Tensor& lse, int64_t w1, int64_t w2, bool causal,
    double scale) {
  const Dims d = check_inputs(q, k1, k2, v1, v2, w1, w2);
  check_grad_inputs(d, q, dout, out, lse);
  check_dtype(q);
  if (d.B == 0 || d.N == 0) {
    return {at::empty(q.sizes(), q.options()), at::empty(k1.sizes(), k1.options()), at::empty(k2.sizes(), k2.options()),
            at::empty(v1.sizes(), v1.options()), at::empty(v2.sizes(), v2.options())};
  }
  switch (q.scalar_type()) {
    case at::kDouble:
      return bwd_pairs<double, double>(d, dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, scale);
    case at::kBFloat16:
      return bwd_pairs<float, c10::BFloat16>(d, dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, scale);
    case at::kHalf:
      return bwd_pairs<float, c10::Half>(d, dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, scale);
    default:
      return bwd_pairs<float, float>(d, dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, scale);
  }
}

// The schema entry points (csrc/ops.cpp): one checked Problem per call.
// TODO(interface): packed layouts, determinant logits, lse_lo and decoding are not in these
// kernels yet; they fail with a clear error instead.
void require_batched_trilinear(const Problem& p) {
  TORCH_CHECK(!p.packed(), "the cpu backend does not implement packed sequences (cu_seqlens) yet");
  TORCH_CHECK(p.logits == Logits::kTrilinear, "the cpu backend does not implement logits='determinant' yet");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_fwd_op(const at::Tensor& q, const at::Tensor& k1,
                                                            const at::Tensor& k2, const at::Tensor& v1,
                                                            const at::Tensor& v2,
                                                            const std::optional<at::Tensor>& cu_seqlens,
                                                            int64_t max_seqlen, int64_t w1, int64_t w2, bool causal,
                                                            double scale, c10::string_view logits) {
  TORCH_CHECK(q.dim() == 4, "q must have rank 4 [B, N, Hq, D], got rank ", q.dim());
  const Problem p = make_problem(q, cu_seqlens, max_seqlen, w1, w2, causal, scale, logits);
  require_batched_trilinear(p);
  auto [out, lse] = fused_fwd_cpu(q, k1, k2, v1, v2, p.w1, p.w2, p.causal, p.scale);
  return {out, lse, at::zeros_like(lse)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_bwd_op(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1,
    const at::Tensor& v2, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& lse_lo,
    const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen, int64_t w1, int64_t w2, bool causal, double scale,
    c10::string_view logits) {
  TORCH_CHECK(q.dim() == 4, "q must have rank 4 [B, N, Hq, D], got rank ", q.dim());
  const Problem p = make_problem(q, cu_seqlens, max_seqlen, w1, w2, causal, scale, logits);
  require_batched_trilinear(p);
  SA_CHECK_SHAPE(lse_lo, q.size(0), q.size(2), q.size(1));
  return fused_bwd_cpu(dout, q, k1, k2, v1, v2, out, lse, p.w1, p.w2, p.causal, p.scale);
}

std::tuple<at::Tensor, at::Tensor> fused_decode_op(const at::Tensor& q, const at::Tensor& k1_cache,
                                                   const at::Tensor& k2_cache, const at::Tensor& v1_cache,
                                                   const at::Tensor& v2_cache, const at::Tensor& cache_seqlens,
                                                   int64_t w1, int64_t w2, double scale, c10::string_view logits) {
  TORCH_CHECK(q.dim() == 4, "q must have rank 4 [B, Nq, Hq, D], got rank ", q.dim());
  make_decode_problem(q, cache_seqlens, w1, w2, scale, logits);
  (void)k1_cache, (void)k2_cache, (void)v1_cache, (void)v2_cache;
  TORCH_CHECK(false, "the cpu backend does not implement decoding (fused_decode) yet");
  return {};
}

}  // namespace

const char* float_kernel_isa() { return float_kernels().isa; }

TORCH_LIBRARY_IMPL(simplicial_attn, CPU, m) {
  m.impl("fused_fwd", &fused_fwd_op);
  m.impl("fused_bwd", &fused_bwd_op);
  m.impl("fused_decode", &fused_decode_op);
}

}  // namespace cpu
}  // namespace simplicial_attn
