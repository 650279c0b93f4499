// The query tile of a fwd / dq CTA and the loop both kernels run over it: which rows the CTA owns,
// which offsets u = i - k and k1/v1 positions j it visits, and how the k2/v2 regions and k1/v1
// blocks stream through shared memory. An architecture-specific main loop takes the same tile.
//
// Rows are (position, query head) pairs of one kv head g: sequence tiling (one head, consecutive
// positions) or, for GQA groups of >= 16 query heads, head packing (the heads of a group at a few
// positions, whose windows coincide). grid.x = (sequence, position tile), grid.y = (kv head, head
// block), grid.z = output columns (QueryTileParams in params.h).
#pragma once

#include "addressing.cuh"
#include "mask.cuh"
#include "seqlen.cuh"
#include "smem_tile.cuh"

namespace simplicial_attn::cuda {

// Row r of a (position, head) tile: position p0 + (r >> log2_heads), head (of the kv group)
// head0 + (r & (heads - 1)); `len` is the sequence's length.
struct RowTile {
  int p0, head0, log2_heads, group, len;
  SA_DEV int pos(int r) const { return p0 + (r >> log2_heads); }
  SA_DEV int head(int r) const { return head0 + (r & ((1 << log2_heads) - 1)); }
  SA_DEV bool valid(int r) const { return pos(r) < len && head(r) < group; }
};

// The query tile of a CTA and the bounds of its loop. The tile's positions are [rt.p0, p_last] of
// sequence `seq` (a tile past its end has none: past_end()). Visited: offsets u in [u_lo, u_hi]
// (some k = i - u in [0, len) and in the k2 band) and k1/v1 positions j in [j_lo, j_hi] (the union
// of the rows' windows, clipped to the sequence), inclusive.
struct QueryTile {
  SeqSpan seq;
  int g, positions;
  RowTile rt;
  int p_last, u_lo, u_hi, j_lo, j_hi;
  SA_DEV bool past_end() const { return rt.p0 >= seq.len; }
  // The query head (of all Hq) of row r.
  SA_DEV int query_head(int r, int group) const { return g * group + rt.head(r); }
};

template <int BM>
SA_DEV QueryTile query_tile(const QueryTileParams& p) {
  QueryTile t;
  const int heads = 1 << p.log2_heads;
  t.seq = seq_span(p.prob, p.N, block_x() / p.pos_tiles);
  const int len = t.seq.len;
  t.g = block_y() / p.head_blocks;
  t.positions = BM >> p.log2_heads;
  t.rt =
      RowTile{(block_x() % p.pos_tiles) * t.positions, (block_y() % p.head_blocks) * heads, p.log2_heads, p.group, len};
  t.p_last = imin(t.rt.p0 + t.positions - 1, len - 1);
  const Span u = offset_span(p.prob.band2, t.rt.p0, t.p_last, len);
  const Span j = band_union(p.prob.band1, t.rt.p0, t.p_last, len);
  t.u_lo = u.lo;
  t.u_hi = u.hi;
  t.j_lo = j.lo;
  t.j_hi = j.hi;
  SA_PATH(t.past_end(), "tile: past the sequence's end");
  SA_PATH(p.log2_heads > 0, "tile: head packing");
  SA_PATH(t.rt.head0 + heads > p.group, "tile: partial head block");
  SA_PATH(!t.past_end() && t.rt.p0 + t.positions > len, "tile: last partial position tile");
  SA_PATH(p.group > 1, "tile: GQA group > 1");
  return t;
}

// The tile of BM rows whose first position is p0 of sequence `seq` (kv head and head block from
// grid.y): each tile of the span a dq + dk2 + dv2 CTA walks (bwd_dqkv2_kernel.cuh). query_tile's
// computation with the position and sequence given; query_tile keeps its own copy because the
// forward's allocation at 254 of 255 registers is sensitive to its inlined form (written through
// this function, ptxas for sm_80 spilled 16 bytes at head dim 128).
template <int BM>
SA_DEV QueryTile query_tile_at(const QueryTileParams& p, const SeqSpan& seq, int p0) {
  QueryTile t;
  const int heads = 1 << p.log2_heads;
  t.seq = seq;
  const int len = t.seq.len;
  t.g = block_y() / p.head_blocks;
  t.positions = BM >> p.log2_heads;
  t.rt = RowTile{p0, (block_y() % p.head_blocks) * heads, p.log2_heads, p.group, len};
  t.p_last = imin(t.rt.p0 + t.positions - 1, len - 1);
  const Span u = offset_span(p.prob.band2, t.rt.p0, t.p_last, len);
  const Span j = band_union(p.prob.band1, t.rt.p0, t.p_last, len);
  t.u_lo = u.lo;
  t.u_hi = u.hi;
  t.j_lo = j.lo;
  t.j_hi = j.hi;
  SA_PATH(p.log2_heads > 0, "tile: head packing");
  SA_PATH(t.rt.head0 + heads > p.group, "tile: partial head block");
  SA_PATH(!t.past_end() && t.rt.p0 + t.positions > len, "tile: last partial position tile");
  SA_PATH(p.group > 1, "tile: GQA group > 1");
  return t;
}

// This lane's two rows of the tile: fragment rows g4 and g4 + 8 of its warp's 16 (common.cuh),
// their positions, whether they exist, and their k1/v1 windows [jmin, jmax]; a_row is the lane's
// ldmatrix row for A operands (row lane % 16 of the warp's 16).
struct LaneRows {
  int warp_row0, g4, a_row;
  int pos[2], jmin[2], jmax[2];
  bool ok[2];
  SA_DEV int row(int h) const { return warp_row0 + g4 + 8 * h; }
};

// row_warp: the warp's 16 rows (the warp itself, unless several warps share rows).
SA_DEV LaneRows lane_rows(const QueryTile& qt, const Band& band1, int row_warp = warp_id()) {
  LaneRows lr;
  lr.warp_row0 = 16 * row_warp;
  lr.g4 = lane_id() >> 2;
  lr.a_row = lr.warp_row0 + (lane_id() & 15);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = lr.row(h);
    lr.pos[h] = qt.rt.pos(r);
    lr.ok[h] = qt.rt.valid(r);
    const Span j = band_span(band1, lr.pos[h], qt.seq.len);
    lr.jmin[h] = j.lo;
    lr.jmax[h] = j.hi;
  }
  return lr;
}

