// Shared-memory tiles, global -> shared loaders and the tensor-core fragment helpers every
// tensor-core kernel uses. Fragment layouts: see common.cuh.
#pragma once

#include "common.cuh"
#include "params.h"

namespace simplicial_attn::cuda {

// Shared memory a block may use on every target: the opt-in maximum of sm_86 (99 KiB). Each
// kernel config static_asserts it stays below, so one config serves sm_80, sm_86 and sm_90.
constexpr int kSmemLimit = 101376;

SA_DEV int ceil_div(int a, int b) { return (a + b - 1) / b; }
SA_DEV int imin(int a, int b) { return a < b ? a : b; }
SA_DEV int imax(int a, int b) { return a > b ? a : b; }

// ------------------------------------------------------------------------------------------------
// Sequences (ProblemDesc in params.h). Kernels index positions 0 .. len - 1 within a sequence; its
// rows in the tensors are row0 + position of batch element `batch`.

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

// Row r of a (position, head) tile: position p0 + (r >> log2_heads), head (of the kv group)
// head0 + (r & (heads - 1)); `len` is the sequence's length.
struct RowTile {
  int p0, head0, log2_heads, group, len;
  SA_DEV int pos(int r) const { return p0 + (r >> log2_heads); }
  SA_DEV int head(int r) const { return head0 + (r & ((1 << log2_heads) - 1)); }
  SA_DEV bool valid(int r) const { return pos(r) < len && head(r) < group; }
};

// The query tile of a fwd / dq CTA and the bounds of its loop. grid.x = (sequence, position
// tile), grid.y = (kv head, head block); the tile's positions are [rt.p0, p_last] of sequence
// `seq` (a tile past its end has none: past_end()). Visited: offsets u in [u_lo, u_hi] (some
// k = i - u in [0, len) and in the k2 band) and k1/v1 positions j in [j_lo, j_hi] (the union of
// the rows' windows, clipped to the sequence), inclusive.
struct QueryTile {
  SeqSpan seq;
  int g, positions;
  RowTile rt;
  int p_last, u_lo, u_hi, j_lo, j_hi;
  SA_DEV bool past_end() const { return rt.p0 >= seq.len; }
};

template <int BM, class Params>
SA_DEV QueryTile query_tile(const Params& p) {
  QueryTile t;
  const int heads = 1 << p.log2_heads;
  t.seq = seq_span(p.prob, p.N, block_x() / p.pos_tiles);
  const int len = t.seq.len;
  t.g = block_y() / p.head_blocks;
  t.positions = BM >> p.log2_heads;
  t.rt =
      RowTile{(block_x() % p.pos_tiles) * t.positions, (block_y() % p.head_blocks) * heads, p.log2_heads, p.group, len};
  t.p_last = imin(t.rt.p0 + t.positions - 1, len - 1);
  t.u_lo = imax(-p.prob.band2.right, t.rt.p0 - (len - 1));
  t.u_hi = imin(p.prob.band2.left, t.p_last);
  t.j_lo = imax(0, t.rt.p0 - p.prob.band1.left);
  t.j_hi = imin(len - 1, t.p_last + p.prob.band1.right);
  SA_PATH(t.past_end(), "tile: past the sequence's end");
  SA_PATH(p.log2_heads > 0, "tile: head packing");
  SA_PATH(t.rt.head0 + heads > p.group, "tile: partial head block");
  SA_PATH(!t.past_end() && t.rt.p0 + t.positions > len, "tile: last partial position tile");
  SA_PATH(p.group > 1, "tile: GQA group > 1");
  return t;
}

// A row-major tile of 16-bit elements in shared memory: `rows` x DP, row stride kLd = DP + 8.
// The 8 extra elements (16 bytes) shift consecutive rows by 4 banks, so the 8 rows one ldmatrix
// matrix reads fall on 8 distinct 4-bank groups (no bank conflicts). Columns [DP, kLd) are never
// read or written.
template <class T, int DP>
struct Tile {
  static constexpr int kLd = DP + 8;
  static constexpr int row_bytes() { return kLd * static_cast<int>(sizeof(T)); }
  T* base;
  SA_DEV T* row(int r) const { return base + r * kLd; }
};

// Carves consecutive 16-byte aligned buffers out of dynamic shared memory. The same sequence of
// take() calls on the host (with base == nullptr) gives the byte count the launch asks for.
struct SmemCarver {
  char* base;
  int offset = 0;
  template <class V>
  SA_DEV V* take(int count) {
    V* p = reinterpret_cast<V*>(base + offset);
    offset += (count * static_cast<int>(sizeof(V)) + 15) / 16 * 16;
    return p;
  }
};

// Address of row (b, position n, head h) of a [B, N, H, D] tensor with unit stride on D (64-bit
// offsets: B * N * H * D may exceed 2^31).
template <class T>
SA_DEV const T* row_ptr(const TensorRef& t, int b, int n, int h) {
  return static_cast<const T*>(t.ptr) + (b * t.sb + n * t.sn + h * t.sh);
}
template <class T>
SA_DEV T* row_ptr(const MutTensorRef& t, int b, int n, int h) {
  return static_cast<T*>(t.ptr) + (b * t.sb + n * t.sn + h * t.sh);
}
// The row of position `pos` of sequence `s`, head h.
template <class T>
SA_DEV const T* row_ptr(const TensorRef& t, const SeqSpan& s, int pos, int h) {
  return row_ptr<T>(t, s.batch, s.row0 + pos, h);
}
template <class T>
SA_DEV T* row_ptr(const MutTensorRef& t, const SeqSpan& s, int pos, int h) {
  return row_ptr<T>(t, s.batch, s.row0 + pos, h);
}

// Fills rows [0, nrows) of `dst`: row r is a copy of the global row `src(r)` (a `const T*`, or
// nullptr for a row outside the tensor, which becomes zeros), columns >= D are zeros.
//   vec == true: 16-byte cp.async (needs D % 8 == 0 and 16-byte aligned rows, checked by the
//   host); the caller commits a group and waits for it before a cta_sync.
//   vec == false: element loads and shared stores, visible to other threads after a cta_sync.
// `any_row` is some valid, 16-byte aligned global address, passed as the (unread) source of a
// zero-filling cp.async.
template <int kThreads, class T, int DP, class RowSrc>
SA_DEV void load_tile(const Tile<T, DP>& dst, int nrows, int D, bool vec, const void* any_row, const RowSrc& src) {
  SA_PATH(vec, "load: cp.async 16 B");
  SA_PATH(!vec, "load: scalar");
  if (vec) {
    constexpr int kChunks = DP / 8;  // 16-byte chunks per row
    for (int idx = thread_id(); idx < nrows * kChunks; idx += kThreads) {
      const int r = idx / kChunks, c = (idx % kChunks) * 8;
      const T* row = src(r);
      const bool valid = row != nullptr && c < D;
      SA_PATH(row == nullptr, "load: zero row");
      SA_PATH(row != nullptr && c >= D, "load: zero columns");
      cp_async_16(dst.row(r) + c, valid ? static_cast<const void*>(row + c) : any_row, valid);
    }
  } else {
    for (int idx = thread_id(); idx < nrows * DP; idx += kThreads) {
      const int r = idx / DP, c = idx % DP;
      const T* row = src(r);
      SA_PATH(row == nullptr, "load: zero row");
      SA_PATH(row != nullptr && c >= D, "load: zero columns");
      const T v = (row != nullptr && c < D) ? gload(row + c) : Elem<T>::from_float(0.f);
      sstore(dst.row(r) + c, v);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Fragments.

// The row (within a 16-row warp tile) and column of C-fragment element i of this lane.
SA_DEV int frag_row(int i) { return (lane_id() >> 2) + 8 * (i >> 1); }
SA_DEV int frag_col(int i) { return 2 * (lane_id() & 3) + (i & 1); }

// A operand, 16 x 16, columns [c0, c0 + 16): each lane passes `my_row`, the shared row that holds
// A-row (lane % 16). Lanes 0-15 address column c0, lanes 16-31 column c0 + 8, so ldmatrix matrix
// 0..3 = (rows 0-7, cols c0), (rows 8-15, c0), (rows 0-7, c0+8), (rows 8-15, c0+8): the A registers.
template <class T>
SA_DEV void ldsm_a(uint32_t (&a)[4], const T* my_row, int c0 SA_SITE_ARG) {
  ldmatrix_x4<false>(a, my_row + c0 + (lane_id() >> 4) * 8 SA_SITE_NEXT);
}

// B operands of two n-tiles (n0..n0+7 -> b0, n0+8..n0+15 -> b1) over k in [k0, k0 + 16), from a
// tile stored n-major (row = n, column = k: e.g. k1[j][d] for S = A k1^T). Matrices: (n 0-7, k0),
// (n 0-7, k0+8), (n 8-15, k0), (n 8-15, k0+8) = b0[0], b0[1], b1[0], b1[1].
template <class T, int DP>
SA_DEV void ldsm_b_nmajor(uint32_t (&b0)[2], uint32_t (&b1)[2], const Tile<T, DP>& t, int n0, int k0 SA_SITE_ARG) {
  const int l = lane_id();
  uint32_t r[4];
  ldmatrix_x4<false>(r, t.row(n0 + (l & 7) + ((l >> 4) << 3)) + k0 + ((l >> 3) & 1) * 8 SA_SITE_NEXT);
  b0[0] = r[0];
  b0[1] = r[1];
  b1[0] = r[2];
  b1[1] = r[3];
}

// B operands of two n-tiles (n0..n0+7 -> b0, n0+8..n0+15 -> b1) over k in [k0, k0 + 16), from a
// tile stored k-major (row = k, column = n: e.g. v1[j][d] for P @ v1), transposed by ldmatrix.
// Matrices: (k 0-7, n0), (k 8-15, n0), (k 0-7, n0+8), (k 8-15, n0+8) = b0[0], b0[1], b1[0], b1[1].
template <class T, int DP>
SA_DEV void ldsm_b_kmajor(uint32_t (&b0)[2], uint32_t (&b1)[2], const Tile<T, DP>& t, int k0, int n0 SA_SITE_ARG) {
  const int l = lane_id();
  uint32_t r[4];
  ldmatrix_x4<true>(r, t.row(k0 + (l & 7) + ((l >> 3) & 1) * 8) + n0 + (l >> 4) * 8 SA_SITE_NEXT);
  b0[0] = r[0];
  b0[1] = r[1];
  b1[0] = r[2];
  b1[1] = r[3];
}

// The A operand (16 x 16) made of two C fragments: `lo` holds columns 0-7, `hi` columns 8-15.
// C pairs (row g, cols 2t..) and (row g+8, cols 2t..) of `lo` are A registers 0 and 1; those of
// `hi` registers 2 and 3 (this is how P goes from one mma's output into the next mma's input).
template <class T>
SA_DEV void c_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = Elem<T>::pack(lo[0], lo[1]);
  a[1] = Elem<T>::pack(lo[2], lo[3]);
  a[2] = Elem<T>::pack(hi[0], hi[1]);
  a[3] = Elem<T>::pack(hi[2], hi[3]);
}

// The A operand (16 x 16, columns [c0, c0 + 16)) of the element-wise product x ⊙ y of two row
// sets: lane passes the shared rows holding row (lane % 16) of x and of y (y may be a shifted row).
template <class T>
SA_DEV void ldsm_a_product(uint32_t (&a)[4], const T* x_row, const T* y_row, int c0 SA_SITE_ARG) {
  uint32_t xa[4], ya[4];
  ldsm_a(xa, x_row, c0 SA_SITE_NEXT);
  ldsm_a(ya, y_row, c0 SA_SITE_NEXT);
#pragma unroll
  for (int i = 0; i < 4; ++i) a[i] = mul_pairs<T>(xa[i], ya[i]);
}

// ------------------------------------------------------------------------------------------------
// Determinant logits (CONTRACT §8). Per 3-channel chunk det(q, k1, k2) = k1 · (k2 × q), so the
// kernels replace the element-wise a = q ⊙ k2 of the trilinear form by the chunkwise cross product
// a = k2 × q (the same GEMM depth: it is O(D) per (query, k) pair, like q ⊙ k2), and the dq / dk2
// epilogues by cross products with M = dA @ k1 (interface.md):
//   dq += scale * (M × k2),  dk2 += scale * (q × M),  dk1 += scale * dA^T (k2 × q).

// The next channel of d's chunk, cyclically (s(d) of CONTRACT §8), and the one after (s(s(d))).
SA_DEV int chunk_next(int d) { return d + (d % 3 == 2 ? -2 : 1); }
SA_DEV int chunk_prev(int d) { return d + (d % 3 == 0 ? 2 : -1); }

// (x × y)[d] = x[s(d)] y[s(s(d))] - x[s(s(d))] y[s(d)] of two 16-bit rows in shared memory, in fp32
// (products of 16-bit values are exact there); 0 for a channel d >= D (no chunk reaches those).
template <class T>
SA_DEV float cross_at(const T* x, const T* y, int d, int D) {
  if (d >= D) return 0.f;
  const int a = chunk_next(d), b = chunk_prev(d);
  return Elem<T>::to_float(sload(x + a)) * Elem<T>::to_float(sload(y + b)) -
         Elem<T>::to_float(sload(x + b)) * Elem<T>::to_float(sload(y + a));
}

// The A operand (16 x 16, columns [c0, c0 + 16)) of a = k2 × q, each element rounded once to T: the
// determinant's replacement of ldsm_a_product. Lane (g, t) passes the shared rows of its two
// fragment rows g and g + 8 (k2_rows[h], q_rows[h]); register i is (row h = i & 1, columns
// c0 + 2t + 8 (i >> 1) + {0, 1}) as in common.cuh. Scalar shared loads: a chunk's channels lie in
// other lanes' ldmatrix fragments.
template <class T>
SA_DEV void cross_a(uint32_t (&a)[4], const T* const* k2_rows, const T* const* q_rows, int c0, int D) {
  const int c = c0 + 2 * (lane_id() & 3);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int h = i & 1, cc = c + 8 * (i >> 1);
    a[i] = Elem<T>::pack(cross_at(k2_rows[h], q_rows[h], cc, D), cross_at(k2_rows[h], q_rows[h], cc + 1, D));
  }
}

// 8 channels [c, c + 8) of k2 × q, rounded as cross_a rounds them, to a 16-byte shared row slot.
template <class T>
SA_DEV void store_cross8(T* dst, const T* k2, const T* q, int c, int D) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) w[i] = Elem<T>::pack(cross_at(k2, q, c + 2 * i, D), cross_at(k2, q, c + 2 * i + 1, D));
  sstore(reinterpret_cast<uint4*>(dst), uint4{w[0], w[1], w[2], w[3]});
}

