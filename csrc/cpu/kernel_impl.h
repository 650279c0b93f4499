// The CPU kernels of 2-simplicial attention, written once against a small vector policy `V`
// (vec_scalar.h, vec_portable.h, vec_avx2.h, vec_avx512.h) and compiled once per instruction
// set by kernel_<isa>.cpp, each in its own namespace SA_CPU_ISA.
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
//
// Work items are (sequence, kv head, block of BQ queries) with every query head of the group
// inside (kernel_args.h): the item reads the key/value rows its windows reach once, transposes
// k1 (and v1) into per-thread tiles, and serves the whole group from them.
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
  for (int64_t v0 = 0; v0 < nvec;) {
    int nv = static_cast<int>(imin(V::NV, nvec - v0));
    // A last panel of one vector would have MR accumulator chains only, too few to hide the FMA
    // latency (AVX2: 16 = 5 x 3 + 1 vectors of a 128-wide tile): the last NV + 1 split in two.
    if (V::NV > 2 && nvec - v0 == V::NV + 1) nv = (V::NV + 1) / 2;
    for (int64_t r0 = 0; r0 < M; r0 += V::MR) {
      const int mr = static_cast<int>(imin(V::MR, M - r0));
      tile_cols<V, V::NV>(nv, mr, K, A + r0 * ars, ars, acs, B + v0 * V::W, ldb, C + r0 * ldc + v0 * V::W, ldc,
                          accumulate);
    }
    v0 += nv;
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

template <class V>
SA_INLINE typename V::T row_dot(const typename V::T* a, const typename V::T* b, int64_t n) {
  typename V::reg acc = V::zero();
  for (int64_t d = 0; d < n; d += V::W) acc = V::fmadd(V::load(a + d), V::load(b + d), acc);
  return V::reduce_add(acc);
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

// Rows [lo, ...) of one (batch, head) of an input or a scratch copy: row n at p + (n - lo) * ld.
template <typename T>
struct RowView {
  const T* p;
  int64_t ld, lo;
  const T* at(int64_t n) const { return p + (n - lo) * ld; }
};

// Rows r of (b, h) in place when the input allows it, else gathered into `scratch` (DP per row).
template <typename T>
RowView<T> input_rows(const Input<T>& in, const Geometry& g, int64_t b, int64_t h, Range r, T* scratch) {
  if (in.direct != nullptr) return {in.direct + b * in.sb + r.lo * in.sn + h * in.sh, in.sn, r.lo};
  in.gather(in, g.D, g.DP, b, h, r.lo, r.hi, scratch);
  return {scratch, g.DP, r.lo};
}

// Rows r of (b, h) copied into `scratch` (DP per row) even when the input could be read in place:
// for the operands a GEMM streams through (B = v1 or k1 rows), since rows a whole [N, H, D] row
// apart (1 KiB at H = 4, D = 64) fall into a quarter of the L1 sets and evict each other.
template <typename T>
RowView<T> copied_rows(const Input<T>& in, const Geometry& g, int64_t b, int64_t h, Range r, T* scratch) {
  if (in.direct == nullptr) return input_rows(in, g, b, h, r, scratch);
  for (int64_t n = r.lo; n < r.hi; ++n) {
    std::memcpy(scratch + (n - r.lo) * g.DP, in.direct + b * in.sb + n * in.sn + h * in.sh, sizeof(T) * g.DP);
  }
  return {scratch, g.DP, r.lo};
}

// The same rows transposed into a column tile: position n of channel d at cols + d * ld + (n - lo),
// ld >= rows + vector width with the columns past the rows zeroed, so a vector load that starts
// at any of the rows stays inside and reads finite values.
template <typename T>
struct ColTile {
  T* p;
  int64_t ld, lo;
  const T* at(int64_t n) const { return p + (n - lo); }
};

template <typename T>
void transpose_rows(const RowView<T>& rows, Range r, int64_t D, ColTile<T> cols) {
  for (int64_t n = r.lo; n < r.hi; ++n) {
    const T* src = rows.at(n);
    T* dst = cols.p + (n - r.lo);
    for (int64_t d = 0; d < D; ++d) dst[d * cols.ld] = src[d];
  }
  for (int64_t d = 0; d < D; ++d) {
    for (int64_t c = r.size(); c < cols.ld; ++c) cols.p[d * cols.ld + c] = T(0);
  }
}

// The item's sequence, kv head and query block.
struct Item {
  int64_t s, b, kvh, blk;
  Range seq, rows;  // the sequence and the block's queries
};

inline Item decode_item(const Schedule& sc, int64_t Hkv, int64_t item) {
  int64_t lo = 0, hi = sc.nseq;  // the last sequence whose first item is <= item
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (sc.first_item[mid] <= item) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  Item it;
  it.s = lo;
  it.b = sc.batch[lo];
  it.seq = sc.seq[lo];
  const int64_t nblk = (sc.first_item[lo + 1] - sc.first_item[lo]) / Hkv;
  const int64_t local = item - sc.first_item[lo];
  it.kvh = local / nblk;
  it.blk = local % nblk;
  const int64_t i0 = it.seq.lo + it.blk * sc.BQ;
  it.rows = {i0, imin(it.seq.hi, i0 + sc.BQ)};
  return it;
}

// ---------------------------------------------------------------------------------------------
// Determinant logits (CONTRACT §8): per 3-channel chunk det(q, k1, k2) = k1 . (k2 x q), so the
// trilinear products run unchanged with the elementwise Q2 = q * k2[k] replaced by the chunkwise
// cross product Q2 = k2[k] x q, whose channel d is k2[s(d)] q[s(s(d))] - k2[s(s(d))] q[s(d)] with
// s(d) = 3 (d / 3) + (d + 1) % 3. Rows are kept with their channels permuted by s and by s(s(.))
// so every cross product is two vector products.

inline int64_t chunk_next(int64_t d, int64_t k) { return 3 * (d / 3) + (d + k) % 3; }

// dst_s[d] = src[s(d)], dst_ss[d] = src[s(s(d))] for d < D; zero past D.
template <typename T>
void permute_row(const T* src, int64_t D, int64_t DP, T* dst_s, T* dst_ss) {
  for (int64_t d = 0; d < D; ++d) {
    dst_s[d] = src[chunk_next(d, 1)];
    dst_ss[d] = src[chunk_next(d, 2)];
  }
  for (int64_t d = D; d < DP; ++d) dst_s[d] = dst_ss[d] = T(0);
}

// dst[d] = a[s(d)] - b[s(s(d))]: undoes the permutations of the gradients accumulated in the
// permuted bases (see bwd_query); zero past D.
template <typename T>
void unpermute_difference(const T* a, const T* b, int64_t D, int64_t DP, T* dst) {
  for (int64_t d = 0; d < D; ++d) dst[d] = a[chunk_next(d, 1)] - b[chunk_next(d, 2)];
  for (int64_t d = D; d < DP; ++d) dst[d] = T(0);
}

// ---------------------------------------------------------------------------------------------
// Forward.

// The key-side rows a query reads, from its work item's tiles. Determinant logits also read k2
// with permuted channels (k2s, k2ss; see permute_row).
template <typename T>
struct KeyTiles {
  ColTile<T> k1t;
  RowView<T> v1, k2, v2, k2s, k2ss;
};

template <class V>
struct FwdWork {
  using T = typename V::T;
  T *qs, *qs_s, *qs_ss, *q2, *s, *t, *acc;
  static int64_t elems(const Geometry& g) { return 4 * g.DP + 2 * g.KT * g.DP + g.KT * g.JT; }
  explicit FwdWork(Arena<T>& a, const Geometry& g)
      : qs(a.take(g.DP)),
        qs_s(a.take(g.DP)),
        qs_ss(a.take(g.DP)),
        q2(a.take(g.KT * g.DP)),
        s(a.take(g.KT * g.JT)),
        t(a.take(g.KT * g.DP)),
        acc(a.take(g.DP)) {}
};

// qs = scale * q (and its permutations for determinant logits), the query side of every logit.
template <class V>
void scale_query(const Geometry& g, typename V::T scale, const typename V::T* q_row, typename V::T* qs,
                 typename V::T* qs_s, typename V::T* qs_ss) {
  row_scale<V>(qs, q_row, scale, g.DP);
  if (g.det) permute_row(qs, g.D, g.DP, qs_s, qs_ss);
}

// The logit factors of k rows k0 .. k0 + nk - 1: Q2[k] = qs * k2[k] (trilinear) or k2[k] x qs
// (determinant), so that the logit of (j, k) is Q2[k] . k1[j].
template <class V>
void logit_factors(const Geometry& g, const typename V::T* qs, const typename V::T* qs_s, const typename V::T* qs_ss,
                   const KeyTiles<typename V::T>& t, int64_t k0, int64_t nk, typename V::T* q2) {
  const int64_t DP = g.DP;
  for (int64_t k = 0; k < nk; ++k) {
    typename V::T* dst = q2 + k * DP;
    if (!g.det) {
      row_mul<V>(dst, qs, t.k2.at(k0 + k), DP);
      continue;
    }
    const typename V::T *a = t.k2s.at(k0 + k), *b = t.k2ss.at(k0 + k);
    for (int64_t d = 0; d < DP; d += V::W) {
      V::store(dst + d, V::sub(V::mul(V::load(a + d), V::load(qs_ss + d)), V::mul(V::load(b + d), V::load(qs_s + d))));
    }
  }
}

// The online softmax of one query row over the pairs jr x kr (running max m and sum l, earlier
// partial sums rescaled when m grows): leaves sum P (v1 * v2) unnormalised in w.acc (DP values)
// and returns (m, l). The query side (w.qs and its permutations) is set by the caller.
template <typename T>
struct SoftmaxState {
  T m, l;
};

template <class V>
SoftmaxState<typename V::T> softmax_rows(const Geometry& g, const KeyTiles<typename V::T>& t, Range jr, Range kr,
                                         const FwdWork<V>& w) {
  using T = typename V::T;
  using reg = typename V::reg;
  constexpr int W = V::W;
  const int64_t DP = g.DP, JT = g.JT;
  const T log2e = static_cast<T>(kLog2e);
  const T neg_inf = -std::numeric_limits<T>::infinity();

  row_zero<V>(w.acc, DP);
  T m = neg_inf;  // running max of the logits (natural units)
  T l = 0;        // running sum of exp(logit - m)
  for (int64_t k0 = kr.lo; k0 < kr.hi; k0 += g.KT) {
    const int64_t nk = imin(g.KT, kr.hi - k0);
    logit_factors<V>(g, w.qs, w.qs_s, w.qs_ss, t, k0, nk, w.q2);
    bool first = true;
    for (int64_t j0 = jr.lo; j0 < jr.hi; j0 += JT) {
      const int64_t nj = imin(JT, jr.hi - j0);
      const int64_t njv = ceil_div(nj, W);
      const int tail = static_cast<int>(nj - (njv - 1) * W);
      gemm<V>(nk, njv, g.D, w.q2, DP, 1, t.k1t.at(j0), t.k1t.ld, w.s, JT, false);
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
      gemm<V>(nk, DP / W, nj, w.s, JT, 1, t.v1.at(j0), t.v1.ld, w.t, DP, !first);
      first = false;
    }
    for (int64_t k = 0; k < nk; ++k) row_fma<V>(w.acc, t.v2.at(k0 + k), w.t + k * DP, DP);
  }
  return {m, l};
}

// One query row: out_row (DP values) = acc / l, and the row's log-sum-exp as two numbers,
// lse = fl(m + ln l) and lse_lo = fl((m - lse) + ln l) (m - lse is exact), so that lse + lse_lo
// carries m + ln l to about twice the precision of T for the backward. lse_lo = 0 where lse is
// not finite (lse alone carries the inf or NaN).
template <class V>
void fwd_query(const Geometry& g, typename V::T scale, const typename V::T* q_row, const KeyTiles<typename V::T>& t,
               Range jr, Range kr, typename V::T* out_row, typename V::T* lse, typename V::T* lse_lo,
               const FwdWork<V>& w) {
  using T = typename V::T;
  scale_query<V>(g, scale, q_row, w.qs, w.qs_s, w.qs_ss);
  const SoftmaxState<T> st = softmax_rows<V>(g, t, jr, kr, w);
  row_scale<V>(out_row, w.acc, T(1) / st.l, g.DP);
  const T ln_l = V::log_scalar(st.l);
  const T hi = st.m + ln_l;
  *lse = hi;
  *lse_lo = hi - hi == T(0) ? (st.m - hi) + ln_l : T(0);
}

// The key-side tiles of a work item whose windows reach rows J (k1, v1) and K (k2, v2), from
// their rows: k1 transposed into k1t_buf, and for determinant logits k2 permuted into perm_buf
// (2 K.size() rows).
template <typename T>
KeyTiles<T> key_tiles(const Geometry& g, const RowView<T>& k1, const RowView<T>& v1, const RowView<T>& k2,
                      const RowView<T>& v2, Range J, Range K, int64_t NPJ, T* k1t_buf, T* perm_buf) {
  KeyTiles<T> t;
  t.k1t = {k1t_buf, NPJ, J.lo};
  transpose_rows(k1, J, g.D, t.k1t);
  t.v1 = v1;
  t.k2 = k2;
  t.v2 = v2;
  if (g.det) {
    T* ss = perm_buf + K.size() * g.DP;
    for (int64_t n = K.lo; n < K.hi; ++n) {
      permute_row(k2.at(n), g.D, g.DP, perm_buf + (n - K.lo) * g.DP, ss + (n - K.lo) * g.DP);
    }
    t.k2s = {perm_buf, g.DP, K.lo};
    t.k2ss = {ss, g.DP, K.lo};
  }
  return t;
}

// Work items [begin, end) of the schedule.
template <class V>
void fwd_items(const FwdArgs<typename V::T>& a, int64_t begin, int64_t end) {
  using T = typename V::T;
  const Geometry& g = a.g;
  const int64_t BQ = a.sched.BQ, DP = g.DP, group = g.Hq / g.Hkv;
  const int64_t RJ = imin(BQ + g.b1.L + g.b1.R, g.longest), RK = imin(BQ + g.b2.L + g.b2.R, g.longest);
  const int64_t NPJ = ceil_div(RJ, V::W) * V::W + V::W;
  auto rows_if = [&](const Input<T>& in, int64_t n) { return in.direct != nullptr ? 0 : n * DP; };
  const int64_t perm = g.det ? 2 * RK * DP : 0;
  const int64_t elems = FwdWork<V>::elems(g) + g.D * NPJ + rows_if(a.k1, RJ) + RJ * DP + rows_if(a.k2, RK) +
                        rows_if(a.v2, RK) + perm + rows_if(a.q, BQ) + (a.out.direct != nullptr ? 0 : BQ * DP);
  T* buffer = new T[elems];
  Arena<T> arena{buffer};
  const FwdWork<V> w(arena, g);
  T* k1t_buf = arena.take(g.D * NPJ);
  T *k1_buf = arena.take(rows_if(a.k1, RJ)), *v1_buf = arena.take(RJ * DP);
  T *k2_buf = arena.take(rows_if(a.k2, RK)), *v2_buf = arena.take(rows_if(a.v2, RK));
  T* perm_buf = arena.take(perm);
  T* q_buf = arena.take(rows_if(a.q, BQ));
  T* out_buf = arena.take(a.out.direct != nullptr ? 0 : BQ * DP);
  for (int64_t item = begin; item < end; ++item) {
    const Item it = decode_item(a.sched, g.Hkv, item);
    const Range J = window(it.rows.lo, it.rows.hi, g.b1, it.seq), K = window(it.rows.lo, it.rows.hi, g.b2, it.seq);
    const KeyTiles<T> t =
        key_tiles(g, input_rows(a.k1, g, it.b, it.kvh, J, k1_buf), copied_rows(a.v1, g, it.b, it.kvh, J, v1_buf),
                  input_rows(a.k2, g, it.b, it.kvh, K, k2_buf), input_rows(a.v2, g, it.b, it.kvh, K, v2_buf), J, K, NPJ,
                  k1t_buf, perm_buf);
    for (int64_t h = it.kvh * group; h < (it.kvh + 1) * group; ++h) {
      const RowView<T> q = input_rows(a.q, g, it.b, h, it.rows, q_buf);
      const int64_t row0 = (it.b * g.Hq + h) * g.N;
      for (int64_t i = it.rows.lo; i < it.rows.hi; ++i) {
        T* out_row = a.out.direct != nullptr ? a.out.direct + it.b * a.out.sb + i * a.out.sn + h * a.out.sh
                                             : out_buf + (i - it.rows.lo) * DP;
        fwd_query<V>(g, a.scale, q.at(i), t, window(i, i + 1, g.b1, it.seq), window(i, i + 1, g.b2, it.seq), out_row,
                     a.lse + row0 + i, a.lse_lo + row0 + i, w);
      }
      if (a.out.direct == nullptr) a.out.scatter(a.out, g.D, DP, it.b, h, it.rows.lo, it.rows.hi, out_buf);
    }
  }
  delete[] buffer;
}

// ---------------------------------------------------------------------------------------------
// Backward.

template <class V>
struct BwdWork {
  using T = typename V::T;
  T *qs, *qs_s, *qs_ss, *qn_s, *qn_ss, *dq, *dqb, *q2, *dv2, *mk, *nk, *s, *dp;
  static int64_t elems(const Geometry& g) { return 7 * g.DP + 4 * g.KT * g.DP + 2 * g.KT * g.JT; }
  explicit BwdWork(Arena<T>& a, const Geometry& g)
      : qs(a.take(g.DP)),
        qs_s(a.take(g.DP)),
        qs_ss(a.take(g.DP)),
        qn_s(a.take(g.DP)),
        qn_ss(a.take(g.DP)),
        dq(a.take(g.DP)),
        dqb(a.take(g.DP)),
        q2(a.take(g.KT * g.DP)),
        dv2(a.take(g.KT * g.DP)),
        mk(a.take(g.KT * g.DP)),
        nk(a.take(g.KT * g.DP)),
        s(a.take(g.KT * g.JT)),
        dp(a.take(g.KT * g.JT)) {}
};

// What one query row of the backward reads and where it accumulates: the item's key tiles, k1
// rows and the transpose of v1, and the item's gradient scratch rows (row n of dk1/dv1 at
// (n - J.lo) * DP, of dk2/dv2 at (n - K.lo) * DP). Determinant logits accumulate dk2 in two
// permuted parts (dk2, dk2b; see bwd_query).
template <typename T>
struct BwdTiles {
  KeyTiles<T> key;
  RowView<T> k1;
  ColTile<T> v1t;
  T *dk1, *dv1, *dk2, *dk2b, *dv2;
  int64_t jlo, klo;
};

// One query row: recompute P from lse, then
//   dA = P (dP - Delta),  M[k] = sum_j dA[k, j] k1[j],  Nv[k] = sum_j P[k, j] v1[j]
//   dq[i]  = scale sum_k k2[k] * M[k]       dk2[k] += scale q[i] * M[k]     dv2[k] += dout[i] * Nv[k]
//   dk1[j] += sum_k dA[k, j] Q2[k]          dv1[j] += sum_k P[k, j] (dout[i] * v2[k])
// Determinant logits (Q2[k] = k2[k] x qs) replace the two products with M by cross products,
//   dq[i] = scale sum_k M[k] x k2[k],       dk2[k] += qs x M[k],
// accumulated as vector products in permuted bases: with a[d] = sum_k M[k, d] k2[k, s(d)] and
// b[d] = sum_k M[k, d] k2[k, s(s(d))], dq[d] = scale (a[s(d)] - b[s(s(d))]); likewise the item
// sums M[k] * -qs[s(.)] into dk2[k] and M[k] * -qs[s(s(.))] into dk2b[k], and dk2[k] is finally
// dk2[k, s(d)] - dk2b[k, s(s(d))].
template <class V>
void bwd_query(const Geometry& g, typename V::T scale, const BwdTiles<typename V::T>& t, const typename V::T* q_row,
               const typename V::T* do_row, typename V::T lse, typename V::T lse_lo, typename V::T delta, Range jr,
               Range kr, typename V::T* dq_row, const BwdWork<V>& w) {
  using T = typename V::T;
  using reg = typename V::reg;
  constexpr int W = V::W;
  const int64_t DP = g.DP, JT = g.JT;
  const reg vl2 = V::set1(static_cast<T>(kLog2e)), vlse = V::set1(lse), vlse_lo = V::set1(lse_lo),
            vdelta = V::set1(delta);
  const KeyTiles<T>& key = t.key;

  scale_query<V>(g, scale, q_row, w.qs, w.qs_s, w.qs_ss);
  row_zero<V>(w.dq, DP);
  if (g.det) {
    row_scale<V>(w.qn_s, w.qs_s, T(-1), DP);
    row_scale<V>(w.qn_ss, w.qs_ss, T(-1), DP);
    row_zero<V>(w.dqb, DP);
  }
  for (int64_t k0 = kr.lo; k0 < kr.hi; k0 += g.KT) {
    const int64_t nk = imin(g.KT, kr.hi - k0);
    logit_factors<V>(g, w.qs, w.qs_s, w.qs_ss, key, k0, nk, w.q2);
    for (int64_t k = 0; k < nk; ++k) row_mul<V>(w.dv2 + k * DP, do_row, key.v2.at(k0 + k), DP);
    bool first = true;
    for (int64_t j0 = jr.lo; j0 < jr.hi; j0 += JT) {
      const int64_t nj = imin(JT, jr.hi - j0);
      const int64_t njv = ceil_div(nj, W);
      gemm<V>(nk, njv, g.D, w.q2, DP, 1, key.k1t.at(j0), key.k1t.ld, w.s, JT, false);  // S
      gemm<V>(nk, njv, g.D, w.dv2, DP, 1, t.v1t.at(j0), t.v1t.ld, w.dp, JT, false);    // dP
      // Lanes past nj hold values of other positions; every GEMM below reads only the first nj.
      for (int64_t k = 0; k < nk; ++k) {
        T* srow = w.s + k * JT;
        T* dprow = w.dp + k * JT;
        for (int64_t v = 0; v < njv; ++v) {
          // P = 2^(min((z - lse) - lse_lo, 0) log2 e): natural units, subtracting first, and
          // clamped because a true P never exceeds 1, so a recomputed z a rounding above the
          // forward's cannot overflow (the min keeps NaN).
          const reg z = V::sub(V::sub(V::load(srow + v * W), vlse), vlse_lo);
          const reg p = V::exp2(V::mul(V::min_keep_nan(z, V::zero()), vl2));
          V::store(srow + v * W, p);
          V::store(dprow + v * W, V::mul(p, V::sub(V::load(dprow + v * W), vdelta)));
        }
      }
      gemm<V>(nk, DP / W, nj, w.dp, JT, 1, t.k1.at(j0), t.k1.ld, w.mk, DP, !first);     // M  = dA k1
      gemm<V>(nk, DP / W, nj, w.s, JT, 1, key.v1.at(j0), key.v1.ld, w.nk, DP, !first);  // Nv = P v1
      T* dk1 = t.dk1 + (j0 - t.jlo) * DP;
      T* dv1 = t.dv1 + (j0 - t.jlo) * DP;
      gemm<V>(nj, DP / W, nk, w.dp, 1, JT, w.q2, DP, dk1, DP, true);  // dk1 += dA^T Q2
      gemm<V>(nj, DP / W, nk, w.s, 1, JT, w.dv2, DP, dv1, DP, true);  // dv1 += P^T (dout*v2)
      first = false;
    }
    for (int64_t k = 0; k < nk; ++k) {
      const int64_t row = (k0 + k - t.klo) * DP;
      const T* mk = w.mk + k * DP;
      if (g.det) {
        row_fma<V>(w.dq, key.k2s.at(k0 + k), mk, DP);
        row_fma<V>(w.dqb, key.k2ss.at(k0 + k), mk, DP);
        row_fma<V>(t.dk2 + row, w.qn_s, mk, DP);
        row_fma<V>(t.dk2b + row, w.qn_ss, mk, DP);
      } else {
        row_fma<V>(w.dq, key.k2.at(k0 + k), mk, DP);
        row_fma<V>(t.dk2 + row, w.qs, mk, DP);
      }
      row_fma<V>(t.dv2 + row, do_row, w.nk + k * DP, DP);
    }
  }
  if (g.det) {
    unpermute_difference(w.dq, w.dqb, g.D, DP, dq_row);
    row_scale<V>(dq_row, dq_row, scale, DP);
  } else {
    row_scale<V>(dq_row, w.dq, scale, DP);
  }
}

// Rows r of a gradient scratch tile (row n at tile + (n - r.lo) * DP) split by the item's block:
// its own rows to the accumulator, the others to its halo slot (see BwdArgs).
template <typename T>
void write_back(const T* tile, Range r, Range own, Band b, int64_t DP, const Accum<T>& acc, int64_t batch, int64_t h,
                T* slot) {
  for (int64_t n = r.lo; n < r.hi; ++n) {
    T* dst = n < own.lo   ? slot + (n - (own.lo - b.L)) * DP
             : n < own.hi ? acc.p + batch * acc.sb + n * acc.sn + h * acc.sh
                          : slot + (b.L + n - own.hi) * DP;
    std::memcpy(dst, tile + (n - r.lo) * DP, sizeof(T) * DP);
  }
}

// Work items [begin, end) of the schedule; see BwdArgs for the ownership rules.
template <class V>
void bwd_items(const BwdArgs<typename V::T>& a, int64_t begin, int64_t end) {
  using T = typename V::T;
  const Geometry& g = a.g;
  const int64_t BQ = a.sched.BQ, DP = g.DP, group = g.Hq / g.Hkv;
  const int64_t RJ = imin(BQ + g.b1.L + g.b1.R, g.longest), RK = imin(BQ + g.b2.L + g.b2.R, g.longest);
  const int64_t NPJ = ceil_div(RJ, V::W) * V::W + V::W;
  auto rows_if = [&](const Input<T>& in, int64_t n) { return in.direct != nullptr ? 0 : n * DP; };
  const int64_t dq_rows = a.dq.direct != nullptr ? 0 : BQ * DP;
  const int64_t det_rows = g.det ? 3 * RK * DP + DP : 0;  // k2 permuted twice, dk2b, one row to unpermute
  const int64_t elems = BwdWork<V>::elems(g) + 2 * g.D * NPJ + 4 * RJ * DP + 2 * RK * DP + rows_if(a.k2, RK) +
                        rows_if(a.v2, RK) + det_rows + rows_if(a.q, BQ) + rows_if(a.dout, BQ) + rows_if(a.out, BQ) +
                        dq_rows;
  T* buffer = new T[elems];
  Arena<T> arena{buffer};
  const BwdWork<V> w(arena, g);
  T *k1t_buf = arena.take(g.D * NPJ), *v1t_buf = arena.take(g.D * NPJ);
  T *dk1_buf = arena.take(RJ * DP), *dv1_buf = arena.take(RJ * DP);
  T *dk2_buf = arena.take(RK * DP), *dv2_buf = arena.take(RK * DP);
  T *k1_buf = arena.take(RJ * DP), *v1_buf = arena.take(RJ * DP);
  T *k2_buf = arena.take(rows_if(a.k2, RK)), *v2_buf = arena.take(rows_if(a.v2, RK));
  T* perm_buf = arena.take(g.det ? 2 * RK * DP : 0);
  T* dk2b_buf = arena.take(g.det ? RK * DP : 0);
  T* row_buf = arena.take(g.det ? DP : 0);
  T *q_buf = arena.take(rows_if(a.q, BQ)), *do_buf = arena.take(rows_if(a.dout, BQ));
  T* out_buf = arena.take(rows_if(a.out, BQ));
  T* dq_buf = arena.take(dq_rows);
  for (int64_t item = begin; item < end; ++item) {
    const Item it = decode_item(a.sched, g.Hkv, item);
    const Range J = window(it.rows.lo, it.rows.hi, g.b1, it.seq), K = window(it.rows.lo, it.rows.hi, g.b2, it.seq);
    BwdTiles<T> t;
    t.k1 = copied_rows(a.k1, g, it.b, it.kvh, J, k1_buf);
    t.key =
        key_tiles(g, t.k1, copied_rows(a.v1, g, it.b, it.kvh, J, v1_buf), input_rows(a.k2, g, it.b, it.kvh, K, k2_buf),
                  input_rows(a.v2, g, it.b, it.kvh, K, v2_buf), J, K, NPJ, k1t_buf, perm_buf);
    t.v1t = {v1t_buf, NPJ, J.lo};
    transpose_rows(t.key.v1, J, g.D, t.v1t);
    t.dk1 = dk1_buf;
    t.dv1 = dv1_buf;
    t.dk2 = dk2_buf;
    t.dk2b = dk2b_buf;
    t.dv2 = dv2_buf;
    t.jlo = J.lo;
    t.klo = K.lo;
    std::memset(dk1_buf, 0, sizeof(T) * J.size() * DP);
    std::memset(dv1_buf, 0, sizeof(T) * J.size() * DP);
    std::memset(dk2_buf, 0, sizeof(T) * K.size() * DP);
    std::memset(dv2_buf, 0, sizeof(T) * K.size() * DP);
    if (g.det) std::memset(dk2b_buf, 0, sizeof(T) * K.size() * DP);
    for (int64_t h = it.kvh * group; h < (it.kvh + 1) * group; ++h) {
      const RowView<T> q = input_rows(a.q, g, it.b, h, it.rows, q_buf);
      const RowView<T> dout = input_rows(a.dout, g, it.b, h, it.rows, do_buf);
      const RowView<T> out = input_rows(a.out, g, it.b, h, it.rows, out_buf);
      const int64_t row0 = (it.b * g.Hq + h) * g.N;
      for (int64_t i = it.rows.lo; i < it.rows.hi; ++i) {
        T* dq_row = a.dq.direct != nullptr ? a.dq.direct + it.b * a.dq.sb + i * a.dq.sn + h * a.dq.sh
                                           : dq_buf + (i - it.rows.lo) * DP;
        // Delta = rowsum(dout * out), from the saved (rounded) output.
        const T delta = row_dot<V>(dout.at(i), out.at(i), DP);
        bwd_query<V>(g, a.scale, t, q.at(i), dout.at(i), a.lse[row0 + i], a.lse_lo[row0 + i], delta,
                     window(i, i + 1, g.b1, it.seq), window(i, i + 1, g.b2, it.seq), dq_row, w);
      }
      if (a.dq.direct == nullptr) a.dq.scatter(a.dq, g.D, DP, it.b, h, it.rows.lo, it.rows.hi, dq_buf);
    }
    if (g.det) {
      for (int64_t n = 0; n < K.size(); ++n) {
        unpermute_difference(dk2_buf + n * DP, dk2b_buf + n * DP, g.D, DP, row_buf);
        std::memcpy(dk2_buf + n * DP, row_buf, sizeof(T) * DP);
      }
    }
    const int64_t local = item - a.sched.first_item[it.s];
    const int64_t slot = a.sched.halo_first[it.s] < 0 ? -1 : a.sched.halo_first[it.s] + local;
    const int64_t s1 = g.b1.L + g.b1.R, s2 = g.b2.L + g.b2.R;
    T* hk1 = slot < 0 ? nullptr : a.halo_k1 + slot * s1 * DP;
    T* hv1 = slot < 0 ? nullptr : a.halo_v1 + slot * s1 * DP;
    T* hk2 = slot < 0 ? nullptr : a.halo_k2 + slot * s2 * DP;
    T* hv2 = slot < 0 ? nullptr : a.halo_v2 + slot * s2 * DP;
    write_back(dk1_buf, J, it.rows, g.b1, DP, a.dk1, it.b, it.kvh, hk1);
    write_back(dv1_buf, J, it.rows, g.b1, DP, a.dv1, it.b, it.kvh, hv1);
    write_back(dk2_buf, K, it.rows, g.b2, DP, a.dk2, it.b, it.kvh, hk2);
    write_back(dv2_buf, K, it.rows, g.b2, DP, a.dv2, it.b, it.kvh, hv2);
  }
  delete[] buffer;
}

// ---------------------------------------------------------------------------------------------
// Decoding (DecodeArgs).

// Positions r of (b, h) of a ring-buffer cache of C slots (position p in slot p % C), copied in
// position order into `scratch` (DP per row): one run of consecutive slots at a time.
template <typename T>
RowView<T> ring_rows(const Input<T>& in, const Geometry& g, int64_t b, int64_t h, Range r, int64_t C, T* scratch) {
  for (int64_t p = r.lo; p < r.hi;) {
    const int64_t slot = p % C, run = imin(r.hi - p, C - slot);
    copied_rows(in, g, b, h, Range{slot, slot + run}, scratch + (p - r.lo) * g.DP);
    p += run;
  }
  return {scratch, g.DP, r.lo};
}

template <class V>
void decode_items(const DecodeArgs<typename V::T>& a, int64_t begin, int64_t end) {
  using T = typename V::T;
  const Geometry& g = a.g;
  const int64_t DP = g.DP, group = g.Hq / g.Hkv, TB = a.TB;
  const int64_t tblocks = (a.Nq + TB - 1) / TB;
  // Rows of the widest j part and k range an item can have.
  const int64_t RU = TB + g.b1.L, RJ = imin(RU, (RU + a.splits - 1) / a.splits), RK = TB + g.b2.L;
  const int64_t NPJ = ceil_div(RJ, V::W) * V::W + V::W;
  const int64_t elems = FwdWork<V>::elems(g) + g.D * NPJ + 2 * RJ * DP + 2 * RK * DP + (g.det ? 2 * RK * DP : 0) +
                        (a.q.direct != nullptr ? 0 : TB * DP);
  T* buffer = new T[elems];
  Arena<T> arena{buffer};
  const FwdWork<V> w(arena, g);
  T *k1t_buf = arena.take(g.D * NPJ), *k1_buf = arena.take(RJ * DP), *v1_buf = arena.take(RJ * DP);
  T *k2_buf = arena.take(RK * DP), *v2_buf = arena.take(RK * DP);
  T* perm_buf = arena.take(g.det ? 2 * RK * DP : 0);
  T* q_buf = arena.take(a.q.direct != nullptr ? 0 : TB * DP);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t c = item % a.splits, tb = item / a.splits % tblocks;
    const int64_t kvh = item / (a.splits * tblocks) % g.Hkv, b = item / (a.splits * tblocks * g.Hkv);
    const Range rows{tb * TB, imin(a.Nq, (tb + 1) * TB)};
    const int64_t L = a.cache_seqlens[b];
    const Range seq{0, L + rows.hi};  // every position up to the last query's
    const Range U = window(L + rows.lo, L + rows.hi, g.b1, seq), K = window(L + rows.lo, L + rows.hi, g.b2, seq);
    const int64_t part = (U.size() + a.splits - 1) / a.splits;
    const Range J{imin(U.hi, U.lo + c * part), imin(U.hi, U.lo + (c + 1) * part)};
    KeyTiles<T> t;
    if (J.size() > 0) {
      t = key_tiles(g, ring_rows(a.k1, g, b, kvh, J, a.C1, k1_buf), ring_rows(a.v1, g, b, kvh, J, a.C1, v1_buf),
                    ring_rows(a.k2, g, b, kvh, K, a.C2, k2_buf), ring_rows(a.v2, g, b, kvh, K, a.C2, v2_buf), J, K, NPJ,
                    k1t_buf, perm_buf);
    }
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      const RowView<T> q = input_rows(a.q, g, b, h, rows, q_buf);
      for (int64_t i = rows.lo; i < rows.hi; ++i) {
        const int64_t state = ((b * g.Hq + h) * a.Nq + i) * a.splits + c;
        T* ml = a.part_ml + 2 * state;
        T* acc = a.part_acc + state * DP;
        const Range jr = window(L + i, L + i + 1, g.b1, seq), kr = window(L + i, L + i + 1, g.b2, seq);
        const Range mine{jr.lo > J.lo ? jr.lo : J.lo, jr.hi < J.hi ? jr.hi : J.hi};
        if (mine.size() <= 0) {  // no pair of this row in this part
          ml[0] = -std::numeric_limits<T>::infinity();
          ml[1] = T(0);
          row_zero<V>(acc, DP);
          continue;
        }
        scale_query<V>(g, a.scale, q.at(i), w.qs, w.qs_s, w.qs_ss);
        const SoftmaxState<T> st = softmax_rows<V>(g, t, mine, kr, w);
        ml[0] = st.m;
        ml[1] = st.l;
        std::memcpy(acc, w.acc, sizeof(T) * DP);
      }
    }
  }
  delete[] buffer;
}

}  // namespace SA_CPU_ISA
}  // namespace cpu
}  // namespace simplicial_attn
