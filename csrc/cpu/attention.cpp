// CPU implementation of simplicial_attn::fused_fwd / fused_bwd (csrc/ops.cpp): argument checks,
// the sequences and work items of a call (layout.h), the kernel run over them (kernel_impl.h)
// and, in the backward, the fixed-order sum of the key/value halos (layout.h).
//
// Batched calls have one sequence per batch; packed ones (CONTRACT §6) one per cu_seqlens
// entry, every window clipped to its own sequence inside the kernels (no padding, no copies).
// The kernels read float32 inputs with unit stride in D in place; other dtypes (bf16/fp16 run
// the float32 kernels, float64 its own) and strides are converted row by row into per-thread
// scratch as a work item needs them, O(N*H*D) work against the kernels' O(N*H*D*w1*w2).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <utility>
#include <vector>

#include "checks.h"
#include "dispatch.h"
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
// Work items a call should have at least (block_rows), for load balance.
constexpr int64_t kMinItems = 16;

Geometry make_geometry(const Dims& d, int64_t vector_width, Band b1, Band b2, bool det, int64_t longest) {
  Geometry g;
  g.B = d.B;
  g.N = d.N;
  g.Hq = d.Hq;
  g.Hkv = d.Hkv;
  g.D = d.D;
  g.DP = round_up(d.D, vector_width);
  g.longest = longest;
  g.b1 = b1;
  g.b2 = b2;
  const int64_t w1 = b1.width(), w2 = b2.width();
  g.KT = w2 < kMaxKTile ? w2 : kMaxKTile;
  g.JT = round_up(w1 < kMaxJTile ? w1 : kMaxJTile, vector_width);
  g.det = det;
  return g;
}

// The sequences of a call: one per batch, or the packed ones of cu_seqlens (checked here too,
// since the op can be called directly).
SequenceTable sequences_of(const Dims& d, const Problem& p) {
  if (!p.packed()) return SequenceTable::batched(d.B, d.N);
  const int32_t* cu = p.cu_seqlens.data_ptr<int32_t>();
  const int64_t S = p.num_seqs();
  TORCH_CHECK(cu[0] == 0, "cu_seqlens must start at 0, got cu_seqlens[0] = ", cu[0]);
  for (int64_t s = 0; s < S; ++s) {
    TORCH_CHECK(cu[s + 1] >= cu[s], "cu_seqlens must be non-decreasing, got cu_seqlens[", s + 1, "] = ", cu[s + 1],
                " < cu_seqlens[", s, "] = ", cu[s]);
  }
  TORCH_CHECK(cu[S] == d.N, "cu_seqlens must end at the number of rows T = ", d.N, ", got cu_seqlens[", S,
              "] = ", cu[S]);
  SequenceTable t = SequenceTable::packed(cu, S);
  TORCH_CHECK(p.max_seqlen >= t.longest(), "max_seqlen must be >= every sequence length, got ", p.max_seqlen,
              " for a sequence of ", t.longest());
  return t;
}

// Queries per work item. The backward's halo (kernel_args.h) holds w1 - 1 rows per block, so
// blocks of 2 (w1 - 1) keep it at half a gradient; smaller blocks only to give kMinItems items
// (down to a quarter of w1: at most 4 gradients of halo). The partition fixes the summation
// order of the key gradients, so it depends on the problem only, never on the thread count
// (bitwise-equal results with 1 or N threads). The forward uses the same blocks: each item
// transposes k1 once for BQ + w1 - 1 positions.
int64_t block_rows(const Geometry& g, const SequenceTable& seqs) {
  const int64_t width = g.b1.L + g.b1.R;
  int64_t bq = round_up(2 * width > 64 ? 2 * width : 64, 16);
  while (bq > 16 && bq / 2 >= width / 4 && seqs.items_for(bq, g.Hkv) < kMinItems) bq = round_up(bq / 2, 16);
  return bq;
}

// The kernels vectorise over the j window (w1) and cut the k window (w2) into tiles of 32
// rows, so a narrow j window wastes vector lanes (w1 = 1 uses one of 16). The math is symmetric
// in the pairs (k1, v1, band1) and (k2, v2, band2), except that the determinant changes sign, so
// when band2 is the wider one the pairs are passed swapped (the gradients swapped back) and a
// determinant's scale negated. Bands wider than the longest sequence behave like the widest
// useful one; clipping them keeps the scratch sizes (BQ + L + R rows) meaningful for direct calls
// with huge bands.
struct Pairs {
  const at::Tensor *k1, *k2, *v1, *v2;
  Band b1, b2;
  double scale;
  bool swapped;
};

Band kernel_band(const simplicial_attn::Band& b, int64_t longest) {
  const simplicial_attn::Band c = b.clipped(longest);
  return {c.left, c.right};
}

