// The CPU kernels of 2-simplicial attention, written once against a small vector policy `V`
// (vec_scalar.h, vec_avx2.h, vec_avx512.h) and compiled once per instruction set by
// kernel_<isa>.cpp, each in its own namespace SA_CPU_ISA.
//
// Work per query i of head h (see CONTRACT §1), over tiles of the two windows:
//   Q2[k]   = scale * q[i] * k2[k]                        (k in a tile of K(i), the w2 window)
//   S[k, j] = sum_d Q2[k, d] k1[j, d]                     (j in a tile of J(i)) -- one small GEMM
//             against k1 stored transposed, so each j-tile is a contiguous slice of columns
//   P       = exp(S - running max), summed into the running denominator
//   T[k]   += sum_j P[k, j] v1[j]                         -- a second GEMM, K = the j tile
//   out[i] += sum_k v2[k] * T[k]
// Computing per query (not per block of queries) keeps every logit of a tile in the window:
// no masked waste, and the two GEMMs have the shapes [w2 x D] x [D x w1] and [w2 x w1] x
// [w1 x D] whatever the window mode. The backward recomputes S and dP = (dout*v2) v1^T the same
// way and forms the five gradients from four more GEMMs of the same size (14*D FLOPs counted
// per triple, 12*D executed).
#pragma once

#include <cstring>
#include <limits>

#include "kernel_args.h"
#include "kernel_macros.h"