// The fp32 shared tile through which the determinant epilogues read M = dA @ k1 at the other
// channels of a chunk (they lie in other lanes' C fragments): rows of the CTA, columns
// [m_lo, m_lo + kWidth) of M. A CTA owning output columns [col0, col0 + DO) of DP needs M on
// [col0 - 2, col0 + DO + 2): it computes whole 16-column groups, one more on each side of a split.
template <int DO, int DP>
struct CrossTile {
  static constexpr int kWidth = DO < DP ? DO + 32 : DO;
  float* base;
  int m_lo, m_hi;  // the 16-column groups of M this CTA computes
  SA_DEV CrossTile(float* b, int col0) : base(b), m_lo(imax(0, col0 - 16)), m_hi(imin(DP, col0 + DO + 16)) {}
  SA_DEV float* at(int r, int c) const { return base + r * kWidth + (c - m_lo); }
};

// M = dA @ k1 (da: the A fragments of dA over the stage's BJ positions, k1: the stage, k-major) for
// this warp's 16 rows and the CrossTile's columns, stored to the tile. Callers put a cta_sync
// between this and the reads, and another before the tile is written again.
template <class T, int DP, int BJ, int DO>
SA_DEV void store_m(const CrossTile<DO, DP>& t, int warp_row0, const uint32_t (&da)[BJ / 16][4],
                    const Tile<T, DP>& k1 SA_SITE_ARG) {
  for (int c16 = t.m_lo; c16 < t.m_hi; c16 += 16) {
    float t0[4] = {0.f, 0.f, 0.f, 0.f}, t1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < BJ / 16; ++kk) {
      uint32_t b0[2], b1[2];
      ldsm_b_kmajor(b0, b1, k1, kk * 16, c16 SA_SITE_NEXT);
      mma_acc<T>(t0, da[kk], b0 SA_SITE_NEXT);
      mma_acc<T>(t1, da[kk], b1 SA_SITE_NEXT);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      sstore(t.at(warp_row0 + frag_row(i), c16 + frag_col(i)), t0[i]);
      sstore(t.at(warp_row0 + frag_row(i), c16 + 8 + frag_col(i)), t1[i]);
    }
  }
}

