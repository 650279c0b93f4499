// Plain-C++ interface between the torch glue (attention.cpp, layout.h) and the per-ISA kernel
// objects (kernel_base.cpp, kernel_avx2.cpp, kernel_avx512.cpp).
//
// No torch and no standard-library templates here on purpose: the ISA files are compiled with
// `#pragma GCC target("avx512f")` and friends, and an inline function they share with the rest
// of the extension could be emitted with AVX-512 instructions and then picked by the linker for
// a caller on a CPU without them. Only structs, function-pointer types and the inline window
// helpers (defined here, before any target region, so they keep the baseline instruction set)
// cross.
//
// Memory: the kernels read the user's [B, N, H, D] tensors in place where they can (compute
// dtype, unit stride in D, D already a whole number of vectors) and otherwise gather the rows
// a work item needs into per-thread scratch (Input::gather), so a call allocates nothing
// proportional to the inputs beyond its outputs, the backward's key/value accumulators and the
// halo rows that neighbouring work items share (BwdArgs).
#pragma once

#include <cstdint>

namespace simplicial_attn {
namespace cpu {

// Positions [lo, hi).
struct Range {
  int64_t lo, hi;
  int64_t size() const { return hi - lo; }
};

// The band of a window around query i: positions i - L .. i + R, the kernels' copy of the
// problem's Band (csrc/include/problem.h, which this torch-free header cannot include).
struct Band {
  int64_t L, R;
  int64_t width() const { return L + R + 1; }
};

// The positions of queries [i0, i1) and their band, clipped to the sequence `seq`. Both ends of
// a query's window grow with i, so a single query is window(i, i + 1, ...).
inline Range window(int64_t i0, int64_t i1, Band b, Range seq) {
  const int64_t lo = i0 - b.L, hi = i1 + b.R;
  return {lo < seq.lo ? seq.lo : lo, hi > seq.hi ? seq.hi : hi};
}

// Sizes and windows of one call (windows already clipped to the longest sequence by the glue).
struct Geometry {
  int64_t B, N, Hq, Hkv, D;
  int64_t DP;       // padded head dim: rows the kernels read hold DP values, zero past D
  int64_t longest;  // the longest sequence (N for a batched call; bounds the per-item scratch)
  Band b1, b2;      // bands of the k1/v1 (j) and k2/v2 (k) windows
  int64_t KT, JT;   // tile of the k window and of the j window (JT a multiple of the vector width)
  bool det;         // determinant logits (CONTRACT §8; D % 3 == 0) instead of trilinear ones
};

// The sequences of a call and their work items. Sequence s is rows seq[s] of batch batch[s]
// (a batched call: one per batch, rows [0, N)). Its items are (kv head, block of BQ rows),
// block-minor, numbered first_item[s] .. first_item[s + 1] - 1; a sequence of one block has no
// halo (halo_first[s] = -1), the items of a longer one own halo slots halo_first[s] + (item -
// first_item[s]).
struct Schedule {
  int64_t nseq;
  const int64_t* batch;
  const Range* seq;
  const int64_t* first_item;  // [nseq + 1]
  const int64_t* halo_first;  // [nseq]
  int64_t BQ;
  int64_t items() const { return first_item[nseq]; }
};

// One [B, N, H, D] input as the kernels read it: row (b, n, h) at direct + b*sb + n*sn + h*sh
// when `direct` is set, otherwise converted by `gather` from the user's tensor (`user`, element
// strides usb, usn, ush, usd, its own dtype) into DP values per row, zero past D.
template <typename T>
struct Input {
  const T* direct;
  int64_t sb, sn, sh;
  const void* user;
  int64_t usb, usn, ush, usd;
  // Rows [n0, n1) of (b, h) into dst, row r at dst + (r - n0) * DP.
  void (*gather)(const Input& in, int64_t D, int64_t DP, int64_t b, int64_t h, int64_t n0, int64_t n1, T* dst);
};

// One [B, N, H, D] output written row by row: in place through `direct` (like Input), otherwise
// from DP-value rows by `scatter` (converting to the user's dtype).
template <typename T>
struct Output {
  T* direct;
  int64_t sb, sn, sh;
  void* user;
  int64_t usb, usn, ush, usd;
  void (*scatter)(const Output& out, int64_t D, int64_t DP, int64_t b, int64_t h, int64_t n0, int64_t n1, const T* src);
};

// A [B, N, H, DP] compute-type accumulator (the backward's key/value gradients before the halo
// sum): row (b, n, h) at p + b*sb + n*sn + h*sh.
template <typename T>
struct Accum {
  T* p;
  int64_t sb, sn, sh;
};

template <typename T>
struct FwdArgs {
  Geometry g;
  Schedule sched;
  T scale;
  Input<T> q, k1, k2, v1, v2;
  Output<T> out;
  T *lse, *lse_lo;  // [B, Hq, N]: the natural log-sum-exp as lse + lse_lo (kernel_impl.h: fwd_query)
};

// The backward's work item (sequence, kv head g, block [i0, i1)) covers every query head of the
// group, so it owns its dq rows. Its contributions to the key/value gradients of the rows its
// windows reach, J = window(i0, i1, b1, seq) and K likewise, are summed in per-thread scratch;
// the rows of its own block then go to the accumulators (no other item writes them) and the
// rest, its halo, to its halo slot of L + R rows (the band b1 for k1/v1, b2 for k2/v2): row
// r < i0 at slot row r - (i0 - L), row r >= i1 at slot row L + (r - i1). The glue then adds the
// halos to the accumulators in block order (deterministic, whatever the thread count).
template <typename T>
struct BwdArgs {
  Geometry g;
  Schedule sched;
  T scale;
  Input<T> q, k1, k2, v1, v2, dout, out;
  const T *lse, *lse_lo;  // [B, Hq, N], the forward's
  Output<T> dq;
  Accum<T> dk1, dv1, dk2, dv2;
  T *halo_k1, *halo_v1;  // [slots, b1.L + b1.R, DP]
  T *halo_k2, *halo_v2;  // [slots, b2.L + b2.R, DP]
};

// One decoding call (CONTRACT §7): query t of sequence b sits at position P = cache_seqlens[b] +
// t, its causal windows are J(P) = [P - w1 + 1, P] and K(P) likewise with w2, clipped at 0, and
// position p of the k1/v1 cache lives in slot p % C1 (k2/v2: p % C2). A work item is (b, kv
// head, block of TB query rows, part c of the block's j range U = the union of its rows' J),
// with every query head of the group inside: the j range is cut into `splits` parts so that a
// few query rows still give every thread work (flash-decoding). Each item leaves, per query row
// and head, the softmax state of its part, (m, l, sum of P v1 v2 unnormalised): rows
// [B, Hq, Nq, splits] of part_ml (2 values) and part_acc (DP values), combined by the glue.
template <typename T>
struct DecodeArgs {
  Geometry g;  // N = Nq query rows per sequence; causal bands
  T scale;
  int64_t Nq, C1, C2, TB, splits;
  const int32_t* cache_seqlens;  // [B]
  Input<T> q;                    // [B, Nq, Hq, D]
  Input<T> k1, v1;               // [B, C1, Hkv, D]: row n of Input is slot n
  Input<T> k2, v2;               // [B, C2, Hkv, D]
  T *part_ml, *part_acc;
  int64_t items() const { return g.B * g.Hkv * ((Nq + TB - 1) / TB) * splits; }
};

// One instruction-set flavour of the kernels: its vector width (the padding unit) and the
// work-item loops. Each processes items [begin, end) and allocates its own scratch.
template <typename T>
struct KernelSet {
  const char* isa;
  int64_t vector_width;
  void (*fwd)(const FwdArgs<T>& a, int64_t begin, int64_t end);
  void (*bwd)(const BwdArgs<T>& a, int64_t begin, int64_t end);
  void (*decode)(const DecodeArgs<T>& a, int64_t begin, int64_t end);
};

// Null when the flavour was not compiled in (non-x86 targets, compilers without target pragmas).
const KernelSet<float>* kernels_avx512_f32();
const KernelSet<float>* kernels_avx2_f32();
const KernelSet<float>* kernels_base_f32();
const KernelSet<double>* kernels_base_f64();

}  // namespace cpu
}  // namespace simplicial_attn
