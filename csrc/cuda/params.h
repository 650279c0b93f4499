// Plain structs that pass a call from the host (api.cpp, or the emulator's driver.cc) to the
// launchers (launch*.cuh) and on to the kernels. No torch, no CUDA types: both sides include it.
#pragma once

#include <cstdint>

namespace simplicial_attn::cuda {

enum class DType { kHalf, kBFloat16, kFloat };

// A [B, N, H, D] tensor: data pointer and element strides of the first three dims; D has unit
// stride (api.cpp makes a tensor contiguous when it does not).
struct TensorRef {
  const void* ptr;
  int64_t sb, sn, sh;
};
struct MutTensorRef {
  void* ptr;
  int64_t sb, sn, sh;
};

// The window of query position i as a band [i - left, i + right] (clipped to the row's sequence
// by the kernels): the kernels' 32-bit copy of the problem's Band (csrc/include/problem.h), its
// reaches clipped below the sequence length by api.cpp.
struct Band {
  int left, right;
};

struct Dims {
  int B, N, Hq, Hkv, D;  // packed layout: B = 1, N = T (all tokens)
};

// The problem description of a call (the kernels' view of csrc/include/problem.h): window bands,
// scale, logit form and sequence layout. One object, so a feature adds a field, not a
// parameter to every kernel.
//   batched   cu_seqlens == nullptr: sequence s is batch element s, positions [0, N)
//   packed    cu_seqlens [num_seqs + 1] (device, int32): sequence s is rows [cu[s], cu[s+1]) of
//             batch element 0; max_seqlen bounds every length (it sizes the grids)
//   decoding  causal bands (right == 0); cu_seqlens == nullptr, num_seqs = B, max_seqlen = Nq
struct ProblemDesc {
  Band band1, band2;  // windows of j (k1/v1) and k (k2/v2)
  float scale;
  bool determinant;       // CONTRACT §8: chunkwise det(q, k1, k2) instead of sum q k1 k2
  const int* cu_seqlens;  // packed layout, else nullptr
  int num_seqs;           // packed: S; batched: B
  int max_seqlen;         // packed: >= every length; batched: N
};

// The same problem with the roles of (k1, v1, w1) and (k2, v2, w2) exchanged: the trilinear form
// is symmetric in them; the determinant changes sign, which a negated scale undoes.
inline ProblemDesc with_keys_swapped(ProblemDesc p) {
  const Band b = p.band1;
  p.band1 = p.band2;
  p.band2 = b;
  if (p.determinant) p.scale = -p.scale;
  return p;
}

// The kernels' parameters: the fields every tensor-core kernel starts with (its inputs, with the
// keys already exchanged when the second window is the wider: launch.cuh), then what the query
// tiles (fwd, dq) and the backward kernels add. Each kernel's parameter struct derives from these.
struct TileParams {
  TensorRef q, k1, k2, v1, v2;
  int N, Hq, group, D;
  ProblemDesc prob;
  int pos_tiles;  // tiles along a sequence: ceil(max length / positions per tile)
  bool vec;       // 16-byte cp.async loads allowed (D % 8 == 0, aligned rows)
};

// Tiles of (position, query head) rows (fwd, dq; query_tile.cuh).
struct QueryTileParams : TileParams {
  int log2_heads;   // a tile holds 1 << log2_heads query heads (1: sequence tiling)
  int head_blocks;  // tiles along the heads of one group: ceil(group / heads)
};

// What the backward kernels read besides the inputs.
struct GradInputs {
  TensorRef dout;
  const float* lse;     // [B, Hq, N], natural log
  const float* lse_lo;  // [B, Hq, N]
  const float* delta;   // [B, Hq, N]
};

// fwd(q, k1, k2, v1, v2) -> out (q's dtype), lse and lse_lo (float32 [B, Hq, N]): lse the natural
// log-sum-exp, lse_lo its rounding residual (numerics.cuh).
struct FwdArgs {
  DType dtype;
  Dims dims;
  ProblemDesc prob;
  TensorRef q, k1, k2, v1, v2;
  MutTensorRef out;
  float* lse;     // contiguous [B, Hq, N]
  float* lse_lo;  // contiguous [B, Hq, N]
};

// bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo) -> dq, dk1, dk2, dv1, dv2 (each like its input).
struct BwdArgs {
  DType dtype;
  Dims dims;
  ProblemDesc prob;
  TensorRef dout, q, k1, k2, v1, v2, out;
  const float* lse;     // contiguous [B, Hq, N], natural log
  const float* lse_lo;  // contiguous [B, Hq, N]
  MutTensorRef dq, dk1, dk2, dv1, dv2;
  float* delta;    // workspace, contiguous [B, Hq, N]
  float* scratch;  // workspace of bwd_scratch_floats(args) float32 elements, zeroed (nullptr if 0)
};

// Decoding splits the j window of each query row into chunks of kDecodeSplitPositions positions (at
// most kDecodeMaxSplits of them; decode_kernel.cuh): enough warps for one token to fill a GPU, and
// little for the combine kernel to read. The workspace holds each split's partial softmax.
constexpr int kDecodeSplitPositions = 16, kDecodeMaxSplits = 64;
inline int decode_splits(const Band& band1) {
  const int64_t w1 = static_cast<int64_t>(band1.left) + 1;
  const int64_t s = (w1 + kDecodeSplitPositions - 1) / kDecodeSplitPositions;
  return static_cast<int>(s < 1 ? 1 : (s > kDecodeMaxSplits ? kDecodeMaxSplits : s));
}
inline int64_t decode_workspace_floats(int64_t rows, int splits, int64_t D) { return rows * splits * (D + 2); }

// decode(q, caches) -> out [B, Nq, Hq, D] (q's dtype), lse [B, Hq, Nq] float32 (CONTRACT §7):
// query t of sequence b sits at position P = cache_seqlens[b] + t, attends to the causal windows
// j in [P - left1, P], k in [P - left2, P] (positions >= 0; prob's causal bands), position j in
// cache slot j % C1 (k1/v1) and k % C2 (k2/v2).
struct DecodeArgs {
  DType dtype;
  int B, Nq, Hq, Hkv, D, C1, C2;
  ProblemDesc prob;
  const int* cache_seqlens;  // [B], device
  TensorRef q, k1, k2, v1, v2;
  MutTensorRef out;
  float* lse;        // contiguous [B, Hq, Nq]
  float* workspace;  // decode_workspace_floats(B * Nq * Hq, decode_splits(prob.band1), D) floats
};

}  // namespace simplicial_attn::cuda
