// The dispatcher schemas of the fused kernels. Python (simplicial_attn/_ops.py) wraps these
// in the public autograd op; each device registers its kernels in its own folder:
//   csrc/cpu/   TORCH_LIBRARY_IMPL(simplicial_attn, CPU, m)
//   csrc/cuda/  TORCH_LIBRARY_IMPL(simplicial_attn, CUDA, m)
//
// Window arguments are already normalised by Python: w1, w2 >= 1 and at most N (causal) or
// 2N - 1 (non-causal), so "unbounded" is just a window that covers the sequence.
#include <torch/library.h>

TORCH_LIBRARY(simplicial_attn, m) {
  // Returns (out [B, N, Hq, D] in q's dtype, lse [B, Hq, N] natural log, float32; float64
  // for float64 inputs).
  m.def(
      "fused_fwd(Tensor q, Tensor k1, Tensor k2, Tensor v1, Tensor v2, int w1, int w2, "
      "bool causal, float scale) -> (Tensor, Tensor)");
  // Returns (dq, dk1, dk2, dv1, dv2), each shaped and typed like its input.
  m.def(
      "fused_bwd(Tensor dout, Tensor q, Tensor k1, Tensor k2, Tensor v1, Tensor v2, "
      "Tensor out, Tensor lse, int w1, int w2, bool causal, float scale) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
