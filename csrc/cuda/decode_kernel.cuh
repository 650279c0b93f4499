// Decoding against ring caches (CONTRACT §7, issue 16): a few query rows with w1 * w2 pairs each.
// Flash-decoding: the j window of every row is split over warps of different CTAs, so one token of
// one sequence still spreads over the GPU, and a second kernel combines the partial softmaxes.
//
//   decode_split_kernel    one warp per (query row, split): positions j of its split of
//                          [P - w1 + 1, P] (those >= 0) with every k of [P - w2 + 1, P]: an online
//                          softmax in fp32 (numerics.cuh) to a partial (m, l, acc[D]) in the workspace
//   decode_combine_kernel  one warp per query row: M = max m_s, L = sum l_s e^(m_s - M),
//                          out = sum acc_s e^(m_s - M) / L, lse = M + ln L
//
// Query row (b, t, h) sits at position P = cache_seqlens[b] + t; position j lives in slot j % C1 of
// the k1 / v1 caches, k in slot k % C2 of k2 / v2 (RingKeys, addressing.cuh). A split runs the
// float32 forward's loop (attend_row in simt_kernels.cuh: the same logits, trilinear or
// determinant, and online softmax) over the ring, from 16-bit or fp32 inputs converted on load. No
// host synchronisation and a workspace sized from shapes alone (decode_workspace_floats), so a
// decode step can be captured in a CUDA graph.
#pragma once

#include "simt_kernels.cuh"

namespace simplicial_attn::cuda {

template <int DP>
struct DecodeConfig {
  static constexpr int kHeadDim = DP;
  static constexpr int kPerLane = DP / 32;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
};

struct DecodeParams {
  TensorRef q, k1, k2, v1, v2;  // q [B, Nq, Hq, D]; caches [B, C, Hkv, D]
  MutTensorRef out;
  float* lse;                // [B, Hq, Nq]
  const int* cache_seqlens;  // [B]
  float* partial_acc;        // [rows, splits, D]
  float* partial_ml;         // [rows, splits, 2]: m, l
  int B, Nq, Hq, group, D, C1, C2, splits;
  ProblemDesc prob;  // causal bands: j in [P - band1.left, P], k in [P - band2.left, P]
};

// The warp's query row (b, t, h), row = (b * Nq + t) * Hq + h, and its position.
struct DecodeRow {
  int b, t, h, pos;
};
template <class Params>
SA_DEV DecodeRow decode_row(const Params& p, int64_t row) {
  DecodeRow r;
  r.h = static_cast<int>(row % p.Hq);
  r.t = static_cast<int>((row / p.Hq) % p.Nq);
  r.b = static_cast<int>(row / (static_cast<int64_t>(p.Hq) * p.Nq));
  r.pos = gload(p.cache_seqlens + r.b) + r.t;
  return r;
}

template <class T, class Cfg>
SA_GLOBAL(Cfg::kThreads)
decode_split_kernel(const DecodeParams p) {
  constexpr int K = Cfg::kPerLane;
  const int64_t item = static_cast<int64_t>(block_x()) * Cfg::kWarps + warp_id();  // (row, split)
  const int64_t rows = static_cast<int64_t>(p.B) * p.Nq * p.Hq;
  SA_PATH(item >= rows * p.splits, "tail: warps past the last row");
  if (item >= rows * p.splits) return;  // whole warp: no barrier follows
  const int64_t row = item / p.splits;
  const int split = static_cast<int>(item % p.splits);
  const DecodeRow r = decode_row(p, row);
  const int g = r.h / p.group, D = p.D;
  const bool det = p.prob.determinant;
  SA_PATH(det, "logits: determinant");
  SA_PATH(p.group > 1, "tile: GQA group > 1");
  SA_PATH(p.splits > 1, "decode: several splits");
  // This split's positions j (the window [pos - left1, pos] cut into splits, those >= 0) and k.
  const int w1 = p.prob.band1.left + 1;
  const int per = (w1 + p.splits - 1) / p.splits, first = r.pos - p.prob.band1.left;
  const int j_lo = imax(0, first + split * per), j_hi = imin(r.pos, first + (split + 1) * per - 1);
  const int k_lo = imax(0, r.pos - p.prob.band2.left), k_hi = r.pos;
  SA_PATH(j_lo > j_hi, "decode: split before the sequence's start");
  SA_PATH(j_hi >= p.C1 || k_hi >= p.C2, "decode: the ring wraps");

  float q[K], acc[K], m, l;
  load_vec(q, row_ptr<T>(p.q, r.b, r.t, r.h), D);
  attend_row<T>(acc, m, l, q, Span{j_lo, j_hi}, Span{k_lo, k_hi}, RingKeys<T>{p.k1, p.v1, r.b, g, p.C1},
                RingKeys<T>{p.k2, p.v2, r.b, g, p.C2}, D, det, p.prob.scale);
  float* out_acc = p.partial_acc + item * D;
#pragma unroll
  for (int t = 0; t < K; ++t) {
    const int d = lane_id() + 32 * t;
    if (d < D) gstore(out_acc + d, acc[t]);
  }
  if (lane_id() == 0) {
    gstore(p.partial_ml + 2 * item, m);
    gstore(p.partial_ml + 2 * item + 1, l);
  }
}

template <class T, class Cfg>
SA_GLOBAL(Cfg::kThreads)
decode_combine_kernel(const DecodeParams p) {
  constexpr int K = Cfg::kPerLane;
  const int64_t row = static_cast<int64_t>(block_x()) * Cfg::kWarps + warp_id();
  const int64_t rows = static_cast<int64_t>(p.B) * p.Nq * p.Hq;
  SA_PATH(row >= rows, "tail: warps past the last row");
  if (row >= rows) return;
  const DecodeRow r = decode_row(p, row);
  const int D = p.D;
  // M over the splits that saw a position (an empty split has m = -inf, l = 0, acc = 0).
  float M = -__builtin_huge_valf();
  for (int s = 0; s < p.splits; ++s) M = fmaxf(M, gload(p.partial_ml + 2 * (row * p.splits + s)));
  const float shift = M == -__builtin_huge_valf() ? 0.f : M;
  float L = 0.f, acc[K];
  for (int t = 0; t < K; ++t) acc[t] = 0.f;
  for (int s = 0; s < p.splits; ++s) {
    const int64_t item = row * p.splits + s;
    const float w = exp_shifted(gload(p.partial_ml + 2 * item), shift);
    SA_PATH(w == 0.f, "combine: a split without weight");
    L += w * gload(p.partial_ml + 2 * item + 1);
#pragma unroll
    for (int t = 0; t < K; ++t) {
      const int d = lane_id() + 32 * t;
      if (d < D) acc[t] += w * gload(p.partial_acc + item * D + d);
    }
  }
  T* out = row_ptr<T>(p.out, r.b, r.t, r.h);
#pragma unroll
  for (int t = 0; t < K; ++t) {
    const int d = lane_id() + 32 * t;
    if (d < D) gstore(out + d, Elem<T>::from_float(acc[t] / L));
  }
  if (lane_id() == 0) gstore(p.lse + (static_cast<int64_t>(r.b) * p.Hq + r.h) * p.Nq + r.t, row_lse(M, L).lse);
}

}  // namespace simplicial_attn::cuda
