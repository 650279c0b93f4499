// Plain-C++ interface between the torch glue (attention.cpp) and the per-ISA kernel objects
// (kernel_base.cpp, kernel_avx2.cpp, kernel_avx512.cpp).
//
// No torch and no standard-library templates here on purpose: the ISA files are compiled with
// `#pragma GCC target("avx512f")` and friends, and an inline function they share with the rest
// of the extension could be emitted with AVX-512 instructions and then picked by the linker for
// a caller on a CPU without them. Only structs, function-pointer types and `window` (defined
// here, before any target region, so it always keeps the baseline instruction set) cross.
//
// Packed layouts the glue builds (compute type T: float, or double for float64 inputs):
//   rows  [B, H, N, DP]  one head's positions contiguous, D zero-padded to DP (a multiple of
//                         the vector width), so every row is whole vectors
//   cols  [B, H, D, NP]  the same data transposed (positions along the fast axis), NP >= N +
//                         vector width, zero-padded, so a vector load at any j < N stays inside
#pragma once

#include <cstdint>

namespace simplicial_attn {
namespace cpu {

// The window [lo, hi) of query i, clipped to the sequence [0, N):
//   causal  i - w + 1 .. i          centred  i - w/2 .. i - w/2 + w - 1
// Both ends grow with i, so a block of queries [i0, i1) touches [window(i0).lo, window(i1-1).hi).
struct Range {
  int64_t lo, hi;
};
inline Range window(int64_t i, int64_t w, bool causal, int64_t N) {
  const int64_t start = causal ? i - w + 1 : i - w / 2;
  return {start < 0 ? 0 : start, start + w > N ? N : start + w};
}

// Sizes and window of one call (windows already clipped to the sequence by the glue).
struct Geometry {
  int64_t B, N, Hq, Hkv, D;
  int64_t DP;  // padded head dim (rows layout)
  int64_t NP;  // padded sequence length (cols layout)
  int64_t w1, w2;
  bool causal;
  int64_t KT, JT;  // tile of the k window and of the j window (JT a multiple of the vector width)
};

template <typename T>
struct FwdArgs {
  Geometry g;
  T scale;
  int64_t BQ;    // queries per work item; items are (b, h, query block) in that order
  const T* q;    // rows [B, Hq, N, DP]
  const T* k1t;  // cols [B, Hkv, D, NP]
  const T* k2;   // rows [B, Hkv, N, DP]
  const T* v1;   // rows
  const T* v2;   // rows
  T* out;        // rows [B, Hq, N, DP]
  T* lse;        // [B, Hq, N], natural log
};

template <typename T>
struct BwdArgs {
  Geometry g;
  T scale;
  // Work items are (b, kv head g, query block of BQ) in that order; an item covers every query
  // head of its group, so it owns its dq rows and writes key/value gradients only into its own
  // scratch slots, which the glue sums afterwards in block order (deterministic).
  int64_t BQ;
  int64_t R1, R2;  // scratch rows per item for k1/v1 (BQ + w1 - 1, clipped) and k2/v2
  const T* q;      // rows [B, Hq, N, DP]
  const T* k1;     // rows [B, Hkv, N, DP]
  const T* k1t;    // cols [B, Hkv, D, NP]
  const T* k2;     // rows
  const T* v1;     // rows
  const T* v1t;    // cols
  const T* v2;     // rows
  const T* dout;   // rows [B, Hq, N, DP]
  const T* lse;    // [B, Hq, N], natural log
  const T* delta;  // [B, Hq, N], rowsum(dout * out)
  T* dq;           // rows [B, Hq, N, DP]
  T* dk1s;         // scratch [items, R1, DP]; row r of item (b, g, blk) is position jlo(blk) + r
  T* dv1s;         // scratch [items, R1, DP]
  T* dk2s;         // scratch [items, R2, DP]; row r is position klo(blk) + r
  T* dv2s;         // scratch [items, R2, DP]
};

// One instruction-set flavour of the kernels: its vector width (the padding unit) and the two
// work-item loops. Each processes items [begin, end) and allocates its own small workspace.
template <typename T>
struct KernelSet {
  const char* isa;
  int64_t vector_width;
  void (*fwd)(const FwdArgs<T>& a, int64_t begin, int64_t end);
  void (*bwd)(const BwdArgs<T>& a, int64_t begin, int64_t end);
};

// Null when the flavour was not compiled in (non-x86 targets, compilers without target pragmas).
const KernelSet<float>* kernels_avx512_f32();
const KernelSet<float>* kernels_avx2_f32();
const KernelSet<float>* kernels_base_f32();
const KernelSet<double>* kernels_base_f64();

}  // namespace cpu
}  // namespace simplicial_attn
