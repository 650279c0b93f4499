// The CUDA kernels as dispatcher ops: TORCH_LIBRARY_IMPL(simplicial_attn, CUDA) for the schemas of
// csrc/ops.cpp. Argument checks (csrc/include/checks.h), device guard, the caller's current stream,
// output allocation, then the per-dtype entry points of kernels.h. No host synchronisation: the
// kernels are only enqueued.
//
// Shapes: q, out, dout [B, N, Hq, D]; k1, k2, v1, v2 [B, N, Hkv, D]; lse [B, Hq, N] float32,
// natural log. Any strides: a tensor whose last dim is not unit-stride is made contiguous, the
// others pass their strides to the kernels (64-bit offsets).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

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

cuda::Dims kernel_dims(const Dims& d) {
  return {static_cast<int>(d.B), static_cast<int>(d.N), static_cast<int>(d.Hq), static_cast<int>(d.Hkv),
          static_cast<int>(d.D)};
}

std::tuple<at::Tensor, at::Tensor> fused_fwd_cuda(const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2,
                                                  const at::Tensor& v1, const at::Tensor& v2, int64_t w1, int64_t w2,
                                                  bool causal, double scale) {
  const Dims d = check_inputs(q, k1, k2, v1, v2, w1, w2);
  check_cuda(q, d);
  const cuda::DType dtype = kernel_dtype(q);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({d.B, d.N, d.Hq, d.D}, q.options());
  at::Tensor lse = at::empty({d.B, d.Hq, d.N}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};

  const at::Tensor qc = unit_stride_d(q), k1c = unit_stride_d(k1), k2c = unit_stride_d(k2);
  const at::Tensor v1c = unit_stride_d(v1), v2c = unit_stride_d(v2);
  cuda::FwdArgs args{};
  args.dtype = dtype;
  args.dims = kernel_dims(d);
  args.q = ref(qc);
  args.k1 = ref(k1c);
  args.k2 = ref(k2c);
  args.v1 = ref(v1c);
  args.v2 = ref(v2c);
  args.out = mut_ref(out);
  args.lse = lse.mutable_data_ptr<float>();
  args.band1 = cuda::make_band(w1, d.N, causal);
  args.band2 = cuda::make_band(w2, d.N, causal);
  args.scale = static_cast<float>(scale);
  cuda::run_fwd(args, c10::cuda::getCurrentCUDAStream());
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_bwd_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1,
    const at::Tensor& v2, const at::Tensor& out, const at::Tensor& lse, int64_t w1, int64_t w2, bool causal,
    double scale) {
  const Dims d = check_inputs(q, k1, k2, v1, v2, w1, w2);
  check_grad_inputs(d, q, dout, out, lse);
  check_cuda(q, d);
  const cuda::DType dtype = kernel_dtype(q);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk1 = at::empty(k1.sizes(), k1.options()), dk2 = at::empty(k2.sizes(), k2.options());
  at::Tensor dv1 = at::empty(v1.sizes(), v1.options()), dv2 = at::empty(v2.sizes(), v2.options());
  if (dq.numel() == 0) return {dq, dk1, dk2, dv1, dv2};

  const at::Tensor doc = unit_stride_d(dout), qc = unit_stride_d(q), k1c = unit_stride_d(k1);
  const at::Tensor k2c = unit_stride_d(k2), v1c = unit_stride_d(v1), v2c = unit_stride_d(v2);
  const at::Tensor outc = unit_stride_d(out), lsec = lse.contiguous();
  at::Tensor delta = at::empty({d.B, d.Hq, d.N}, q.options().dtype(at::kFloat));
  cuda::BwdArgs args{};
  args.dtype = dtype;
  args.dims = kernel_dims(d);
  args.dout = ref(doc);
  args.q = ref(qc);
  args.k1 = ref(k1c);
  args.k2 = ref(k2c);
  args.v1 = ref(v1c);
  args.v2 = ref(v2c);
  args.out = ref(outc);
  args.lse = lsec.const_data_ptr<float>();
  args.dq = mut_ref(dq);
  args.dk1 = mut_ref(dk1);
  args.dk2 = mut_ref(dk2);
  args.dv1 = mut_ref(dv1);
  args.dv2 = mut_ref(dv2);
  args.delta = delta.mutable_data_ptr<float>();
  args.band1 = cuda::make_band(w1, d.N, causal);
  args.band2 = cuda::make_band(w2, d.N, causal);
  args.scale = static_cast<float>(scale);
  cuda::run_bwd(args, c10::cuda::getCurrentCUDAStream());
  return {dq, dk1, dk2, dv1, dv2};
}

// The schema entry points (csrc/ops.cpp): one checked Problem per call.
// TODO(interface): packed layouts, determinant logits, lse_lo and decoding are not in these
// kernels yet; they fail with a clear error instead.
void require_batched_trilinear(const Problem& p) {
  TORCH_CHECK(!p.packed(), "the cuda backend does not implement packed sequences (cu_seqlens) yet");
  TORCH_CHECK(p.logits == Logits::kTrilinear, "the cuda backend does not implement logits='determinant' yet");
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
  auto [out, lse] = fused_fwd_cuda(q, k1, k2, v1, v2, p.w1, p.w2, p.causal, p.scale);
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
  return fused_bwd_cuda(dout, q, k1, k2, v1, v2, out, lse, p.w1, p.w2, p.causal, p.scale);
}

std::tuple<at::Tensor, at::Tensor> fused_decode_op(const at::Tensor& q, const at::Tensor& k1_cache,
                                                   const at::Tensor& k2_cache, const at::Tensor& v1_cache,
                                                   const at::Tensor& v2_cache, const at::Tensor& cache_seqlens,
                                                   int64_t w1, int64_t w2, double scale, c10::string_view logits) {
  TORCH_CHECK(q.dim() == 4, "q must have rank 4 [B, Nq, Hq, D], got rank ", q.dim());
  make_decode_problem(q, cache_seqlens, w1, w2, scale, logits);
  (void)k1_cache, (void)k2_cache, (void)v1_cache, (void)v2_cache;
  TORCH_CHECK(false, "the cuda backend does not implement decoding (fused_decode) yet");
  return {};
}

}  // namespace
}  // namespace simplicial_attn

TORCH_LIBRARY_IMPL(simplicial_attn, CUDA, m) {
  m.impl("fused_fwd", &simplicial_attn::fused_fwd_op);
  m.impl("fused_bwd", &simplicial_attn::fused_bwd_op);
  m.impl("fused_decode", &simplicial_attn::fused_decode_op);
}
