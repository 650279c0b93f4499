// Dispatcher schemas of the unfused path: the trilinear scores and the windowed softmax, each
// with its backward. Python (simplicial_attn/analysis/scores.py) wraps them in autograd ops; kernels
// register per device in csrc/cpu/scores_softmax.cpp and csrc/cuda/scores_softmax.cu.
// The layout of the scores and the window geometry: csrc/include/scores_window.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(simplicial_attn, m) {
  // scores [B, Hq, N, W1, W2]: float32 logits (float64 for float64 inputs), -inf where a slot's
  // position lies outside [0, N). w = None: an unbounded window (W = N). logits: "trilinear" or
  // "determinant" (csrc/include/problem.h).
  m.def("scores_fwd(Tensor q, Tensor k1, Tensor k2, int? w1, int? w2, bool causal, float scale, str logits) -> Tensor");
  // (dq, dk1, dk2), each shaped and typed like its input; masked slots of dscores are ignored.
  m.def(
      "scores_bwd(Tensor dscores, Tensor q, Tensor k1, Tensor k2, int? w1, int? w2, bool causal, float scale, "
      "str logits) -> (Tensor, Tensor, Tensor)");
  // Softmax over the last two dims jointly: -inf -> 0, an all -inf window -> zeros. Same dtype.
  m.def("softmax_fwd(Tensor scores) -> Tensor");
  // dscores = probs * (dprobs - sum(probs * dprobs)) over each window.
  m.def("softmax_bwd(Tensor dprobs, Tensor probs) -> Tensor");
}