// The shared rows a lane's A operand of the logit product S = A @ k1^T comes from: trilinear,
// A = q ⊙ k2 from its ldmatrix rows (row lane % 16 of the warp's 16); determinant, A = k2 × q from
// its two fragment rows g and g + 8 (cross_a).
template <class T>
struct LogitRows {
  bool det;
  int D;
  const T* q_row;  // ldmatrix rows
  const T* k2_row;
  const T* const* q_frag;  // fragment rows [2]
  const T* const* k2_frag;
  // The A operand over columns [c0, c0 + 16).
  SA_DEV void a_operand(uint32_t (&a)[4], int c0 SA_SITE_ARG) const {
    if (det)
      cross_a<T>(a, k2_frag, q_frag, c0, D);
    else
      ldsm_a_product<T>(a, q_row, k2_row, c0 SA_SITE_NEXT);
  }
};

// The two products the dq and dk2/dv2 kernels start each (u, j-block) step with, for one warp's 16
// rows and the BJ k1/v1 positions of the stage, over all DP channels:
//   s = A @ k1^T (A of `logit`: q ⊙ k2 or k2 × q)    dp = (e ⊙ f) @ v1^T
// Each lane passes the shared rows holding row (lane % 16) of e and f (see ldsm_a_product).
template <class T, int DP, int BJ>
SA_DEV void logits_and_dp(float (&s)[BJ / 8][4], float (&dp)[BJ / 8][4], const LogitRows<T>& logit, const T* e_row,
                          const T* f_row, const Tile<T, DP>& k1, const Tile<T, DP>& v1 SA_SITE_ARG) {
#pragma unroll
  for (int nt = 0; nt < BJ / 8; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) s[nt][i] = dp[nt][i] = 0.f;
#pragma unroll 2
  for (int kt = 0; kt < DP / 16; ++kt) {
    uint32_t a[4], e[4];
    logit.a_operand(a, kt * 16 SA_SITE_NEXT);
    ldsm_a_product<T>(e, e_row, f_row, kt * 16 SA_SITE_NEXT);
#pragma unroll
    for (int nt = 0; nt < BJ / 8; nt += 2) {
      uint32_t b0[2], b1[2];
      ldsm_b_nmajor(b0, b1, k1, nt * 8, kt * 16 SA_SITE_NEXT);
      mma_acc<T>(s[nt], a, b0 SA_SITE_NEXT);
      mma_acc<T>(s[nt + 1], a, b1 SA_SITE_NEXT);
      ldsm_b_nmajor(b0, b1, v1, nt * 8, kt * 16 SA_SITE_NEXT);
      mma_acc<T>(dp[nt], e, b0 SA_SITE_NEXT);
      mma_acc<T>(dp[nt + 1], e, b1 SA_SITE_NEXT);
    }
  }
}

