// The dispatcher schemas of the fused kernels. Python (simplicial_attn/ops/library.py) wraps these
// in the public autograd op; each device registers its kernels in its own folder:
//   csrc/cpu/   TORCH_LIBRARY_IMPL(simplicial_attn, CPU, m)
//   csrc/cuda/  TORCH_LIBRARY_IMPL(simplicial_attn, CUDA, m)
//
// The trailing arguments describe the problem (csrc/include/problem.h turns them into one
// `Problem`): optional packed layout (cu_seqlens, max_seqlen; q is then [1, T, Hq, D]), the bands
// of the two key windows (query i sees k1/v1 positions [i - left1, i + right1] and k2/v2 positions
// [i - left2, i + right2], reaches >= 0; python/simplicial_attn/problem.py window_band turns a
// window and its mode into a band, an unbounded one into a band that covers the longest
// sequence), scale and logit form ("trilinear" or "determinant").
#include <torch/library.h>

TORCH_LIBRARY(simplicial_attn, m) {
  // Returns (out [B, N, Hq, D] in q's dtype, lse [B, Hq, N] natural log, lse_lo [B, Hq, N]: the
  // rounding residual of lse, so lse + lse_lo carries the log-sum-exp to twice the precision);
  // lse and lse_lo are float32 (float64 for float64 inputs).
  m.def(
      "fused_fwd(Tensor q, Tensor k1, Tensor k2, Tensor v1, Tensor v2, Tensor? cu_seqlens, int max_seqlen, "
      "int left1, int right1, int left2, int right2, float scale, str logits) -> (Tensor, Tensor, Tensor)");
  // Returns (dq, dk1, dk2, dv1, dv2), each shaped and typed like its input.
  m.def(
      "fused_bwd(Tensor dout, Tensor q, Tensor k1, Tensor k2, Tensor v1, Tensor v2, Tensor out, Tensor lse, "
      "Tensor lse_lo, Tensor? cu_seqlens, int max_seqlen, int left1, int right1, int left2, int right2, float scale, "
      "str logits) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Decoding against ring caches (CONTRACT §7; the caches already hold the new tokens): q
  // [B, Nq, Hq, D], k1/v1 caches [B, C1, Hkv, D], k2/v2 caches [B, C2, Hkv, D], cache_seqlens
  // int32 [B]; causal bands (right1 = right2 = 0). Returns (out [B, Nq, Hq, D], lse [B, Hq, Nq]).
  m.def(
      "fused_decode(Tensor q, Tensor k1_cache, Tensor k2_cache, Tensor v1_cache, Tensor v2_cache, "
      "Tensor cache_seqlens, int left1, int right1, int left2, int right2, float scale, str logits) "
      "-> (Tensor, Tensor)");
}