// The lane's rows at offset u (u of the chunk whose region starts at position region_base): the
// region rows of k = pos - u for its ldmatrix row (a) and its two fragment rows (h), and whether
// that k2/v2 row exists (ok: the query row does and k lies in the sequence).
struct OffsetRows {
  int a, h[2];
  bool ok[2];
};

SA_DEV OffsetRows offset_rows(const QueryTile& qt, const LaneRows& lr, int u, int region_base) {
  OffsetRows o;
  o.a = qt.rt.pos(lr.a_row) - u - region_base;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int k = lr.pos[h] - u;
    o.h[h] = k - region_base;
    o.ok[h] = lr.ok[h] && k >= 0 && k < qt.seq.len;
    SA_PATH(lr.ok[h] && !o.ok[h], "mask: k outside the sequence");
  }
  return o;
}

// The rows of a query-shaped tensor (q, dout: [B, N, Hq, D]) the tile's row r reads: nullptr for
// a row outside the sequence or the group (a zero row of the shared tile).
template <class T>
SA_DEV auto query_rows(const TensorRef& t, const QueryTile& qt, int group) {
  return [=](int r) -> const T* {
    return qt.rt.valid(r) ? row_ptr<T>(t, qt.seq, qt.rt.pos(r), qt.query_head(r, group)) : nullptr;
  };
}

// The lane's two output rows of a query-shaped output (out, dq), nullptr for a row that does not
// exist.
template <class T>
SA_DEV void lane_out_rows(T* (&dst)[2], const MutTensorRef& t, const QueryTile& qt, const LaneRows& lr, int group) {
#pragma unroll
  for (int h = 0; h < 2; ++h)
    dst[h] = lr.ok[h] ? row_ptr<T>(t, qt.seq, lr.pos[h], qt.query_head(lr.row(h), group)) : nullptr;
}

// The k2/v2 regions and k1/v1 blocks a fwd / dq CTA streams through shared memory. Loop order:
// u-chunks of kChunkU offsets (outer), j-blocks of kBlockJ positions, u (inner, in the kernel).
// A u-chunk needs k2/v2 rows [p0 - u_hi, p_last - u_lo] (a "region", kRows + kChunkU - 1 rows at
// most) and k1/v1 blocks stream through a 2-stage cp.async pipeline, so each k1/v1 block is read
// from global memory once per u-chunk and reused for all its offsets. Iteration `it` is
// (chunk it / n_jblocks, block it % n_jblocks); its k1/v1 block lives in stage it % 2.
//
// Owners and barriers (B1 / B2 are the kernel's, at the start and end of an iteration):
//   sk2, sv2   the region of the current u-chunk: written at the first iteration of a chunk,
//              after B2 of the previous iteration (its last reader); read after B1.
//   stage s    the k1/v1 block of iteration it lives in stage it % 2; it is written during
//              iteration it - 1 (after B2 of iteration it - 2, the last reader of that stage)
//              and read after B1 of iteration it.
template <class T, class Cfg>
struct QueryStream {
  static constexpr int DP = Cfg::kHeadDim, BJ = Cfg::kBlockJ, CU = Cfg::kChunkU;
  static constexpr int kThreads = Cfg::kThreads;
  using TileT = Tile<T, DP>;

