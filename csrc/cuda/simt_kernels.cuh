// float32 kernels on the CUDA cores (IEEE fp32 products, CONTRACT bound 1e-5): one warp per output
// row, the D-vector spread over the lanes (lane holds d = lane + 32 t), every logit a warp-wide
// dot product. Plain and obviously right rather than fast: they visit the in-window (j, k) pairs
// of one row in order, with an online softmax in the forward.
//
//   fwd_simt_kernel     warp per query row (b, h, i):  out[i], lse[i], lse_lo[i]
//   dq_simt_kernel      warp per query row (b, h, i):  dq[i]
//   dkv_simt_kernel     warp per key row (b, g, j) of key 1 or key 2 (`second`): dk, dv of that
//                       key, summed over the query heads of kv head g
//
// Every kernel forms a logit with the same operations (Logit below, with the keys in their own
// roles), so the backward recomputes exactly the forward's logits. Determinant logits (CONTRACT
// §8) read the keys at the permuted channels of their chunks (s(d), s(s(d))) straight from global
// memory, so every product stays within a lane. Packed sequences: a warp finds its row's sequence
// in cu_seqlens (seq_of_row) and clips the windows to it.
//
// A warp's lanes all hold the same logit (the xor butterfly of warp_sum gives every lane the same
// bits), so the branches below are warp-uniform. There is no shared memory and no barrier.
#pragma once

#include "addressing.cuh"
#include "cross.cuh"
#include "mask.cuh"
#include "numerics.cuh"
#include "seqlen.cuh"

