// CUDA entry points of the unfused path: simplicial_attn::scores_fwd / scores_bwd and
// softmax_fwd / softmax_bwd. Argument checks, dtype dispatch and launches; the kernels and what
// they do are in scores_softmax_kernels.cuh. float32 / float16 / bfloat16.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "checks.h"
#include "problem.h"
#include "scores_common.h"
#include "scores_softmax_kernels.cuh"

namespace simplicial_attn {
namespace cuda_scores {
namespace {

template <typename T, int ITEMS, int ROW_THREADS, int BLOCK>
struct FwdLaunch {
  static void run(int64_t rows, const T* x, T* y, int64_t m) {
    softmax_fwd_kernel<T, ITEMS, ROW_THREADS, BLOCK>
        <<<row_blocks<ROW_THREADS, BLOCK>(rows), BLOCK, 0, c10::cuda::getCurrentCUDAStream()>>>(x, y, rows, m);
  }
};

template <typename T, int ITEMS, int ROW_THREADS, int BLOCK>
struct BwdLaunch {
  static void run(int64_t rows, const T* dp, const T* p, T* ds, int64_t m) {
    softmax_bwd_kernel<T, ITEMS, ROW_THREADS, BLOCK>
        <<<row_blocks<ROW_THREADS, BLOCK>(rows), BLOCK, 0, c10::cuda::getCurrentCUDAStream()>>>(dp, p, ds, rows, m);
  }
};

// float32, float16, bfloat16: the dtypes of the GPU backends (CONTRACT §4).
#define SA_DISPATCH_GPU_FLOATS(dtype, name, ...)                                                        \
  AT_DISPATCH_SWITCH(dtype, name,                                                                       \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

at::Tensor softmax_fwd(const at::Tensor& scores) {
  check_softmax_input(scores, "scores");
  const c10::cuda::CUDAGuard guard(scores.device());
  const auto x = scores.contiguous();
  auto y = at::empty_like(x);
  const int64_t m = x.size(-1) * x.size(-2);
  if (x.numel() == 0) return y;
  const int64_t rows = x.numel() / m;
  TORCH_CHECK(rows < (int64_t{1} << 31), "softmax_fwd: too many windows (", rows, ") for one launch");
  SA_DISPATCH_GPU_FLOATS(x.scalar_type(), "softmax_fwd_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (!launch_resident<scalar_t, FwdLaunch>(rows, m, xp, yp, m)) {
      softmax_fwd_looped_kernel<scalar_t>
          <<<static_cast<unsigned int>(rows), kLoopThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(xp, yp, m);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor softmax_bwd(const at::Tensor& dprobs, const at::Tensor& probs) {
  check_softmax_input(probs, "probs");
  SA_CHECK_DEVICE(dprobs, probs.device());
  TORCH_CHECK(dprobs.sizes() == probs.sizes(), "dprobs must have probs' shape ", probs.sizes(), ", got ",
              dprobs.sizes());
  const c10::cuda::CUDAGuard guard(probs.device());
  const auto p = probs.contiguous();
  const auto dp = dprobs.to(p.scalar_type()).contiguous();
  auto ds = at::empty_like(p);
  const int64_t m = p.size(-1) * p.size(-2);
  if (p.numel() == 0) return ds;
  const int64_t rows = p.numel() / m;
  TORCH_CHECK(rows < (int64_t{1} << 31), "softmax_bwd: too many windows (", rows, ") for one launch");
  SA_DISPATCH_GPU_FLOATS(p.scalar_type(), "softmax_bwd_cuda", [&] {
    const scalar_t* dpp = dp.const_data_ptr<scalar_t>();
    const scalar_t* pp = p.const_data_ptr<scalar_t>();
    scalar_t* dsp = ds.mutable_data_ptr<scalar_t>();
    if (!launch_resident<scalar_t, BwdLaunch>(rows, m, dpp, pp, dsp, m)) {
      softmax_bwd_looped_kernel<scalar_t>
          <<<static_cast<unsigned int>(rows), kLoopThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(dpp, pp, dsp, m);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return ds;
}

at::Tensor scores_fwd(const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, std::optional<int64_t> w1,
                      std::optional<int64_t> w2, bool causal, double scale, c10::string_view logits) {
  const bool det = parse_logits(logits, q.size(-1)) == Logits::kDeterminant;
  const Dims d = check_scores_inputs(q, k1, k2, w1, w2);
  const WindowAxis ax1 = window_axis(w1, d.N, causal), ax2 = window_axis(w2, d.N, causal);
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({d.B, d.Hq, d.N, ax1.size, ax2.size}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  const auto qc = q.contiguous(), k1c = k1.contiguous(), k2c = k2.contiguous();
  const int64_t n_atiles = (ax1.size + kTile - 1) / kTile;
  TORCH_CHECK(d.N * n_atiles < (int64_t{1} << 31) && d.B * d.Hq < 65536, "scores_fwd: shape too large for one launch");
  const dim3 grid(static_cast<unsigned int>(d.N * n_atiles), static_cast<unsigned int>(d.B * d.Hq));
  SA_DISPATCH_GPU_FLOATS(q.scalar_type(), "scores_fwd_cuda", [&] {
    const ScoresArgs<scalar_t> s{qc.const_data_ptr<scalar_t>(),
                                 k1c.const_data_ptr<scalar_t>(),
                                 k2c.const_data_ptr<scalar_t>(),
                                 ScoreSizes{d.B, d.N, d.Hq, d.Hkv, d.D},
                                 ax1,
                                 ax2,
                                 static_cast<float>(scale),
                                 det};
    scores_fwd_kernel<scalar_t>
        <<<grid, kScoreThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(s, out.mutable_data_ptr<float>(), n_atiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scores_bwd(const at::Tensor& dscores, const at::Tensor& q,
                                                          const at::Tensor& k1, const at::Tensor& k2,
                                                          std::optional<int64_t> w1, std::optional<int64_t> w2,
                                                          bool causal, double scale, c10::string_view logits) {
  const bool det = parse_logits(logits, q.size(-1)) == Logits::kDeterminant;
  const Dims d = check_scores_inputs(q, k1, k2, w1, w2);
  const WindowAxis ax1 = window_axis(w1, d.N, causal), ax2 = window_axis(w2, d.N, causal);
  check_dscores(dscores, q, d, ax1, ax2);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto qc = q.contiguous(), k1c = k1.contiguous(), k2c = k2.contiguous();
  auto dq = at::empty_like(qc), dk1 = at::empty_like(k1c), dk2 = at::empty_like(k2c);
  if (d.B * d.N == 0) return {dq, dk1, dk2};
  TORCH_CHECK(d.B * d.Hq * d.N < (int64_t{1} << 31), "scores_bwd: shape too large for one launch");
  const auto ds = dscores.to(at::kFloat).contiguous();
  const unsigned int threads = threads_for(d.D);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SA_DISPATCH_GPU_FLOATS(q.scalar_type(), "scores_bwd_cuda", [&] {
    const ScoresArgs<scalar_t> s{qc.const_data_ptr<scalar_t>(),
                                 k1c.const_data_ptr<scalar_t>(),
                                 k2c.const_data_ptr<scalar_t>(),
                                 ScoreSizes{d.B, d.N, d.Hq, d.Hkv, d.D},
                                 ax1,
                                 ax2,
                                 static_cast<float>(scale),
                                 det};
    const float* dsp = ds.const_data_ptr<float>();
    scores_dq_kernel<scalar_t>
        <<<static_cast<unsigned int>(d.B * d.Hq * d.N), threads, 0, stream>>>(s, dsp, dq.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto kv_blocks = static_cast<unsigned int>(d.B * d.Hkv * d.N);
    scores_dk_kernel<scalar_t, false><<<kv_blocks, threads, 0, stream>>>(s, dsp, dk1.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    scores_dk_kernel<scalar_t, true><<<kv_blocks, threads, 0, stream>>>(s, dsp, dk2.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dq, dk1, dk2};
}

}  // namespace
}  // namespace cuda_scores
}  // namespace simplicial_attn

TORCH_LIBRARY_IMPL(simplicial_attn, CUDA, m) {
  m.impl("scores_fwd", &simplicial_attn::cuda_scores::scores_fwd);
  m.impl("scores_bwd", &simplicial_attn::cuda_scores::scores_bwd);
  m.impl("softmax_fwd", &simplicial_attn::cuda_scores::softmax_fwd);
  m.impl("softmax_bwd", &simplicial_attn::cuda_scores::softmax_bwd);
}