Pairs order_pairs(const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1, const at::Tensor& v2,
                  const Problem& p, int64_t longest) {
  const Band b1 = kernel_band(p.band1, longest), b2 = kernel_band(p.band2, longest);
  if (b2.width() <= b1.width()) return {&k1, &k2, &v1, &v2, b1, b2, p.scale, false};
  const double scale = p.logits == Logits::kDeterminant ? -p.scale : p.scale;
  return {&k2, &k1, &v2, &v1, b2, b1, scale, true};
}

// One fused call after its checks: sizes, sequences, ordered pairs and geometry.
struct Call {
  Dims d;
  SequenceTable seqs;
  Pairs pairs;
  Geometry g;
};

Call plan_call(const Dims& d, const Problem& p, int64_t vector_width, const at::Tensor& k1, const at::Tensor& k2,
               const at::Tensor& v1, const at::Tensor& v2) {
  SequenceTable seqs = sequences_of(d, p);
  const int64_t longest = seqs.longest();
  const Pairs pairs = order_pairs(k1, k2, v1, v2, p, longest);
  const Geometry g = make_geometry(d, vector_width, pairs.b1, pairs.b2, p.logits == Logits::kDeterminant, longest);
  seqs.plan(block_rows(g, seqs), g.Hkv);
  return {d, std::move(seqs), pairs, g};
}

template <typename T, typename S>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_fwd(const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2,
                                                       const at::Tensor& v1, const at::Tensor& v2, const Problem& p) {
  const KernelSet<T>& ks = kernels_for<T>();
  const Call c =
      plan_call(Dims{q.size(0), q.size(1), q.size(2), k1.size(2), q.size(3)}, p, ks.vector_width, k1, k2, v1, v2);
  const Geometry& g = c.g;
  const at::Tensor out = at::empty(q.sizes(), q.options());
  const at::Tensor lse = at::empty({g.B, g.Hq, g.N}, q.options().dtype(c10::CppTypeToScalarType<T>::value));
  const at::Tensor lse_lo = at::empty_like(lse);
  FwdArgs<T> a;
  a.g = g;
  a.sched = c.seqs.schedule();
  a.scale = static_cast<T>(c.pairs.scale);
  a.q = make_input<T, S>(q, g.DP);
  a.k1 = make_input<T, S>(*c.pairs.k1, g.DP);
  a.k2 = make_input<T, S>(*c.pairs.k2, g.DP);
  a.v1 = make_input<T, S>(*c.pairs.v1, g.DP);
  a.v2 = make_input<T, S>(*c.pairs.v2, g.DP);
  a.out = make_output<T, S>(out, g.DP);
  a.lse = lse.data_ptr<T>();
  a.lse_lo = lse_lo.data_ptr<T>();
  at::parallel_for(0, a.sched.items(), 1, [&](int64_t begin, int64_t end) { ks.fwd(a, begin, end); });
  return {out, lse, lse_lo};
}

// A key/value gradient's fp32 (float64) accumulator: the output itself when the kernels can
// write it in place, else a [B, N, Hkv, DP] buffer that the halo sum converts into it.
template <typename T, typename S>
std::pair<Accum<T>, at::Tensor> accumulator(const at::Tensor& grad, const Geometry& g) {
  if (usable_in_place<T, S>(grad, g.DP)) {
    return {Accum<T>{reinterpret_cast<T*>(grad.data_ptr<S>()), grad.stride(0), grad.stride(1), grad.stride(2)},
            at::Tensor()};
  }
  at::Tensor buf = at::empty({g.B, g.N, g.Hkv, g.DP}, grad.options().dtype(c10::CppTypeToScalarType<T>::value));
  return {Accum<T>{buf.data_ptr<T>(), buf.stride(0), buf.stride(1), buf.stride(2)}, buf};
}