namespace simplicial_attn::cuda {

template <int DP>
struct SimtConfig {
  static constexpr int kPerLane = DP / 32;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
};

struct SimtParams {
  TensorRef q, k1, k2, v1, v2, dout;
  MutTensorRef out, dq, dk, dv;  // fwd: out;  dq kernel: dq;  dkv kernel: dk, dv (of key 1 or 2)
  float* lse;                    // fwd writes it; the backward reads it ([B, Hq, N], natural log)
  float* lse_lo;                 // likewise
  const float* delta;            // [B, Hq, N]
  int B, N, Hq, Hkv, group, D;
  ProblemDesc prob;
  bool second;  // dkv kernel: the rows are key 2's (k2, v2), not key 1's
};

// One D-vector of a warp from a row of T: lane holds elements d = lane + 32 t, t < K (zero for
// d >= D), in fp32; with `perm` (1: s(d), 2: s(s(d))) the element at the permuted channel of d's
// chunk.
template <class T, int K>
SA_DEV void load_vec(float (&v)[K], const T* row, int D, int perm = 0) {
#pragma unroll
  for (int t = 0; t < K; ++t) {
    const int d = lane_id() + 32 * t;
    const int src = perm == 0 ? d : (perm == 1 ? chunk_next(d) : chunk_prev(d));
    v[t] = d < D ? Elem<T>::to_float(gload(row + src)) : 0.f;
  }
}

template <int K>
SA_DEV void store_vec(float* row, const float (&v)[K], float scale, int D) {
#pragma unroll
  for (int t = 0; t < K; ++t) {
    const int d = lane_id() + 32 * t;
    if (d < D) gstore(row + d, v[t] * scale);
  }
}

// A key row as the logits read it: trilinear, its values (v); determinant, its values at s(d)
// and s(s(d)) (s, ss).
template <int K>
struct KeyRow {
  float v[K], s[K], ss[K];
  template <class T>
  SA_DEV void load(const T* row, int D, bool det) {
    if (det) {
      load_vec(s, row, D, 1);
      load_vec(ss, row, D, 2);
    } else {
      load_vec(v, row, D);
    }
  }
};

// The logit of (q_i, k1_j, k2_k) before the scale, in two steps every kernel takes alike:
//   trilinear    a = q ⊙ k1;                    logit = sum a ⊙ k2
//   determinant  a = q ⊙ k1_s, b = q ⊙ k1_ss;   logit = sum a ⊙ k2_ss - b ⊙ k2_s
template <int K>
struct Logit {
  float a[K], b[K];
  bool det;
  SA_DEV Logit(const float (&q)[K], const KeyRow<K>& k1, bool determinant) : det(determinant) {
#pragma unroll
    for (int t = 0; t < K; ++t) {
      a[t] = q[t] * (det ? k1.s[t] : k1.v[t]);
      b[t] = det ? q[t] * k1.ss[t] : 0.f;
    }
  }
  SA_DEV float with(const KeyRow<K>& k2 SA_SITE_ARG) const {
    float sum = 0.f;
#pragma unroll
    for (int t = 0; t < K; ++t) sum += det ? a[t] * k2.ss[t] - b[t] * k2.s[t] : a[t] * k2.v[t];
    return warp_sum(sum SA_SITE_NEXT);
  }
};

// (x × y)[d] per lane from the permuted values of two rows: x_s y_ss - x_ss y_s; or the
// trilinear x ⊙ y.
template <int K>
SA_DEV float logit_grad(const KeyRow<K>& x, const KeyRow<K>& y, int t, bool det) {
  return det ? x.s[t] * y.ss[t] - x.ss[t] * y.s[t] : x.v[t] * y.v[t];
}

// The warp's output row: (b, h, i) of a [B, H, N] index space, or (b, g, j) of [B, Hkv, N].
struct WarpRow {
  int b, h, i;
  bool ok;
};

template <int kWarps>
SA_DEV WarpRow warp_row(int H, int N, int B) {
  const int64_t row = static_cast<int64_t>(block_x()) * kWarps + warp_id();
  WarpRow r;
  r.ok = row < static_cast<int64_t>(B) * H * N;
  SA_PATH(!r.ok, "tail: warps past the last row");
  r.i = static_cast<int>(row % N);
  r.h = static_cast<int>((row / N) % H);
  r.b = static_cast<int>(row / (static_cast<int64_t>(N) * H));
  return r;
}

// The query row of a fwd / dq warp: query head h (of kv head g) at position i of sequence seq,
// and its windows J (k1/v1) and Kw (k2/v2). ok == false: a warp past the last row, which returns
// at once (no barrier or collective follows for it).
struct QueryRow {
  SeqSpan seq;
  int h, i, g;
  Span J, Kw;
  bool ok;
};

template <class Cfg>
SA_DEV QueryRow query_row(const SimtParams& p) {
  const WarpRow wr = warp_row<Cfg::kWarps>(p.Hq, p.N, p.B);
  QueryRow r{};
  r.ok = wr.ok;
  if (!wr.ok) return r;
  SA_PATH(p.group > 1, "tile: GQA group > 1");
  SA_PATH(p.D < 32 * Cfg::kPerLane, "lanes past D");
  SA_PATH(p.prob.determinant, "logits: determinant");
  r.seq = seq_of_row(p.prob, p.N, wr.b, wr.i);
  r.h = wr.h;
  r.i = wr.i - r.seq.row0;
  r.g = r.h / p.group;
  r.J = band_span(p.prob.band1, r.i, r.seq.len);
  r.Kw = band_span(p.prob.band2, r.i, r.seq.len);
  return r;
}

// The forward of one query row q (a warp's D-vector) over k1/v1 positions j in J and k2/v2
// positions k in Kw (keys1 / keys2: where those rows are, addressing.cuh): an online softmax of
// the logits in visiting order, so acc = sum_jk exp(z_jk - m) v1_j ⊙ v2_k and l = sum_jk
// exp(z_jk - m) with m the running max (m = -inf, l = 0 and acc = 0 when no pair is visited).
// Shared by fwd_simt_kernel and the decode kernel (decode_kernel.cuh).
template <class T, int K, class Keys1, class Keys2>
SA_DEV void attend_row(float (&acc)[K], float& m, float& l, const float (&q)[K], Span J, Span Kw, const Keys1& keys1,
                       const Keys2& keys2, int D, bool det, float scale SA_SITE_ARG) {
  float v1[K], v2[K];
  KeyRow<K> k1, k2;
  for (int t = 0; t < K; ++t) acc[t] = 0.f;
  m = -__builtin_huge_valf();
  l = 0.f;
  for (int j = J.lo; j <= J.hi; ++j) {
    k1.load(keys1.key(j), D, det);
    load_vec(v1, keys1.value(j), D);
    const Logit<K> qk1(q, k1, det);
    for (int k = Kw.lo; k <= Kw.hi; ++k) {
      k2.load(keys2.key(k), D, det);
      const float s = logit(qk1.with(k2 SA_SITE_NEXT), scale);
      SA_PATH(s > m && l > 0.f, "softmax: new running max");
      if (s > m) {  // new running max: rescale what was summed so far
        const float alpha = exp_shifted(m, s);
        l *= alpha;
        for (int t = 0; t < K; ++t) acc[t] *= alpha;
        m = s;
      }
      const float w = exp_shifted(s, m);
      l += w;
      load_vec(v2, keys2.value(k), D);
      for (int t = 0; t < K; ++t) acc[t] += w * v1[t] * v2[t];
    }
  }
}

template <class Cfg>
SA_GLOBAL(Cfg::kThreads)
fwd_simt_kernel(const SimtParams p) {
  constexpr int K = Cfg::kPerLane;
  const QueryRow r = query_row<Cfg>(p);
  if (!r.ok) return;  // whole warp: no barrier or collective follows for it
  float q[K], acc[K], m, l;
  load_vec(q, row_ptr<float>(p.q, r.seq, r.i, r.h), p.D);
  attend_row<float>(acc, m, l, q, r.J, r.Kw, SeqKeys<float>{p.k1, p.v1, r.seq, r.g},
                    SeqKeys<float>{p.k2, p.v2, r.seq, r.g}, p.D, p.prob.determinant, p.prob.scale);
  store_vec(row_ptr<float>(p.out, r.seq, r.i, r.h), acc, 1.f / l, p.D);
  if (lane_id() == 0) {
    const RowLse rl = row_lse(m, l);
    const int64_t stat = stat_index(r.seq, p.Hq, p.N, r.h, r.i);
    gstore(p.lse + stat, rl.lse);
    gstore(p.lse_lo + stat, rl.lo);
  }
}

template <class Cfg>
SA_GLOBAL(Cfg::kThreads)
dq_simt_kernel(const SimtParams p) {
  constexpr int K = Cfg::kPerLane;
  const QueryRow r = query_row<Cfg>(p);
  if (!r.ok) return;
  const bool det = p.prob.determinant;
  const int h = r.h, i = r.i, g = r.g, D = p.D;
  const SeqSpan seq = r.seq;
  const Span J = r.J, Kw = r.Kw;
  const int64_t stat = stat_index(seq, p.Hq, p.N, h, i);
  const float lse = gload(p.lse + stat), lse_lo = gload(p.lse_lo + stat), delta = gload(p.delta + stat);

  float q[K], dout[K], v1[K], v2[K], e[K], dq[K];
  KeyRow<K> k1, k2;
  load_vec(q, row_ptr<float>(p.q, seq, i, h), D);
  load_vec(dout, row_ptr<float>(p.dout, seq, i, h), D);
  for (int t = 0; t < K; ++t) dq[t] = 0.f;
  for (int j = J.lo; j <= J.hi; ++j) {
    k1.load(row_ptr<float>(p.k1, seq, j, g), D, det);
    load_vec(v1, row_ptr<float>(p.v1, seq, j, g), D);
    const Logit<K> qk1(q, k1, det);
    for (int t = 0; t < K; ++t) e[t] = dout[t] * v1[t];
    for (int k = Kw.lo; k <= Kw.hi; ++k) {
      k2.load(row_ptr<float>(p.k2, seq, k, g), D, det);
      load_vec(v2, row_ptr<float>(p.v2, seq, k, g), D);
      const float prob = prob_from_lse(logit(qk1.with(k2), p.prob.scale), lse, lse_lo);
      float dp = 0.f;
      for (int t = 0; t < K; ++t) dp += e[t] * v2[t];
      const float ds = prob * (warp_sum(dp) - delta);
      for (int t = 0; t < K; ++t) dq[t] += ds * logit_grad(k1, k2, t, det);  // k1 ⊙ k2 or k1 × k2
    }
  }
  store_vec(row_ptr<float>(p.dq, seq, i, h), dq, p.prob.scale, D);
}

// dk, dv of key 1 (rows j: dk1 += ds (k2 × q) or ds (q ⊙ k2), dv1 += P dout ⊙ v2) or of key 2
// (rows k: dk2 += ds (q × k1) or ds (q ⊙ k1), dv2 += P dout ⊙ v1), summed over the query heads of
// kv head g and the queries whose windows hold the row.
template <class Cfg>
SA_GLOBAL(Cfg::kThreads)
dkv_simt_kernel(const SimtParams p) {
  constexpr int K = Cfg::kPerLane;
  const WarpRow wr = warp_row<Cfg::kWarps>(p.Hkv, p.N, p.B);
  if (!wr.ok) return;
  const SeqSpan seq = seq_of_row(p.prob, p.N, wr.b, wr.i);
  const bool det = p.prob.determinant, second = p.second;
  SA_PATH(det, "logits: determinant");
  SA_PATH(p.D < 32 * K, "lanes past D");
  const int g = wr.h, r = wr.i - seq.row0, D = p.D;
  const Band own = second ? p.prob.band2 : p.prob.band1, other = second ? p.prob.band1 : p.prob.band2;
  // Queries whose window (of this key) holds r: i - left <= r <= i + right.
  const Span I = band_span(band_reverse(own), r, seq.len);

  const TensorRef k_own = second ? p.k2 : p.k1, v_own_t = second ? p.v2 : p.v1;
  const TensorRef k_other = second ? p.k1 : p.k2, v_other_t = second ? p.v1 : p.v2;
  float q_plain[K], dout[K], v_own[K], v_other[K], dk[K], dv[K];
  KeyRow<K> key, key_other, qrow;
  key.load(row_ptr<float>(k_own, seq, r, g), D, det);
  load_vec(v_own, row_ptr<float>(v_own_t, seq, r, g), D);
  for (int t = 0; t < K; ++t) dk[t] = dv[t] = 0.f;
  for (int hh = 0; hh < p.group; ++hh) {
    const int h = g * p.group + hh;
    SA_PATH(hh > 0, "loop: next query head");
    for (int i = I.lo; i <= I.hi; ++i) {
      const int64_t stat = stat_index(seq, p.Hq, p.N, h, i);
      const float lse = gload(p.lse + stat), lse_lo = gload(p.lse_lo + stat), delta = gload(p.delta + stat);
      load_vec(q_plain, row_ptr<float>(p.q, seq, i, h), D);
      qrow.load(row_ptr<float>(p.q, seq, i, h), D, det);
      load_vec(dout, row_ptr<float>(p.dout, seq, i, h), D);
      const Span Kw = band_span(other, i, seq.len);
      for (int k = Kw.lo; k <= Kw.hi; ++k) {
        key_other.load(row_ptr<float>(k_other, seq, k, g), D, det);
        load_vec(v_other, row_ptr<float>(v_other_t, seq, k, g), D);
        // The forward's operations, the keys in their own roles (k1 first).
        const float raw =
            second ? Logit<K>(q_plain, key_other, det).with(key) : Logit<K>(q_plain, key, det).with(key_other);
        const float prob = prob_from_lse(logit(raw, p.prob.scale), lse, lse_lo);
        float dp = 0.f;
#pragma unroll
        for (int t = 0; t < K; ++t) dp += dout[t] * v_own[t] * v_other[t];
        const float ds = prob * (warp_sum(dp) - delta);
#pragma unroll
        for (int t = 0; t < K; ++t) {
          // dk1: k2 × q;  dk2: q × k1 (trilinear: the other key ⊙ q either way)
          dk[t] += ds * (second ? logit_grad(qrow, key_other, t, det) : logit_grad(key_other, qrow, t, det));
          dv[t] += prob * dout[t] * v_other[t];
        }
      }
    }
  }
  store_vec(row_ptr<float>(p.dk, seq, r, g), dk, p.prob.scale, D);
  store_vec(row_ptr<float>(p.dv, seq, r, g), dv, 1.f, D);
}

}  // namespace simplicial_attn::cuda
