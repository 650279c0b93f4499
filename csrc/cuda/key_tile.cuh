// The key tile of a dk / dv CTA (bwd_dkv1_kernel.cuh: k1/v1 rows j; bwd_dkv2_kernel.cuh: k2/v2
// rows k): grid.x = (sequence, tile of kRows key positions [r0, r0 + kRows)), grid.y = kv head g,
// grid.z = output columns [col0, col0 + kOutCols). The query heads of g's group are a loop inside
// the CTA, so it owns its output rows (no atomics) and sums over them itself.
#pragma once

#include "addressing.cuh"
#include "fragments.cuh"
#include "mask.cuh"
#include "seqlen.cuh"
#include "smem_tile.cuh"

namespace simplicial_attn::cuda {

struct KeyTile {
  SeqSpan seq;
  int g, r0, r_last, col0;
  SA_DEV bool past_end() const { return r0 >= seq.len; }
};

template <int BM, int DO>
SA_DEV KeyTile key_tile(const TileParams& p) {
  KeyTile t;
  t.seq = seq_span(p.prob, p.N, block_x() / p.pos_tiles);
  t.g = block_y();
  t.col0 = block_z() * DO;
  t.r0 = (block_x() % p.pos_tiles) * BM;
  t.r_last = imin(t.r0 + BM - 1, t.seq.len - 1);
  SA_PATH(t.past_end(), "tile: past the sequence's end");
  SA_PATH(!t.past_end() && t.col0 > 0, "output: second column half");
  SA_PATH(!t.past_end() && p.prob.determinant, "logits: determinant");
  SA_PATH(!t.past_end() && t.r0 + BM > t.seq.len, "tile: last partial position tile");
  return t;
}

// The tile's own rows (positions r0 .. r0 + rows - 1 of key and value k, v: k1/v1 or k2/v2) into
// two tiles; rows past the sequence's end become zeros.
template <int kThreads, class T, int DP>
SA_DEV void load_own_rows(const Tile<T, DP>& sk, const Tile<T, DP>& sv, const TensorRef& k, const TensorRef& v,
                          const KeyTile& kt, int rows, int D, bool vec) {
  load_row_pair<kThreads>(sk, sv, k, v, kt.seq, kt.g, kt.r0, rows, Span{0, kt.seq.len - 1}, D, vec);
}

// Query rows base + r (r < rows) of query head h into shared memory: q and dout to tiles, lse,
// lse_lo and Delta to arrays; rows outside [valid.lo, valid.hi] become zeros. The caller commits
// and waits for the cp.async group, then a barrier.
template <int kThreads, class T, int DP, class Params>
SA_DEV void load_query_rows(const Params& p, const SeqSpan& seq, int h, int base, int rows, Span valid,
                            const Tile<T, DP>& sq, const Tile<T, DP>& sdo, float* slse, float* slse_lo, float* sdel) {
  load_row_pair<kThreads>(sq, sdo, p.q, p.dout, seq, h, base, rows, valid, p.D, p.vec);
  for (int r = thread_id(); r < rows; r += kThreads) {
    const int i = base + r;
    const bool in = i >= valid.lo && i <= valid.hi;
    const int64_t stat = in ? stat_index(seq, p.Hq, p.N, h, i) : 0;
    sstore(slse + r, in ? gload(p.lse + stat) : 0.f);
    sstore(slse_lo + r, in ? gload(p.lse_lo + stat) : 0.f);
    sstore(sdel + r, in ? gload(p.delta + stat) : 0.f);
  }
}

// Stores dk = scale * acc_k and dv = acc_v of the lane's two key positions pos[h] (in the
// sequence; those past its end are not stored).
template <class T, int kTiles>
SA_DEV void store_key_grads_at(const float (&acc_k)[kTiles][4], const float (&acc_v)[kTiles][4], const MutTensorRef& dk,
                               const MutTensorRef& dv, const KeyTile& kt, const int (&pos)[2], float scale, int D) {
  T* dk_row[2];
  T* dv_row[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const bool ok = pos[h] < kt.seq.len;
    dk_row[h] = ok ? row_ptr<T>(dk, kt.seq, pos[h], kt.g) : nullptr;
    dv_row[h] = ok ? row_ptr<T>(dv, kt.seq, pos[h], kt.g) : nullptr;
  }
  const float scale_k[2] = {scale, scale}, one[2] = {1.f, 1.f};
  store_acc_rows<T>(acc_k, dk_row, scale_k, kt.col0, D);
  store_acc_rows<T>(acc_v, dv_row, one, kt.col0, D);
}

// The same at the lane's two rows of the tile (key positions r0 + row[h]).
template <class T, int kTiles>
SA_DEV void store_key_grads(const float (&acc_k)[kTiles][4], const float (&acc_v)[kTiles][4], const MutTensorRef& dk,
                            const MutTensorRef& dv, const KeyTile& kt, const int (&row)[2], float scale, int D) {
  const int pos[2] = {kt.r0 + row[0], kt.r0 + row[1]};
  store_key_grads_at<T>(acc_k, acc_v, dk, dv, kt, pos, scale, D);
}

}  // namespace simplicial_attn::cuda