template <typename T, typename S>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1,
    const at::Tensor& v2, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& lse_lo, const Problem& p) {
  const KernelSet<T>& ks = kernels_for<T>();
  const Call c =
      plan_call(Dims{q.size(0), q.size(1), q.size(2), k1.size(2), q.size(3)}, p, ks.vector_width, k1, k2, v1, v2);
  const Geometry& g = c.g;
  const at::Tensor lse_c = lse.contiguous(), lse_lo_c = lse_lo.contiguous();
  // Gradients in the kernels' pair order (swapped back on return).
  const at::Tensor dq = at::empty(q.sizes(), q.options());
  const at::Tensor dk1 = at::empty(c.pairs.k1->sizes(), q.options()), dk2 = at::empty(c.pairs.k2->sizes(), q.options()),
                   dv1 = at::empty(c.pairs.v1->sizes(), q.options()), dv2 = at::empty(c.pairs.v2->sizes(), q.options());
  const auto [acc_k1, buf_k1] = accumulator<T, S>(dk1, g);
  const auto [acc_v1, buf_v1] = accumulator<T, S>(dv1, g);
  const auto [acc_k2, buf_k2] = accumulator<T, S>(dk2, g);
  const auto [acc_v2, buf_v2] = accumulator<T, S>(dv2, g);
  const auto opts = q.options().dtype(c10::CppTypeToScalarType<T>::value);
  const int64_t slots = c.seqs.halo_slots();
  const at::Tensor halo_k1 = at::empty({slots, g.b1.L + g.b1.R, g.DP}, opts),
                   halo_v1 = at::empty({slots, g.b1.L + g.b1.R, g.DP}, opts),
                   halo_k2 = at::empty({slots, g.b2.L + g.b2.R, g.DP}, opts),
                   halo_v2 = at::empty({slots, g.b2.L + g.b2.R, g.DP}, opts);

  BwdArgs<T> a;
  a.g = g;
  a.sched = c.seqs.schedule();
  a.scale = static_cast<T>(c.pairs.scale);
  a.q = make_input<T, S>(q, g.DP);
  a.k1 = make_input<T, S>(*c.pairs.k1, g.DP);
  a.k2 = make_input<T, S>(*c.pairs.k2, g.DP);
  a.v1 = make_input<T, S>(*c.pairs.v1, g.DP);
  a.v2 = make_input<T, S>(*c.pairs.v2, g.DP);
  a.dout = make_input<T, S>(dout, g.DP);
  a.out = make_input<T, S>(out, g.DP);
  a.lse = lse_c.data_ptr<T>();
  a.lse_lo = lse_lo_c.data_ptr<T>();
  a.dq = make_output<T, S>(dq, g.DP);
  a.dk1 = acc_k1;
  a.dv1 = acc_v1;
  a.dk2 = acc_k2;
  a.dv2 = acc_v2;
  a.halo_k1 = halo_k1.data_ptr<T>();
  a.halo_v1 = halo_v1.data_ptr<T>();
  a.halo_k2 = halo_k2.data_ptr<T>();
  a.halo_v2 = halo_v2.data_ptr<T>();
  at::parallel_for(0, a.sched.items(), 1, [&](int64_t begin, int64_t end) { ks.bwd(a, begin, end); });

  const std::vector<HaloJob<T>> jobs = {
      {acc_k1, a.halo_k1, g.b1, make_output<T, S>(dk1, g.DP), !buf_k1.defined()},
      {acc_v1, a.halo_v1, g.b1, make_output<T, S>(dv1, g.DP), !buf_v1.defined()},
      {acc_k2, a.halo_k2, g.b2, make_output<T, S>(dk2, g.DP), !buf_k2.defined()},
      {acc_v2, a.halo_v2, g.b2, make_output<T, S>(dv2, g.DP), !buf_v2.defined()},
  };
  sum_halos(g, a.sched, jobs);
  if (c.pairs.swapped) return {dq, dk2, dk1, dv2, dv1};
  return {dq, dk1, dk2, dv1, dv2};
}

// The schema entry points (csrc/ops.cpp): one checked Problem per call.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_fwd_op(
    const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1, const at::Tensor& v2,
    const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen, int64_t left1, int64_t right1, int64_t left2,
    int64_t right2, double scale, c10::string_view logits) {
  const Dims d = check_inputs(q, k1, k2, v1, v2);
  check_dtype(q);
  const Problem p = make_problem(q, cu_seqlens, max_seqlen, left1, right1, left2, right2, scale, logits);
  if (d.B == 0 || d.N == 0) {  // Python returns before calling; direct calls get empty results too
    const at::Tensor lse = at::empty({d.B, d.Hq, d.N}, q.options().dtype(compute_dtype(q.scalar_type())));
    return {at::empty(q.sizes(), q.options()), lse, at::empty_like(lse)};
  }
  return with_types(q.scalar_type(), [&]<typename T, typename S>() { return run_fwd<T, S>(q, k1, k2, v1, v2, p); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_bwd_op(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1,
    const at::Tensor& v2, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& lse_lo,
    const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen, int64_t left1, int64_t right1, int64_t left2,
    int64_t right2, double scale, c10::string_view logits) {
  const Dims d = check_inputs(q, k1, k2, v1, v2);
  check_grad_inputs(d, q, dout, out, lse);
  SA_CHECK_DEVICE(lse_lo, q.device());
  SA_CHECK_DTYPE(lse_lo, lse.scalar_type());
  SA_CHECK_SHAPE(lse_lo, d.B, d.Hq, d.N);
  check_dtype(q);
  const Problem p = make_problem(q, cu_seqlens, max_seqlen, left1, right1, left2, right2, scale, logits);
  if (d.B == 0 || d.N == 0) {
    return {at::empty(q.sizes(), q.options()), at::empty(k1.sizes(), k1.options()), at::empty(k2.sizes(), k2.options()),
            at::empty(v1.sizes(), v1.options()), at::empty(v2.sizes(), v2.options())};
  }
  return with_types(q.scalar_type(), [&]<typename T, typename S>() {
    return run_bwd<T, S>(dout, q, k1, k2, v1, v2, out, lse, lse_lo, p);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(simplicial_attn, CPU, m) {
  m.impl("fused_fwd", &fused_fwd_op);
  m.impl("fused_bwd", &fused_bwd_op);
}

}  // namespace cpu
}  // namespace simplicial_attn
