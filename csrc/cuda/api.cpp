// The CUDA kernels as dispatcher ops: TORCH_LIBRARY_IMPL(simplicial_attn, CUDA) for the schemas of
// csrc/ops.cpp. Argument checks (csrc/include/checks.h), one checked Problem per call
// (csrc/include/problem.h) turned into the kernels' ProblemDesc (params.h), device guard, the
// caller's current stream, output allocation, then the per-dtype entry points of kernels.h. No host
// synchronisation: the kernels are only enqueued (a decode step can be captured in a CUDA graph).
//
// Shapes: q, out, dout [B, N, Hq, D]; k1, k2, v1, v2 [B, N, Hkv, D]; lse, lse_lo [B, Hq, N] float32
// (packed layout: B = 1, N = T). Decoding: q [B, Nq, Hq, D], k1/v1 caches [B, C1, Hkv, D], k2/v2
// caches [B, C2, Hkv, D]. Any strides: a tensor whose last dim is not unit-stride is made
// contiguous, the others pass their strides to the kernels (64-bit offsets).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <utility>

#include "checks.h"
#include "kernels.h"
#include "problem.h"

namespace simplicial_attn {
namespace {

cuda::DType kernel_dtype(const at::Tensor& q) {
  switch (q.scalar_type()) {
    case at::kHalf:
      return cuda::DType::kHalf;
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    case at::kFloat:
      return cuda::DType::kFloat;
    default:
      TORCH_CHECK(false, "the CUDA kernels support q dtypes float16, bfloat16 and float32, got ", q.scalar_type(),
                  " (float64 runs on the cpu and reference backends)");
  }
}

void check_cuda(const at::Tensor& q, const Dims& d) {
  TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor for the CUDA kernels, got a tensor on ", q.device());
  // Positions and window bands are 32-bit in the kernels (windows are clipped to 2N - 1).
  TORCH_CHECK(d.N < (int64_t{1} << 30), "sequence length N must be below 2^30 for the CUDA kernels, got ", d.N);
  TORCH_CHECK(d.Hq < (int64_t{1} << 24) && d.B < (int64_t{1} << 30),
              "B and Hq are too large for the CUDA kernels: B = ", d.B, ", Hq = ", d.Hq);
}

// The kernels need a unit stride on D; other strides are passed through.
at::Tensor unit_stride_d(const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); }

cuda::TensorRef ref(const at::Tensor& t) { return {t.const_data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }
cuda::MutTensorRef mut_ref(at::Tensor& t) { return {t.mutable_data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }

// The five inputs of a call (q, k1, k2, v1, v2; the caches when decoding) with a unit stride on D:
// a copy where a tensor lacks one, alive until the kernels are enqueued. pass_to gives their refs to
// the kernels' arguments.
struct Inputs {
  at::Tensor q, k1, k2, v1, v2;
  Inputs(const at::Tensor& q_, const at::Tensor& k1_, const at::Tensor& k2_, const at::Tensor& v1_,
         const at::Tensor& v2_)
      : q(unit_stride_d(q_)),
        k1(unit_stride_d(k1_)),
        k2(unit_stride_d(k2_)),
        v1(unit_stride_d(v1_)),
        v2(unit_stride_d(v2_)) {}
  template <class Args>
  void pass_to(Args& a) const {
    a.q = ref(q);
    a.k1 = ref(k1);
    a.k2 = ref(k2);
    a.v1 = ref(v1);
    a.v2 = ref(v2);
  }
};

cuda::Dims kernel_dims(const Dims& d) {
  return {static_cast<int>(d.B), static_cast<int>(d.N), static_cast<int>(d.Hq), static_cast<int>(d.Hkv),
          static_cast<int>(d.D)};
}

// The kernels' view of the problem. Packed: B == 1 and N == T (make_problem checked B); cu_seqlens
// is trusted to be what the public function validated (0 = cu[0] <= ... <= cu[S] = T, CONTRACT §6:
// reading it here would synchronise), but the kernels clamp it to [0, T) and max_seqlen to what
// they visit, so even a bad one cannot make them read or write outside the tensors.
// The bands are clipped below N (< 2^30, check_cuda; decoding: 2^30, as cache positions are
// int32), which keeps the kernels' 32-bit positions from overflowing for a direct call's huge band.
cuda::ProblemDesc problem_desc(const Problem& p, const Dims& d) {
  cuda::ProblemDesc r{};
  const int64_t span = p.decoding() ? int64_t{1} << 30 : d.N;
  for (const auto& [band, out] : {std::pair{&p.band1, &r.band1}, std::pair{&p.band2, &r.band2}}) {
    const Band c = band->clipped(span);
    *out = {static_cast<int>(c.left), static_cast<int>(c.right)};
  }
  r.scale = static_cast<float>(p.scale);
  r.determinant = p.logits == Logits::kDeterminant;
  if (p.packed()) {
    // A hint at least every length (the public function checks that against cu_seqlens): any larger
    // value is allowed, and none needs more tiles than T rows fill.
    TORCH_CHECK(p.max_seqlen >= 1 || d.N == 0, "max_seqlen must be >= every sequence length (>= 1 for T = ", d.N,
                " tokens), got ", p.max_seqlen);
    TORCH_CHECK(p.num_seqs() < (int64_t{1} << 30), "too many packed sequences for the CUDA kernels: ", p.num_seqs());
    r.cu_seqlens = p.cu_seqlens.const_data_ptr<int>();
    r.num_seqs = static_cast<int>(p.num_seqs());
    r.max_seqlen = static_cast<int>(std::min<int64_t>(p.max_seqlen, d.N));
  } else {
    r.cu_seqlens = nullptr;
    r.num_seqs = static_cast<int>(d.B);
    r.max_seqlen = static_cast<int>(d.N);
  }
  return r;
}

// The fields every fwd / bwd call's arguments start with.
template <class Args>
Args call_args(cuda::DType dtype, const Problem& prob, const Dims& d) {
  Args a{};
  a.dtype = dtype;
  a.dims = kernel_dims(d);
  a.prob = problem_desc(prob, d);
  return a;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_fwd_op(
    const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1, const at::Tensor& v2,
    const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen, int64_t left1, int64_t right1, int64_t left2,
    int64_t right2, double scale, c10::string_view logits) {
  TORCH_CHECK(q.dim() == 4, "q must have rank 4 [B, N, Hq, D], got rank ", q.dim());
  const Problem prob = make_problem(q, cu_seqlens, max_seqlen, left1, right1, left2, right2, scale, logits);
  const Dims d = check_inputs(q, k1, k2, v1, v2);
  check_cuda(q, d);
  const cuda::DType dtype = kernel_dtype(q);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({d.B, d.N, d.Hq, d.D}, q.options());
  at::Tensor lse = at::empty({d.B, d.Hq, d.N}, q.options().dtype(at::kFloat));
  at::Tensor lse_lo = at::empty({d.B, d.Hq, d.N}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse, lse_lo};

  const Inputs in(q, k1, k2, v1, v2);
  auto args = call_args<cuda::FwdArgs>(dtype, prob, d);
  in.pass_to(args);
  args.out = mut_ref(out);
  args.lse = lse.mutable_data_ptr<float>();
  args.lse_lo = lse_lo.mutable_data_ptr<float>();
  cuda::run_fwd(args, c10::cuda::getCurrentCUDAStream());
  return {out, lse, lse_lo};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_bwd_op(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1,
    const at::Tensor& v2, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& lse_lo,
    const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen, int64_t left1, int64_t right1, int64_t left2,
    int64_t right2, double scale, c10::string_view logits) {
  TORCH_CHECK(q.dim() == 4, "q must have rank 4 [B, N, Hq, D], got rank ", q.dim());
  const Problem prob = make_problem(q, cu_seqlens, max_seqlen, left1, right1, left2, right2, scale, logits);
  const Dims d = check_inputs(q, k1, k2, v1, v2);
  check_grad_inputs(d, q, dout, out, lse);
  SA_CHECK_DEVICE(lse_lo, q.device());
  SA_CHECK_DTYPE(lse_lo, lse.scalar_type());
  SA_CHECK_SHAPE(lse_lo, d.B, d.Hq, d.N);
  check_cuda(q, d);
  const cuda::DType dtype = kernel_dtype(q);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk1 = at::empty(k1.sizes(), k1.options()), dk2 = at::empty(k2.sizes(), k2.options());
  at::Tensor dv1 = at::empty(v1.sizes(), v1.options()), dv2 = at::empty(v2.sizes(), v2.options());
  if (dq.numel() == 0) return {dq, dk1, dk2, dv1, dv2};

  const Inputs in(q, k1, k2, v1, v2);
  const at::Tensor doc = unit_stride_d(dout), outc = unit_stride_d(out);
  const at::Tensor lsec = lse.contiguous(), lse_loc = lse_lo.contiguous();
  at::Tensor delta = at::empty({d.B, d.Hq, d.N}, q.options().dtype(at::kFloat));
  auto args = call_args<cuda::BwdArgs>(dtype, prob, d);
  in.pass_to(args);
  args.dout = ref(doc);
  args.out = ref(outc);
  args.lse = lsec.const_data_ptr<float>();
  args.lse_lo = lse_loc.const_data_ptr<float>();
  args.dq = mut_ref(dq);
  args.dk1 = mut_ref(dk1);
  args.dk2 = mut_ref(dk2);
  args.dv1 = mut_ref(dv1);
  args.dv2 = mut_ref(dv2);
  args.delta = delta.mutable_data_ptr<float>();
  // The fused dq + dk2 + dv2 pass's partial sums (zeroed: its CTAs add into them), through the
  // caching allocator.
  const int64_t scratch_floats = cuda::bwd_scratch_floats(args);
  at::Tensor scratch;
  if (scratch_floats > 0) scratch = at::zeros({scratch_floats}, q.options().dtype(at::kFloat));
  args.scratch = scratch_floats > 0 ? scratch.mutable_data_ptr<float>() : nullptr;
  cuda::run_bwd(args, c10::cuda::getCurrentCUDAStream());
  return {dq, dk1, dk2, dv1, dv2};
}

// A cache [B, C, Hkv, D] of q's batch, dtype and device, with C >= 1 slots.
void check_cache(const at::Tensor& c, const char* name, const at::Tensor& q, int64_t hkv) {
  TORCH_CHECK(c.dim() == 4, name, " must have rank 4 [B, C, Hkv, D], got rank ", c.dim());
  SA_CHECK_DEVICE(c, q.device());
  SA_CHECK_DTYPE(c, q.scalar_type());
  TORCH_CHECK(c.size(0) == q.size(0) && c.size(2) == hkv && c.size(3) == q.size(3) && c.size(1) >= 1, name,
              " must have shape [B, C, Hkv, D] = [", q.size(0), ", C >= 1, ", hkv, ", ", q.size(3), "], got ",
              c.sizes());
  TORCH_CHECK(c.size(1) < (int64_t{1} << 30), name, " has too many slots for the CUDA kernels: ", c.size(1));
}

std::tuple<at::Tensor, at::Tensor> fused_decode_op(const at::Tensor& q, const at::Tensor& k1_cache,
                                                   const at::Tensor& k2_cache, const at::Tensor& v1_cache,
                                                   const at::Tensor& v2_cache, const at::Tensor& cache_seqlens,
                                                   int64_t left1, int64_t right1, int64_t left2, int64_t right2,
                                                   double scale, c10::string_view logits) {
  TORCH_CHECK(q.dim() == 4, "q must have rank 4 [B, Nq, Hq, D], got rank ", q.dim());
  const Problem prob = make_decode_problem(q, cache_seqlens, left1, right1, left2, right2, scale, logits);
  TORCH_CHECK(k1_cache.dim() == 4, "k1_cache must have rank 4 [B, C1, Hkv, D], got rank ", k1_cache.dim());
  const int64_t B = q.size(0), Nq = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k1_cache.size(2);
  for (const auto& [c, name] : {std::pair{&k1_cache, "k1_cache"}, std::pair{&k2_cache, "k2_cache"},
                                std::pair{&v1_cache, "v1_cache"}, std::pair{&v2_cache, "v2_cache"}})
    check_cache(*c, name, q, Hkv);
  TORCH_CHECK(v1_cache.size(1) == k1_cache.size(1), "v1_cache must have k1_cache's ", k1_cache.size(1), " slots, got ",
              v1_cache.size(1));
  TORCH_CHECK(v2_cache.size(1) == k2_cache.size(1), "v2_cache must have k2_cache's ", k2_cache.size(1), " slots, got ",
              v2_cache.size(1));
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0, "Hq (", Hq, ") must be a multiple of Hkv (", Hkv, ")");
  TORCH_CHECK(D >= 1 && D <= 256, "head dim D must be in 1..256, got ", D);
  TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor for the CUDA kernels, got a tensor on ", q.device());
  TORCH_CHECK(B * Nq * Hq < (int64_t{1} << 31) / cuda::kDecodeMaxSplits, "too many query rows for one decode launch");
  const cuda::DType dtype = kernel_dtype(q);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({B, Hq, Nq}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};

  const cuda::ProblemDesc desc = problem_desc(prob, Dims{B, Nq, Hq, Hkv, D});
  const int splits = cuda::decode_splits(desc.band1);
  at::Tensor workspace = at::empty({cuda::decode_workspace_floats(B * Nq * Hq, splits, D)}, lse.options());
  const Inputs in(q, k1_cache, k2_cache, v1_cache, v2_cache);
  cuda::DecodeArgs args{};
  args.dtype = dtype;
  args.B = static_cast<int>(B);
  args.Nq = static_cast<int>(Nq);
  args.Hq = static_cast<int>(Hq);
  args.Hkv = static_cast<int>(Hkv);
  args.D = static_cast<int>(D);
  args.C1 = static_cast<int>(k1_cache.size(1));
  args.C2 = static_cast<int>(k2_cache.size(1));
  args.prob = desc;
  args.cache_seqlens = prob.cache_seqlens.const_data_ptr<int>();
  in.pass_to(args);
  args.out = mut_ref(out);
  args.lse = lse.mutable_data_ptr<float>();
  args.workspace = workspace.mutable_data_ptr<float>();
  cuda::run_decode(args, c10::cuda::getCurrentCUDAStream());
  return {out, lse};
}

}  // namespace
}  // namespace simplicial_attn

TORCH_LIBRARY_IMPL(simplicial_attn, CUDA, m) {
  m.impl("fused_fwd", &simplicial_attn::fused_fwd_op);
  m.impl("fused_bwd", &simplicial_attn::fused_bwd_op);
  m.impl("fused_decode", &simplicial_attn::fused_decode_op);
}