  const QueryTileParams& p;
  const QueryTile& qt;
  T* k1_stages;
  T* v1_stages;
  TileT sk2, sv2;
  int n_jblocks, n_iters;

  // region_rows: the rows the v2 region buffer holds, at most Cfg::kRegionRows, which the k2
  // buffer always holds (so the addresses of both are compile-time offsets); the launch's dynamic
  // shared memory ends with that buffer.
  SA_DEV QueryStream(const QueryTileParams& params, const QueryTile& tile, SmemCarver& carver,
                     int region_rows = Cfg::kRegionRows)
      : p(params),
        qt(tile),
        k1_stages(carver.take<T>(Cfg::kStages * BJ * TileT::kLd)),
        v1_stages(carver.take<T>(Cfg::kStages * BJ * TileT::kLd)),
        sk2{carver.take<T>(Cfg::kRegionRows * TileT::kLd)},
        sv2{carver.take<T>(region_rows * TileT::kLd)},
        n_jblocks(ceil_div(tile.j_hi - tile.j_lo + 1, BJ)),
        n_iters(n_jblocks * ceil_div(tile.u_hi - tile.u_lo + 1, CU)) {}

  SA_DEV TileT sk1(int stage) const { return TileT{k1_stages + stage * BJ * TileT::kLd}; }
  SA_DEV TileT sv1(int stage) const { return TileT{v1_stages + stage * BJ * TileT::kLd}; }
  // Chunk c covers offsets [chunk_lo(c), chunk_hi(c)]; its region holds the k2/v2 rows at
  // positions region_base(c) + r, r < positions + (chunk length) - 1.
  SA_DEV int chunk_lo(int c) const { return qt.u_lo + c * CU; }
  SA_DEV int chunk_hi(int c) const { return imin(qt.u_lo + c * CU + CU - 1, qt.u_hi); }
  SA_DEV int region_base(int c) const { return qt.rt.p0 - chunk_hi(c); }
  // The first k1/v1 position of iteration it's block.
  SA_DEV int j0(int it) const { return qt.j_lo + (it % n_jblocks) * BJ; }

  SA_DEV void load_region(int c) const {
    const int rows = qt.positions + chunk_hi(c) - chunk_lo(c);
    load_row_pair<kThreads>(sk2, sv2, p.k2, p.v2, qt.seq, qt.g, region_base(c), rows, Span{0, qt.seq.len - 1}, p.D,
                            p.vec);
  }
  SA_DEV void load_kv1(int it, int stage) const {
    const int j_first = j0(it);
    load_row_pair<kThreads>(sk1(stage), sv1(stage), p.k1, p.v1, qt.seq, qt.g, j_first, BJ, Span{j_first, qt.j_hi}, p.D,
                            p.vec);
  }

  // The prologue's loads: iteration 0's k1/v1 block, in one cp.async group with whatever the
  // kernel loaded before (its query rows).
  SA_DEV void start() const {
    load_kv1(0, 0);
    cp_async_commit();
  }
  // Before iteration it's B1: issues the region of a new chunk and the prefetch of iteration
  // it + 1, and waits for everything but that prefetch.
  SA_DEV void load_and_wait(int it) const {
    const int c = it / n_jblocks;
    SA_PATH(it % n_jblocks != 0, "pipeline: next j block");
    if (it % n_jblocks == 0) {
      SA_PATH(c > 0, "pipeline: next u chunk");
      load_region(c);
      cp_async_commit();
    }
    if (it + 1 < n_iters) {
      SA_PATH(true, "pipeline: prefetch");
      load_kv1(it + 1, (it + 1) % Cfg::kStages);
      cp_async_commit();
      cp_async_wait<1>();  // all groups but the prefetch just issued are complete
    } else {
      cp_async_wait<0>();
    }
  }
};

}  // namespace simplicial_attn::cuda
