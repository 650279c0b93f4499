// float32 kernels on the CUDA cores (IEEE fp32 products, CONTRACT bound 1e-5): one warp per output
// row, the D-vector spread over the lanes (lane holds d = lane + 32 t), every logit a warp-wide
// dot product. Plain and obviously right rather than fast: they visit the in-window (j, k) pairs
// of one row in order, with an online softmax in the forward.
//
//   fwd_simt_kernel     warp per query row (b, h, i):  out[i], lse[i]
//   dq_simt_kernel      warp per query row (b, h, i):  dq[i]
//   dkv_simt_kernel     warp per key row (b, g, j):    dk1[j], dv1[j], summed over the query heads
//                       of kv head g. The math is symmetric in (k1, v1, w1) <-> (k2, v2, w2), so
//                       the host calls it a second time with the roles swapped for dk2, dv2.
//
// A warp's lanes all hold the same logit (the xor butterfly of warp_sum gives every lane the same
// bits), so the branches below are warp-uniform. There is no shared memory and no barrier.
#pragma once

#include "numerics.cuh"
#include "tile.cuh"

namespace simplicial_attn::cuda {

template <int DP>
struct SimtConfig {
  static constexpr int kPerLane = DP / 32;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
};

struct SimtParams {
  TensorRef q, k1, k2, v1, v2, dout;
  MutTensorRef out, dq, dk, dv;  // fwd: out;  dq kernel: dq;  dkv kernel: dk, dv (of key 1)
  float* lse;                    // fwd writes it; the backward reads it ([B, Hq, N], natural log)
  const float* delta;            // [B, Hq, N]
  int B, N, Hq, Hkv, group, D;
  Band band1, band2;
  float scale;
};

// One D-vector of a warp: lane holds elements d = lane + 32 t, t < K (zero for d >= D).
template <int K>
SA_DEV void load_vec(float (&v)[K], const float* row, int D) {
#pragma unroll
  for (int t = 0; t < K; ++t) {
    const int d = lane_id() + 32 * t;
    SA_PATH(d >= D, "lanes past D");
    v[t] = d < D ? gload(row + d) : 0.f;
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

// sum_d x[d] * y[d] over the warp.
template <int K>
SA_DEV float warp_dot(const float (&x)[K], const float (&y)[K] SA_SITE_ARG) {
  float s = 0.f;
#pragma unroll
  for (int t = 0; t < K; ++t) s += x[t] * y[t];
  return warp_sum(s SA_SITE_NEXT);
}

template <int K>
SA_DEV void mul_vec(float (&out)[K], const float (&x)[K], const float (&y)[K]) {
#pragma unroll
  for (int t = 0; t < K; ++t) out[t] = x[t] * y[t];
}

// The warp's output row: (b, h, i) of a [B, Hq, N] index space, or (b, g, j) of [B, Hkv, N].
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

template <class Cfg>
SA_GLOBAL(Cfg::kThreads)
fwd_simt_kernel(const SimtParams p) {
  constexpr int K = Cfg::kPerLane;
  const WarpRow wr = warp_row<Cfg::kWarps>(p.Hq, p.N, p.B);
  if (!wr.ok) return;  // whole warp: no barrier or collective follows for it
  SA_PATH(p.group > 1, "tile: GQA group > 1");
  const int b = wr.b, h = wr.h, i = wr.i, g = h / p.group, N = p.N, D = p.D;
  const int jlo = imax(0, i - p.band1.left), jhi = imin(N - 1, i + p.band1.right);
  const int klo = imax(0, i - p.band2.left), khi = imin(N - 1, i + p.band2.right);

  float q[K], k1[K], v1[K], k2[K], v2[K], a[K], acc[K];
  load_vec(q, row_ptr<float>(p.q, b, i, h), D);
  for (int t = 0; t < K; ++t) acc[t] = 0.f;
  float m = -__builtin_huge_valf(), l = 0.f;
  for (int j = jlo; j <= jhi; ++j) {
    load_vec(k1, row_ptr<float>(p.k1, b, j, g), D);
    load_vec(v1, row_ptr<float>(p.v1, b, j, g), D);
    mul_vec(a, q, k1);
    for (int k = klo; k <= khi; ++k) {
      load_vec(k2, row_ptr<float>(p.k2, b, k, g), D);
      const float s = logit(warp_dot(a, k2), p.scale);
      SA_PATH(s > m && l > 0.f, "softmax: new running max");
      if (s > m) {  // new running max: rescale what was summed so far
        const float alpha = exp_shifted(m, s);
        l *= alpha;
        for (int t = 0; t < K; ++t) acc[t] *= alpha;
        m = s;
      }
      const float w = exp_shifted(s, m);
      l += w;
      load_vec(v2, row_ptr<float>(p.v2, b, k, g), D);
      for (int t = 0; t < K; ++t) acc[t] += w * v1[t] * v2[t];
    }
  }
  store_vec(row_ptr<float>(p.out, b, i, h), acc, 1.f / l, D);
  if (lane_id() == 0) gstore(p.lse + (static_cast<int64_t>(b) * p.Hq + h) * N + i, row_lse(m, l));
}

template <class Cfg>
SA_GLOBAL(Cfg::kThreads)
dq_simt_kernel(const SimtParams p) {
  constexpr int K = Cfg::kPerLane;
  const WarpRow wr = warp_row<Cfg::kWarps>(p.Hq, p.N, p.B);
  if (!wr.ok) return;
  SA_PATH(p.group > 1, "tile: GQA group > 1");
  const int b = wr.b, h = wr.h, i = wr.i, g = h / p.group, N = p.N, D = p.D;
  const int jlo = imax(0, i - p.band1.left), jhi = imin(N - 1, i + p.band1.right);
  const int klo = imax(0, i - p.band2.left), khi = imin(N - 1, i + p.band2.right);
  const int64_t stat = (static_cast<int64_t>(b) * p.Hq + h) * N + i;
  const float lse = gload(p.lse + stat), delta = gload(p.delta + stat);

  float q[K], dout[K], k1[K], v1[K], k2[K], v2[K], a[K], e[K], dq[K];
  load_vec(q, row_ptr<float>(p.q, b, i, h), D);
  load_vec(dout, row_ptr<float>(p.dout, b, i, h), D);
  for (int t = 0; t < K; ++t) dq[t] = 0.f;
  for (int j = jlo; j <= jhi; ++j) {
    load_vec(k1, row_ptr<float>(p.k1, b, j, g), D);
    load_vec(v1, row_ptr<float>(p.v1, b, j, g), D);
    mul_vec(a, q, k1);
    mul_vec(e, dout, v1);
    for (int k = klo; k <= khi; ++k) {
      load_vec(k2, row_ptr<float>(p.k2, b, k, g), D);
      load_vec(v2, row_ptr<float>(p.v2, b, k, g), D);
      const float prob = prob_from_lse(logit(warp_dot(a, k2), p.scale), lse);
      const float ds = prob * (warp_dot(e, v2) - delta);
      for (int t = 0; t < K; ++t) dq[t] += ds * k1[t] * k2[t];
    }
  }
  store_vec(row_ptr<float>(p.dq, b, i, h), dq, p.scale, D);
}

template <class Cfg>
SA_GLOBAL(Cfg::kThreads)
dkv_simt_kernel(const SimtParams p) {
  constexpr int K = Cfg::kPerLane;
  const WarpRow wr = warp_row<Cfg::kWarps>(p.Hkv, p.N, p.B);
  if (!wr.ok) return;
  const int b = wr.b, g = wr.h, j = wr.i, N = p.N, D = p.D;
  // Queries whose k1 window holds j: i - left1 <= j <= i + right1.
  const int ilo = imax(0, j - p.band1.right), ihi = imin(N - 1, j + p.band1.left);

  float k1[K], v1[K], q[K], dout[K], k2[K], v2[K], a[K], e[K], dk[K], dv[K];
  load_vec(k1, row_ptr<float>(p.k1, b, j, g), D);
  load_vec(v1, row_ptr<float>(p.v1, b, j, g), D);
  for (int t = 0; t < K; ++t) dk[t] = dv[t] = 0.f;
  for (int hh = 0; hh < p.group; ++hh) {
    const int h = g * p.group + hh;
    SA_PATH(hh > 0, "loop: next query head");
    for (int i = ilo; i <= ihi; ++i) {
      const int64_t stat = (static_cast<int64_t>(b) * p.Hq + h) * N + i;
      const float lse = gload(p.lse + stat), delta = gload(p.delta + stat);
      load_vec(q, row_ptr<float>(p.q, b, i, h), D);
      load_vec(dout, row_ptr<float>(p.dout, b, i, h), D);
      mul_vec(a, q, k1);
      mul_vec(e, dout, v1);
      const int klo = imax(0, i - p.band2.left), khi = imin(N - 1, i + p.band2.right);
      for (int k = klo; k <= khi; ++k) {
        load_vec(k2, row_ptr<float>(p.k2, b, k, g), D);
        load_vec(v2, row_ptr<float>(p.v2, b, k, g), D);
        const float prob = prob_from_lse(logit(warp_dot(a, k2), p.scale), lse);
        const float ds = prob * (warp_dot(e, v2) - delta);
        for (int t = 0; t < K; ++t) {
          dk[t] += ds * q[t] * k2[t];
          dv[t] += prob * dout[t] * v2[t];
        }
      }
    }
  }
  store_vec(row_ptr<float>(p.dk, b, j, g), dk, p.scale, D);
  store_vec(row_ptr<float>(p.dv, b, j, g), dv, 1.f, D);
}

}  // namespace simplicial_attn::cuda