namespace simplicial_attn {
namespace cpu {
namespace SA_CPU_ISA {

SA_INLINE int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
SA_INLINE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// GEMM on small tiles: C[M, NVEC*W] (=|+=) A[M, K] * B[K, NVEC*W].
// A is read one scalar at a time (broadcast) with strides (ars per row, acs per column), so the
// same kernel reads P as [k, j] or as its transpose. B rows are whole vectors, ldb apart.

template <class V, int MR, int NV>
void micro_tile(int64_t K, const typename V::T* SA_RESTRICT A, int64_t ars, int64_t acs,
                const typename V::T* SA_RESTRICT B, int64_t ldb, typename V::T* SA_RESTRICT C, int64_t ldc,
                bool accumulate) {
  using reg = typename V::reg;
  reg c[MR][NV];
  SA_UNROLL for (int r = 0; r < MR; ++r) { SA_UNROLL for (int v = 0; v < NV; ++v) c[r][v] = V::zero(); }
  for (int64_t p = 0; p < K; ++p) {
    const typename V::T* bp = B + p * ldb;
    const typename V::T* ap = A + p * acs;
    reg b[NV];
    SA_UNROLL for (int v = 0; v < NV; ++v) b[v] = V::load(bp + v * V::W);
    SA_UNROLL for (int r = 0; r < MR; ++r) {
      const reg a = V::set1(ap[r * ars]);
      SA_UNROLL for (int v = 0; v < NV; ++v) c[r][v] = V::fmadd(a, b[v], c[r][v]);
    }
  }
  SA_UNROLL for (int r = 0; r < MR; ++r) {
    SA_UNROLL for (int v = 0; v < NV; ++v) {
      typename V::T* cp = C + r * ldc + v * V::W;
      V::store(cp, accumulate ? V::add(V::load(cp), c[r][v]) : c[r][v]);
    }
  }
}

// Picks the instantiation for the tile's row count (R, R-1, ..., 1) ...
template <class V, int NV, int R>
SA_INLINE void tile_rows(int mr, int64_t K, const typename V::T* A, int64_t ars, int64_t acs, const typename V::T* B,
                         int64_t ldb, typename V::T* C, int64_t ldc, bool accumulate) {
  if constexpr (R == 1) {
    micro_tile<V, 1, NV>(K, A, ars, acs, B, ldb, C, ldc, accumulate);
  } else if (mr == R) {
    micro_tile<V, R, NV>(K, A, ars, acs, B, ldb, C, ldc, accumulate);
  } else {
    tile_rows<V, NV, R - 1>(mr, K, A, ars, acs, B, ldb, C, ldc, accumulate);
  }
}

// ... and for its vector count.
template <class V, int NV>
SA_INLINE void tile_cols(int nv, int mr, int64_t K, const typename V::T* A, int64_t ars, int64_t acs,
                         const typename V::T* B, int64_t ldb, typename V::T* C, int64_t ldc, bool accumulate) {
  if constexpr (NV == 1) {
    tile_rows<V, 1, V::MR>(mr, K, A, ars, acs, B, ldb, C, ldc, accumulate);
  } else if (nv == NV) {
    tile_rows<V, NV, V::MR>(mr, K, A, ars, acs, B, ldb, C, ldc, accumulate);
  } else {
    tile_cols<V, NV - 1>(nv, mr, K, A, ars, acs, B, ldb, C, ldc, accumulate);
  }
}

template <class V>
void gemm(int64_t M, int64_t nvec, int64_t K, const typename V::T* A, int64_t ars, int64_t acs, const typename V::T* B,
          int64_t ldb, typename V::T* C, int64_t ldc, bool accumulate) {
  // Column panels outer: a K x (NV*W) panel of B stays in L1 while every row block uses it.
  for (int64_t v0 = 0; v0 < nvec; v0 += V::NV) {
    const int nv = static_cast<int>(imin(V::NV, nvec - v0));
    for (int64_t r0 = 0; r0 < M; r0 += V::MR) {
      const int mr = static_cast<int>(imin(V::MR, M - r0));
      tile_cols<V, V::NV>(nv, mr, K, A + r0 * ars, ars, acs, B + v0 * V::W, ldb, C + r0 * ldc + v0 * V::W, ldc,
                          accumulate);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Row helpers over DP (a multiple of W).

template <class V>
SA_INLINE void row_mul(typename V::T* dst, const typename V::T* a, const typename V::T* b, int64_t n) {
  for (int64_t d = 0; d < n; d += V::W) V::store(dst + d, V::mul(V::load(a + d), V::load(b + d)));
}

template <class V>
SA_INLINE void row_fma(typename V::T* acc, const typename V::T* a, const typename V::T* b, int64_t n) {
  for (int64_t d = 0; d < n; d += V::W) V::store(acc + d, V::fmadd(V::load(a + d), V::load(b + d), V::load(acc + d)));
}

template <class V>
SA_INLINE void row_scale(typename V::T* dst, const typename V::T* a, typename V::T s, int64_t n) {
  const typename V::reg vs = V::set1(s);
  for (int64_t d = 0; d < n; d += V::W) V::store(dst + d, V::mul(V::load(a + d), vs));
}

template <class V>
SA_INLINE void row_zero(typename V::T* dst, int64_t n) {
  for (int64_t d = 0; d < n; d += V::W) V::store(dst + d, V::zero());
}

// Per-thread scratch of one work-item loop, carved from one allocation.
template <typename T>
struct Arena {
  T* base;
  int64_t used = 0;
  T* take(int64_t n) {
    T* p = base + used;
    used += n;
    return p;
  }
};

constexpr double kLog2e = 1.4426950408889634074;

// ---------------------------------------------------------------------------------------------
// Forward.

template <class V>
struct FwdWork {
  using T = typename V::T;
  T *qs, *q2, *s, *t, *acc;
  static int64_t elems(const Geometry& g) { return 2 * g.DP + 2 * g.KT * g.DP + g.KT * g.JT; }
  explicit FwdWork(Arena<T>& a, const Geometry& g)
      : qs(a.take(g.DP)), q2(a.take(g.KT * g.DP)), s(a.take(g.KT * g.JT)), t(a.take(g.KT * g.DP)), acc(a.take(g.DP)) {}
};

// One query row: out_row (DP values) and its lse, with an online softmax over the tiles of the
// joint (j, k) window (running max m, running sum l; earlier partial sums rescaled when m grows).
template <class V>
void fwd_query(const Geometry& g, typename V::T scale, const typename V::T* q_row, const typename V::T* k1t,
               const typename V::T* k2, const typename V::T* v1, const typename V::T* v2, int64_t i,
               typename V::T* out_row, typename V::T* lse_out, const FwdWork<V>& w) {
  using T = typename V::T;
  using reg = typename V::reg;
  constexpr int W = V::W;
  const int64_t DP = g.DP, JT = g.JT;
  const Range jr = window(i, g.w1, g.causal, g.N);
  const Range kr = window(i, g.w2, g.causal, g.N);
  const T log2e = static_cast<T>(kLog2e);
  const T neg_inf = -std::numeric_limits<T>::infinity();

  row_scale<V>(w.qs, q_row, scale, DP);
  row_zero<V>(w.acc, DP);
  T m = neg_inf;  // running max of the logits (natural units)
  T l = 0;        // running sum of exp(logit - m)
  for (int64_t k0 = kr.lo; k0 < kr.hi; k0 += g.KT) {
    const int64_t nk = imin(g.KT, kr.hi - k0);
    for (int64_t k = 0; k < nk; ++k) row_mul<V>(w.q2 + k * DP, w.qs, k2 + (k0 + k) * DP, DP);
    bool first = true;
    for (int64_t j0 = jr.lo; j0 < jr.hi; j0 += JT) {
      const int64_t nj = imin(JT, jr.hi - j0);
      const int64_t njv = ceil_div(nj, W);
      const int tail = static_cast<int>(nj - (njv - 1) * W);
      gemm<V>(nk, njv, g.D, w.q2, DP, 1, k1t + j0, g.NP, w.s, JT, false);
      reg vmax = V::set1(neg_inf);
      for (int64_t k = 0; k < nk; ++k) {
        T* row = w.s + k * JT;
        if (tail < W) V::store(row + (njv - 1) * W, V::tail(V::load(row + (njv - 1) * W), tail, neg_inf));
        for (int64_t v = 0; v < njv; ++v) vmax = V::max(vmax, V::load(row + v * W));
      }
      const T mt = V::reduce_max(vmax);
      if (mt > m) {
        const T alpha = V::exp2_scalar((m - mt) * log2e);
        l *= alpha;
        row_scale<V>(w.acc, w.acc, alpha, DP);
        if (!first) row_scale<V>(w.t, w.t, alpha, nk * DP);
        m = mt;
      }
      // p = 2^((z - m) log2 e): subtracting first is exact near the max, so the exponent carries
      // no rounding of m * log2 e (which at |z| ~ 1e9 alone exceeds 1 and overflows the sum).
      const reg vl2 = V::set1(log2e), vm = V::set1(m);
      reg vsum = V::zero();
      for (int64_t k = 0; k < nk; ++k) {
        T* row = w.s + k * JT;
        for (int64_t v = 0; v < njv; ++v) {
          const reg p = V::exp2(V::mul(V::sub(V::load(row + v * W), vm), vl2));
          V::store(row + v * W, p);
          vsum = V::add(vsum, p);
        }
      }
      l += V::reduce_add(vsum);
      // T[k] (+)= sum_j P[k, j] v1[j]: reduction over exactly the nj positions of the tile.
      gemm<V>(nk, DP / W, nj, w.s, JT, 1, v1 + j0 * DP, DP, w.t, DP, !first);
      first = false;
    }
    for (int64_t k = 0; k < nk; ++k) row_fma<V>(w.acc, v2 + (k0 + k) * DP, w.t + k * DP, DP);
  }
  row_scale<V>(out_row, w.acc, T(1) / l, DP);
  *lse_out = m + V::log_scalar(l);
}

// Work items [begin, end) of (b, h, query block).
template <class V>
void fwd_items(const FwdArgs<typename V::T>& a, int64_t begin, int64_t end) {
  using T = typename V::T;
  const Geometry& g = a.g;
  T* buffer = new T[FwdWork<V>::elems(g)];
  Arena<T> arena{buffer};
  const FwdWork<V> w(arena, g);
  const int64_t nblk = ceil_div(g.N, a.BQ);
  const int64_t group = g.Hq / g.Hkv;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t blk = item % nblk, bh = item / nblk;
    const int64_t h = bh % g.Hq, b = bh / g.Hq;
    const int64_t kvh = b * g.Hkv + h / group;
    const T* q = a.q + bh * g.N * g.DP;
    const T* k1t = a.k1t + kvh * g.D * g.NP;
    const T* k2 = a.k2 + kvh * g.N * g.DP;
    const T* v1 = a.v1 + kvh * g.N * g.DP;
    const T* v2 = a.v2 + kvh * g.N * g.DP;
    const int64_t i1 = imin(g.N, (blk + 1) * a.BQ);
    for (int64_t i = blk * a.BQ; i < i1; ++i) {
      fwd_query<V>(g, a.scale, q + i * g.DP, k1t, k2, v1, v2, i, a.out + (bh * g.N + i) * g.DP, a.lse + bh * g.N + i,
                   w);
    }
  }
  delete[] buffer;
}

// ---------------------------------------------------------------------------------------------
// Backward.

template <class V>
struct BwdWork {
  using T = typename V::T;
  T *qs, *dq, *q2, *dv2, *mk, *nk, *s, *dp;
  static int64_t elems(const Geometry& g) { return 2 * g.DP + 4 * g.KT * g.DP + 2 * g.KT * g.JT; }
  explicit BwdWork(Arena<T>& a, const Geometry& g)
      : qs(a.take(g.DP)),
        dq(a.take(g.DP)),
        q2(a.take(g.KT * g.DP)),
        dv2(a.take(g.KT * g.DP)),
        mk(a.take(g.KT * g.DP)),
        nk(a.take(g.KT * g.DP)),
        s(a.take(g.KT * g.JT)),
        dp(a.take(g.KT * g.JT)) {}
};

// Pointers of one (b, kv head) and one query head, plus the item's scratch and its first rows.
template <typename T>
struct BwdHead {
  const T *q, *k1, *k1t, *k2, *v1, *v1t, *v2, *dout, *lse, *delta;
  T* dq;
  T *dk1s, *dv1s, *dk2s, *dv2s;
  int64_t jlo, klo;
};

// One query row: recompute P from lse, then
//   dA = P (dP - Delta),  M[k] = sum_j dA[k, j] k1[j],  Nv[k] = sum_j P[k, j] v1[j]
//   dq[i]  = scale sum_k k2[k] * M[k]       dk2[k] += scale q[i] * M[k]     dv2[k] += dout[i] * Nv[k]
//   dk1[j] += sum_k dA[k, j] Q2[k]          dv1[j] += sum_k P[k, j] (dout[i] * v2[k])
template <class V>
void bwd_query(const Geometry& g, typename V::T scale, const BwdHead<typename V::T>& hd, int64_t i,
               const BwdWork<V>& w) {
  using T = typename V::T;
  using reg = typename V::reg;
  constexpr int W = V::W;
  const int64_t DP = g.DP, JT = g.JT;
  const Range jr = window(i, g.w1, g.causal, g.N);
  const Range kr = window(i, g.w2, g.causal, g.N);
  const T log2e = static_cast<T>(kLog2e);
  const T* q_row = hd.q + i * DP;
  const T* do_row = hd.dout + i * DP;
  const reg vl2 = V::set1(log2e), vlse = V::set1(hd.lse[i]), vdelta = V::set1(hd.delta[i]);

  row_scale<V>(w.qs, q_row, scale, DP);
  row_zero<V>(w.dq, DP);
  for (int64_t k0 = kr.lo; k0 < kr.hi; k0 += g.KT) {
    const int64_t nk = imin(g.KT, kr.hi - k0);
    for (int64_t k = 0; k < nk; ++k) {
      row_mul<V>(w.q2 + k * DP, w.qs, hd.k2 + (k0 + k) * DP, DP);
      row_mul<V>(w.dv2 + k * DP, do_row, hd.v2 + (k0 + k) * DP, DP);
    }
    bool first = true;
    for (int64_t j0 = jr.lo; j0 < jr.hi; j0 += JT) {
      const int64_t nj = imin(JT, jr.hi - j0);
      const int64_t njv = ceil_div(nj, W);
      gemm<V>(nk, njv, g.D, w.q2, DP, 1, hd.k1t + j0, g.NP, w.s, JT, false);    // S
      gemm<V>(nk, njv, g.D, w.dv2, DP, 1, hd.v1t + j0, g.NP, w.dp, JT, false);  // dP
      // Lanes past nj hold junk; every GEMM below reads only the first nj columns.
      for (int64_t k = 0; k < nk; ++k) {
        T* srow = w.s + k * JT;
        T* dprow = w.dp + k * JT;
        for (int64_t v = 0; v < njv; ++v) {
          // P = 2^(min(z - lse, 0) log2 e): natural units first, and clamped because a true P never
          // exceeds 1, so a recomputed z a rounding above the forward's cannot overflow (NaN kept).
          const reg t = V::min_keep_nan(V::sub(V::load(srow + v * W), vlse), V::zero());
          const reg p = V::exp2(V::mul(t, vl2));
          V::store(srow + v * W, p);
          V::store(dprow + v * W, V::mul(p, V::sub(V::load(dprow + v * W), vdelta)));
        }
      }
      gemm<V>(nk, DP / W, nj, w.dp, JT, 1, hd.k1 + j0 * DP, DP, w.mk, DP, !first);  // M  = dA k1
      gemm<V>(nk, DP / W, nj, w.s, JT, 1, hd.v1 + j0 * DP, DP, w.nk, DP, !first);   // Nv = P v1
      T* dk1 = hd.dk1s + (j0 - hd.jlo) * DP;
      T* dv1 = hd.dv1s + (j0 - hd.jlo) * DP;
      gemm<V>(nj, DP / W, nk, w.dp, 1, JT, w.q2, DP, dk1, DP, true);  // dk1 += dA^T Q2
      gemm<V>(nj, DP / W, nk, w.s, 1, JT, w.dv2, DP, dv1, DP, true);  // dv1 += P^T (dout*v2)
      first = false;
    }
    for (int64_t k = 0; k < nk; ++k) {
      const int64_t row = (k0 + k - hd.klo) * DP;
      row_fma<V>(w.dq, hd.k2 + (k0 + k) * DP, w.mk + k * DP, DP);
      row_fma<V>(hd.dk2s + row, w.qs, w.mk + k * DP, DP);
      row_fma<V>(hd.dv2s + row, do_row, w.nk + k * DP, DP);
    }
  }
  row_scale<V>(hd.dq + i * DP, w.dq, scale, DP);
}

// Work items [begin, end) of (b, kv head, query block); see BwdArgs for the ownership rules.
template <class V>
void bwd_items(const BwdArgs<typename V::T>& a, int64_t begin, int64_t end) {
  using T = typename V::T;
  const Geometry& g = a.g;
  T* buffer = new T[BwdWork<V>::elems(g)];
  Arena<T> arena{buffer};
  const BwdWork<V> w(arena, g);
  const int64_t nblk = ceil_div(g.N, a.BQ);
  const int64_t group = g.Hq / g.Hkv;
  const int64_t DP = g.DP;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t blk = item % nblk, kvh = item / nblk;
    const int64_t b = kvh / g.Hkv, gk = kvh % g.Hkv;
    const int64_t i0 = blk * a.BQ, i1 = imin(g.N, i0 + a.BQ);
    BwdHead<T> hd;
    hd.k1 = a.k1 + kvh * g.N * DP;
    hd.k1t = a.k1t + kvh * g.D * g.NP;
    hd.k2 = a.k2 + kvh * g.N * DP;
    hd.v1 = a.v1 + kvh * g.N * DP;
    hd.v1t = a.v1t + kvh * g.D * g.NP;
    hd.v2 = a.v2 + kvh * g.N * DP;
    hd.dk1s = a.dk1s + item * a.R1 * DP;
    hd.dv1s = a.dv1s + item * a.R1 * DP;
    hd.dk2s = a.dk2s + item * a.R2 * DP;
    hd.dv2s = a.dv2s + item * a.R2 * DP;
    hd.jlo = window(i0, g.w1, g.causal, g.N).lo;
    hd.klo = window(i0, g.w2, g.causal, g.N).lo;
    std::memset(hd.dk1s, 0, sizeof(T) * a.R1 * DP);
    std::memset(hd.dv1s, 0, sizeof(T) * a.R1 * DP);
    std::memset(hd.dk2s, 0, sizeof(T) * a.R2 * DP);
    std::memset(hd.dv2s, 0, sizeof(T) * a.R2 * DP);
    for (int64_t h = gk * group; h < (gk + 1) * group; ++h) {
      const int64_t bh = b * g.Hq + h;
      hd.q = a.q + bh * g.N * DP;
      hd.dout = a.dout + bh * g.N * DP;
      hd.dq = a.dq + bh * g.N * DP;
      hd.lse = a.lse + bh * g.N;
      hd.delta = a.delta + bh * g.N;
      for (int64_t i = i0; i < i1; ++i) bwd_query<V>(g, a.scale, hd, i, w);
    }
  }
  delete[] buffer;
}

}  // namespace SA_CPU_ISA
}  // namespace cpu
}  // namespace simplicial_attn
