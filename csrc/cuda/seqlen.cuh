// Sequence spans: where a kernel's sequence lies in the tensors (ProblemDesc in params.h: batched
// or packed). Kernels index positions 0 .. len - 1 within a sequence; its rows in the tensors are
// row0 + position of batch element `batch`.
#pragma once

#include "common.cuh"
#include "params.h"

namespace simplicial_attn::cuda {

struct SeqSpan {
  int batch, row0, len;
};

// Sequence s: batched, batch element s with all N rows; packed, rows [cu[s], cu[s+1]) of batch
// element 0, clamped to [0, N) so that not even a bad cu_seqlens sends a kernel outside its
// tensors (the public functions reject one before any launch).
SA_DEV SeqSpan seq_span(const ProblemDesc& prob, int N, int s) {
  if (prob.cu_seqlens == nullptr) return SeqSpan{s, 0, N};
  SA_PATH(true, "varlen: packed layout");
  const int lo = imin(imax(gload(prob.cu_seqlens + s), 0), N);
  const int hi = imin(imax(gload(prob.cu_seqlens + s + 1), lo), N);
  SA_PATH(hi == lo, "varlen: empty sequence");
  return SeqSpan{0, lo, hi - lo};
}

// The sequence holding row n of batch element b (kernels with one warp per row). Packed: the s
// with cu[s] <= n < cu[s+1], by bisection over cu (it never stops at an empty sequence).
SA_DEV SeqSpan seq_of_row(const ProblemDesc& prob, int N, int b, int n) {
  if (prob.cu_seqlens == nullptr) return SeqSpan{b, 0, N};
  int lo = 0, hi = prob.num_seqs;  // cu[lo] <= n < cu[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (gload(prob.cu_seqlens + mid) <= n)
      lo = mid;
    else
      hi = mid;
  }
  return seq_span(prob, N, lo);
}

// Index of (sequence position pos, head h) in a contiguous [B, H, N] statistics tensor (lse, ...).
SA_DEV int64_t stat_index(const SeqSpan& s, int H, int N, int h, int pos) {
  return (static_cast<int64_t>(s.batch) * H + h) * N + s.row0 + pos;
}

}  // namespace simplicial_attn::cuda