// Reads the pair (cols c, c+1) of a shared row as floats.
template <class T>
SA_DEV float2 sload_pair(const T* row, int c) {
  return Elem<T>::unpack(sload(reinterpret_cast<const uint32_t*>(row + c)));
}

// 8 products of 8 pairs of 16-bit elements (16-byte shared rows), rounded once to T.
template <class T>
SA_DEV void store_product8(T* dst, const T* x, const T* y) {
  const uint4 a = sload(reinterpret_cast<const uint4*>(x));
  const uint4 b = sload(reinterpret_cast<const uint4*>(y));
  uint4 c;
  c.x = mul_pairs<T>(a.x, b.x);
  c.y = mul_pairs<T>(a.y, b.y);
  c.z = mul_pairs<T>(a.z, b.z);
  c.w = mul_pairs<T>(a.w, b.w);
  sstore(reinterpret_cast<uint4*>(dst), c);
}

// Stores the C-fragment accumulators acc[n-tile][4] of this lane's two rows to global memory:
// element (row h, col d) gets acc * row_scale[h]; rows with row_dst[h] == nullptr and columns
// >= D are skipped. Columns are `col0 + 8 * nt + frag_col(i)`.
template <class T, int kTiles>
SA_DEV void store_acc_rows(const float (&acc)[kTiles][4], T* const (&row_dst)[2], const float (&row_scale)[2], int col0,
                           int D) {
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = i >> 1, d = col0 + nt * 8 + frag_col(i);
      if (row_dst[h] != nullptr && d < D) gstore(row_dst[h] + d, Elem<T>::from_float(acc[nt][i] * row_scale[h]));
    }
  }
}

}  // namespace simplicial_attn::cuda
