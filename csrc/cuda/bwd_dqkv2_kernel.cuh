// Backward, dq + dk2 + dv2 in one pass over the query tiles (issue 24), trilinear logits, head dims
// <= 128, in two forms (DqKv2Config's kOneRow): head packing of >= 16 query heads per position
// (each warp's 16 rows at one position, as dq's and the forward's kOneRow), or sequence tiles of
// one head and 32 positions where Hq == Hkv (see "Sequence tiles" below). Per tile of (position,
// head) rows and per offset u (k = i - u), with dA = P (dP - Delta) (CONTRACT §1):
//
//     S  = (q ⊙ k2[i - u]) @ k1_blk^T        P = exp(scale * S - lse - lse_lo)   (numerics.cuh)
//     dP = (dout ⊙ v2[i - u]) @ v1_blk^T     over the j blocks of the window, then
//     x += dA @ k1_blk,  y += P @ v1_blk     (x, y complete for this u)
//     dq      += x ⊙ k2[i - u]                                   rows owned: stored once per tile
//     dk2[k]  += sum over the tile's heads of x ⊙ q              (times scale in the reduce)
//     dv2[k]  += sum over the tile's heads of y ⊙ dout
//
// Four tensor-core products per (u, j block) where dq + dkv2 took six (S and dP twice). Loop
// order u outer, j inner: x and y of one u must be complete before their head sums, so the k1/v1
// window streams through the cp.async stages once per u (the k2 / v2 row of a warp's position at
// u rides in the same cp.async group as the u's first block).
//
// Registers: x, y and dq of 16 rows x 128 columns would be 3 x 64 fp32 a lane; as in the dkv
// kernels two column warps share each 16 rows (kColWarps = 2), each computing S / dP for its half
// of the j block, exchanging dA / P as mma A fragments through shared memory
// (fragments.cuh block_step_operands) and accumulating x, y for its half of the columns; dq, added
// to once per u, lives in shared memory (sdq, fp32, each element one lane's), not in registers
// (ptxas for sm_86 / sm_90 spills with a third accumulator at 128).
//
// Deterministic without atomics. The head sums of one u are summed over the warp's 16 rows by a
// reduce-scatter of shuffles (head_sum), over the CTA's row warps at one position through shared
// memory (sred), then added into float32 scratch (read-modify-write). A CTA owns a SPAN of
// span_tiles consecutive tiles of one sequence (p.span_tiles * positions positions, one tile after
// the other), so it touches rows k in [P0 - L2, P0 + S - 1 + R2] only. It adds into layer
// span % layers of the scratch, at the rows' absolute positions, with layers = 1 + ceil((L2 + R2)
// / S) (capped by the spans): the rows of one layer's CTAs are disjoint. Within a packed CTA one
// thread owns each scratch column (static_assert below), and B2 orders one step's stores before
// the next step's loads anyway (sequence tiles: below). dkv2_reduce_kernel then sums the layers
// and head blocks in a fixed order. Scratch: 2 x layers x (B * N) x Hkv x head_blocks x D
// float32, zeroed by the caller; layers <= 4 by the plan (launch_bwd.cuh plan_dqkv2), head_blocks
// = ceil(group / 32).
//
// Sequence tiles (Hq == Hkv: one head, rows = 32 consecutive positions). Each row has its own k =
// pos - u, so S / dP read a k2 / v2 row per row (logits_and_dp's ldmatrix form) and there are no
// head sums: a row's x ⊙ q and y ⊙ dout are scratch row k's whole additions from this u. They go
// from the lane's registers into the scratch (add_row_partials): at one u the rows' k differ and
// the column warps' columns differ, so no two threads touch one element; scratch row k is added
// to by row k + u at each offset u in turn, the u's barriers between (the emulator checks such
// turns on the scratch, an ordered read-modify-write buffer), so the order of the adds is fixed.
// The k2 / v2 rows live in a ring of 33 rows (row k in slot k mod 33): offsets u and u + 1 share
// 31 of their 32 rows, so each u's epilogue loads the next u's one new row (into the slot offset
// u - 1's last row held) and a tile's first u all 32 (after the previous tile's last [R]).
#pragma once

#include "fragments.cuh"
#include "logit_operand.cuh"
#include "numerics.cuh"
#include "query_tile.cuh"

namespace simplicial_attn::cuda {

// kOneRow: head packing of >= 16 heads (each warp's 16 rows at one position, one k2 / v2 row a
// warp); otherwise sequence tiles (one head, 32 consecutive positions: a k2 / v2 row per row).
template <int DP, bool kOneRow>
struct DqKv2Config {
  static_assert(DP <= 128, "the fused kernel's accumulators are sized for head dims <= 128");
  static constexpr int kHeadDim = DP;
  static constexpr bool kPacked = kOneRow;
  static constexpr int kRows = 32;  // (position, head) rows: 1 position of 32 heads, 2 of 16, or 32 of 1
  static constexpr int kRowWarps = kRows / 16;
  static constexpr int kColWarps = 2;
  static constexpr int kWarps = kRowWarps * kColWarps;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockJ = 32;
  static constexpr int kWarpJ = kBlockJ / kColWarps;  // j positions per warp in S / dP
  static constexpr int kWarpCols = DP / kColWarps;    // x, y, dq columns per warp
  static constexpr int kOutCols = DP;                 // plan_query_tiles: no split over grid.z
  static constexpr int kStages = 2;
  static constexpr int kPositions = kOneRow ? kRows / 16 : kRows;  // positions per tile, at most
  // k2 / v2 rows, each. Packed: two buffers of kPositions rows (offset u's, and the next u's loaded
  // under u's epilogue). Sequence tiles: a ring of kPositions + 1 rows, row k in slot k mod kRing:
  // offsets u and u + 1 share all rows but one, so the next u loads one row into the slot that
  // held offset u - 1's last (and a tile's first u all kPositions rows, after the previous tile).
  static constexpr int kKv2Rows = kOneRow ? 2 * kPositions : kPositions + 1;
  // sred: the head sums of one u per row warp (packed only; sequence tiles add from registers).
  static constexpr int kRedFloats = kOneRow ? kRowWarps * 2 * DP : 0;
  // sx: per row warp and 16 j positions, dA and P as A fragments (4 x 32 bits per lane).
  static constexpr int kXWords = kRowWarps * (kBlockJ / 16) * 2 * 32 * 4;
  static constexpr int kRowBytes = (DP + 8) * 2;
  // q and dout: one buffer each at 128, where the next tile's load waits for the tile's end (76
  // KiB in all, so two CTAs share an sm_80 SM); two at 64, the next tile's loaded at a tile's start
  // (one buffer there made ptxas spill 8 bytes).
  static constexpr int kQueryBufs = DP == 128 ? 1 : 2;
  static constexpr int kDqLd = DP + 8;  // sdq's row stride in floats (fewer bank conflicts than DP)
  // The pair operands q ⊙ k2 and dout ⊙ v2 held as A fragments over an offset's j loop (64
  // registers at 128) instead of rebuilt from shared memory every step. kHoldPairs: at 128,
  // except for sm_86 / sm_90 (common.cuh), where ptxas spills 12-16 bytes with them (packed) or
  // 24-32 (sequence tiles). At 64 the packed tiles spill 16-20 bytes on sm_80 (one q / dout buffer
  // or two) and rebuild; the sequence tiles spill on no arch and hold there everywhere
  // (kHoldOnAllArchs). The kernel's kHold; the emulator runs both forms (packed 64 rebuilds).
  static constexpr bool kHoldPairs = DP == 128;
  static constexpr bool kHoldOnAllArchs = DP == 64 && !kOneRow;
  // q and dout, the k1/v1 stages, the k2/v2 rows (kKv2Rows each), sx, sred (packed), sdq.
  static constexpr int kSmemBytes = kRowBytes * (2 * kQueryBufs * kRows + 2 * kStages * kBlockJ + 2 * kKv2Rows) +
                                    kXWords * 4 + kRedFloats * 4 + kRows * kDqLd * 4;
  static_assert(kWarpJ == 16 && kWarpCols % 32 == 0, "head_sum and the exchange take these shapes");
  static_assert(2 * DP % kThreads == 0, "packed: one thread owns each scratch column of a position");
  static_assert(kSmemBytes <= kSmemLimit, "dq/dk2/dv2 tiles exceed the shared memory of an sm_86 block");
};

// The dk2 / dv2 partial sums: [2 (dk2, dv2)][layers][rows = B * N][Hkv][head_blocks][D] float32.
struct Dkv2Scratch {
  float* base;
  int64_t rows;
  int layers, Hkv, head_blocks, D;
  // The row of position pos of sequence s (rows = B * N: batch b's rows start at b * N; a packed
  // sequence's at its row0).
  SA_DEV int64_t row_of(const SeqSpan& s, int N, int pos) const {
    return static_cast<int64_t>(s.batch) * N + s.row0 + pos;
  }
  SA_DEV float* at(int which, int layer, int64_t row, int g, int hb, int col) const {
    return base + ((((static_cast<int64_t>(which) * layers + layer) * rows + row) * Hkv + g) * head_blocks + hb) * D +
           col;
  }
};

struct DqKv2KernelParams : QueryTileParams, GradInputs {
  MutTensorRef dq;
  Dkv2Scratch scratch;
  int span_tiles;  // position tiles per CTA (pos_tiles counts spans per sequence)
};

// acc += a @ b over output columns col0 + 8 nt (nt < kTiles): a the A fragments of kK 16-deep
// steps (dA or P of a block), b a k-major tile (row = j, e.g. k1[j][d]).
template <class T, int DP, int kK, int kTiles>
SA_DEV void add_products(float (&acc)[kTiles][4], const uint32_t (&a)[kK][4], const Tile<T, DP>& b,
                         int col0 SA_SITE_ARG) {
#pragma unroll
  for (int nt = 0; nt < kTiles; nt += 2) {
#pragma unroll
    for (int kk = 0; kk < kK; ++kk) {
      uint32_t b0[2], b1[2];
      ldsm_b_kmajor(b0, b1, b, kk * 16, col0 + nt * 8 SA_SITE_NEXT);
      mma_acc<T>(acc[nt], a[kk], b0 SA_SITE_NEXT);
      mma_acc<T>(acc[nt + 1], a[kk], b1 SA_SITE_NEXT);
    }
  }
}

// The sum over a warp's 16 rows of t ⊙ w (t C fragments of columns col0 + 8 nt, w the shared rows
// of the lane's two fragment rows, element-wise in fp32): the head sum of a warp whose rows are
// heads of one position. A reduce-scatter over the 8 row groups g = lane / 4 (lane bits 2-4): each
// level keeps the half of the values its lane bit selects and adds the partner's copy of it, so 3
// levels leave each lane V / 8 of the V = 2 kTiles column sums, V - 2 shuffles instead of 3 V.
// out[m] is flattened index i = (V / 8) g + m, column col0 + 8 (i / 2) + 2 (lane % 4) + i % 2
// (head_sum_col).
template <class T, int kTiles>
SA_DEV void head_sum(float (&out)[kTiles / 4], const float (&t)[kTiles][4], const T* const (&w)[2],
                     int col0 SA_SITE_ARG) {
  constexpr int V = 2 * kTiles;
  static_assert(V % 8 == 0, "3 levels of halving");
  float v[V];
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
    const float2 w0 = sload_pair(w[0], col0 + nt * 8 + frag_col(0));
    const float2 w1 = sload_pair(w[1], col0 + nt * 8 + frag_col(2));
    v[2 * nt] = t[nt][0] * w0.x + t[nt][2] * w1.x;
    v[2 * nt + 1] = t[nt][1] * w0.y + t[nt][3] * w1.y;
  }
  const int l = lane_id();
  float v1[V / 2], v2[V / 4];
#pragma unroll
  for (int i = 0; i < V / 2; ++i) {
    const bool hi = (l & 16) != 0;
    v1[i] = (hi ? v[i + V / 2] : v[i]) + shuffle_xor(hi ? v[i] : v[i + V / 2], 16 SA_SITE_NEXT);
  }
#pragma unroll
  for (int i = 0; i < V / 4; ++i) {
    const bool hi = (l & 8) != 0;
    v2[i] = (hi ? v1[i + V / 4] : v1[i]) + shuffle_xor(hi ? v1[i] : v1[i + V / 4], 8 SA_SITE_NEXT);
  }
#pragma unroll
  for (int i = 0; i < V / 8; ++i) {
    const bool hi = (l & 4) != 0;
    out[i] = (hi ? v2[i + V / 8] : v2[i]) + shuffle_xor(hi ? v2[i] : v2[i + V / 8], 4 SA_SITE_NEXT);
  }
}
template <int kTiles>
SA_DEV int head_sum_col(int m, int col0) {
  const int i = (kTiles / 4) * (lane_id() >> 2) + m;
  return col0 + 8 * (i >> 1) + frag_col(i & 1);
}

// Rows [first, first + kRows) of head h of a [B, N, H, D] tensor into a shared tile by 16-byte
// cp.async, rows past `last` and columns >= D zero: the fused pass's k1 / v1 block, loaded every
// step, with its address arithmetic hoisted (load_tile's per chunk). Thread t copies chunk
// t % kChunks of rows t / kChunks + m * kStride. Needs the vec conditions (D % 8 == 0, aligned rows).
template <int kThreads, int kRows, class T, int DP>
SA_DEV void load_rows_async(const Tile<T, DP>& dst, const TensorRef& t, const SeqSpan& seq, int h, int first, int last,
                            int D) {
  constexpr int kChunks = DP / 8, kStride = kThreads / kChunks;
  static_assert(kThreads % kChunks == 0 && kRows % kStride == 0, "whole rows per pass of the CTA");
  // (opaque: the per-thread addresses of both tensors, hoisted out of the step loop, would hold 64-bit
  // registers across it)
  const int tid = opaque(thread_id()), c = (tid % kChunks) * 8, r0 = tid / kChunks;
  const T* const base = row_ptr<T>(t, seq, 0, h) + c;  // position 0's row: every row is base + position * sn
#pragma unroll
  for (int m = 0; m < kRows / kStride; ++m) {
    const int pos = first + r0 + m * kStride;
    const bool valid = pos <= last && c < D;
    SA_PATH(!valid, "load: k1/v1 block tail");
    cp_async_16(dst.row(r0 + m * kStride) + c, valid ? static_cast<const void*>(base + pos * t.sn) : t.ptr, valid);
  }
}

// Sequence tiles (one head, a position per row): scratch row k = pos - u of each of the lane's two
// fragment rows h += t ⊙ w over the lane's columns col0 + 8 nt + frag_col(0) + {0, 1} (< D), for
// (t, w) = (x, q) (dk2's partial, `which` 0) and (y, dout) (dv2's, 1); rows whose k lies outside the
// sequence (ok false) or that do not exist add nothing. A row's scratch values are all loaded
// before any is stored, so their latencies overlap (stores first would order each load after
// the previous store, which the compiler cannot prove disjoint).
template <class T, int kTiles>
SA_DEV void add_row_partials(const float (&x)[kTiles][4], const float (&y)[kTiles][4], const T* const (&q)[2],
                             const T* const (&dout)[2], const bool (&ok)[2], const LaneRows& lr, const QueryTile& qt,
                             const Dkv2Scratch& sc, int layer, int hb, int col0, int u, int D, int N) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (!ok[h]) continue;
    const int64_t row = sc.row_of(qt.seq, N, lr.pos[h] - u);
    float* const dk = sc.at(0, layer, row, qt.g, hb, 0);
    float* const dv = sc.at(1, layer, row, qt.g, hb, 0);
    float old_k[kTiles][2], old_v[kTiles][2];
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = col0 + nt * 8 + frag_col(0) + e;
        old_k[nt][e] = c < D ? gload(dk + c) : 0.f;
        old_v[nt][e] = c < D ? gload(dv + c) : 0.f;
      }
    }
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt) {
      const int c = col0 + nt * 8 + frag_col(0);
      const float2 wq = sload_pair(q[h], c), wd = sload_pair(dout[h], c);
      if (c < D) {
        gstore(dk + c, old_k[nt][0] + x[nt][2 * h] * wq.x);
        gstore(dv + c, old_v[nt][0] + y[nt][2 * h] * wd.x);
      }
      if (c + 1 < D) {
        gstore(dk + c + 1, old_k[nt][1] + x[nt][2 * h + 1] * wq.y);
        gstore(dv + c + 1, old_v[nt][1] + y[nt][2 * h + 1] * wd.y);
      }
    }
  }
}

template <class T, class Cfg>
SA_GLOBAL(Cfg::kThreads)
dqkv2_kernel(const DqKv2KernelParams p) {
  constexpr int DP = Cfg::kHeadDim, BM = Cfg::kRows, BJ = Cfg::kBlockJ, WJ = Cfg::kWarpJ, WC = Cfg::kWarpCols;
  constexpr int kThreads = Cfg::kThreads, kRowWarps = Cfg::kRowWarps;
  using TileT = Tile<T, DP>;
  constexpr bool kHold = Cfg::kHoldOnAllArchs || (Cfg::kHoldPairs && !kSm86Device && !kSm90Device);
  constexpr bool kOneRow = Cfg::kPacked;

  // ---- The CTA's span: tiles ti < n_tiles of positions span_p0 + ti * positions (query_tile_at).
  const SeqSpan seq = seq_span(p.prob, p.N, block_x() / p.pos_tiles);
  const int span = block_x() % p.pos_tiles, positions = BM >> p.log2_heads;
  const int span_p0 = span * p.span_tiles * positions;
  SA_PATH(span_p0 >= seq.len, "tile: past the sequence's end");
  if (span_p0 >= seq.len) return;  // the whole CTA, before any barrier
  const int n_tiles = imin(p.span_tiles, ceil_div(seq.len - span_p0, positions));
  const int layer = span % p.scratch.layers, hb = block_y() % p.head_blocks, D = p.D;
  SA_PATH(layer > 0, "scratch: layer > 0");
  const auto tile_at = [&](int ti) { return query_tile_at<BM>(p, seq, span_p0 + ti * positions); };
  const auto n_jblocks = [&](const QueryTile& t) { return ceil_div(t.j_hi - t.j_lo + 1, BJ); };

  // ---- Shared memory. Owners and barriers (B1 / B2: start and end of a step (tile, u, j block)):
  //   sq, sdo buffer ti % kQueryBufs  tile ti's rows, read after B1. One buffer: loaded after
  //                            tile ti - 1's last [R] (its last readers, the steps' and the head
  //                            sums, come before it). Two: loaded at the start of tile ti - 1 (the
  //                            buffer's last readers, tile ti - 2's, came before its last [R]).
  //   k2/v2 rows buffer nu % 2 the rows of the nu-th offset u the CTA visits: loaded after the j
  //                            loop of offset nu - 1 (its readers, offset nu - 2's steps and
  //                            epilogue, precede that u's B1s), read after B1 and in nu's epilogue.
  //                            Sequence tiles: the ring, row k in slot k % kRing; offset u + 1's
  //                            new row loaded after u's j loop (its slot's last readers, offset
  //                            u - 1's, precede u's B1s), a tile's rows after the last u's [R].
  //   k1/v1 stage it % 2       filled during step it - 1 (after B2 of step it - 2, its last
  //                            reader), read after B1 of step it.
  //   sx                       dA / P of one step, written by each column warp for its j
  //                            positions, read by the warps of the same rows after [X]; written
  //                            again after B1 of the next step.
  //   sred                     (packed) head sums of one u per row warp: written before [R], read
  //                            after it; written again after the next u's first B1.
  //   sdq                      the tile's dq accumulator (fp32): each element read and written by
  //                            the one lane whose C fragment holds it (no barrier).
  SmemCarver carver{dynamic_smem()};
  constexpr int kQueryBufs = Cfg::kQueryBufs;
  T* const q_bufs = carver.take<T>(kQueryBufs * BM * TileT::kLd);
  T* const do_bufs = carver.take<T>(kQueryBufs * BM * TileT::kLd);
  T* const k1_stages = carver.take<T>(Cfg::kStages * BJ * TileT::kLd);
  T* const v1_stages = carver.take<T>(Cfg::kStages * BJ * TileT::kLd);
  T* const k2_bufs = carver.take<T>(Cfg::kKv2Rows * TileT::kLd);
  T* const v2_bufs = carver.take<T>(Cfg::kKv2Rows * TileT::kLd);
  uint4* const sx = carver.take<uint4>(Cfg::kXWords / 4);
  float* const sred = carver.take<float>(Cfg::kRedFloats);
  float* const sdq = carver.take<float>(BM * Cfg::kDqLd);
  const auto sq = [&](int b) { return TileT{q_bufs + b * BM * TileT::kLd}; };
  const auto sdo = [&](int b) { return TileT{do_bufs + b * BM * TileT::kLd}; };
  const auto sk1 = [&](int stage) { return TileT{k1_stages + stage * BJ * TileT::kLd}; };
  const auto sv1 = [&](int stage) { return TileT{v1_stages + stage * BJ * TileT::kLd}; };
  const auto sk2 = [&](int b) { return TileT{k2_bufs + b * Cfg::kPositions * TileT::kLd}; };
  const auto sv2 = [&](int b) { return TileT{v2_bufs + b * Cfg::kPositions * TileT::kLd}; };
  // Sequence tiles: the ring's slot of row k (k may be negative: rows before the sequence, zero).
  constexpr int kRing = Cfg::kKv2Rows;
  const auto slot = [](int k) { return (k % kRing + kRing) % kRing; };

  // The loads of the loop (the caller commits the cp.async group): a tile's q / dout rows, the k2 /
  // v2 rows of the tile at position p0 and offset u (row r of the buffer: k of position p0 + r) and
  // the k1/v1 block of positions [j_first, j_first + BJ) clipped at j_hi (every step's: its
  // cp.async form with the address arithmetic hoisted, load_rows_async).
  const int g = block_y() / p.head_blocks;
  const auto load_queries = [&](const QueryTile& t, int buf) {
    load_tile<kThreads>(sq(buf), BM, D, p.vec, p.q.ptr, query_rows<T>(p.q, t, p.group));
    load_tile<kThreads>(sdo(buf), BM, D, p.vec, p.dout.ptr, query_rows<T>(p.dout, t, p.group));
  };
  const auto load_kv2 = [&](int p0, int u, int buf) {
    load_row_pair<kThreads>(sk2(buf), sv2(buf), p.k2, p.v2, seq, g, p0 - u, positions, Span{0, seq.len - 1}, D, p.vec);
  };
  // Sequence tiles: k2 / v2 rows [first, first + count) into their ring slots (count <= kRing), in
  // the two runs of consecutive slots they take.
  const auto load_ring = [&](int first, int count) {
    const int s0 = slot(first), run = imin(count, kRing - s0);
    const Span in_seq{0, seq.len - 1};
    load_row_pair<kThreads>(TileT{k2_bufs + s0 * TileT::kLd}, TileT{v2_bufs + s0 * TileT::kLd}, p.k2, p.v2, seq, g,
                            first, run, in_seq, D, p.vec);
    SA_PATH(run < count, "ring: rows wrap around");
    if (run < count)
      load_row_pair<kThreads>(sk2(0), sv2(0), p.k2, p.v2, seq, g, first + run, count - run, in_seq, D, p.vec);
  };
  const auto load_kv1 = [&](int j_first, int j_hi, int stage) {
    SA_PATH(p.vec, "load: k1/v1 block by cp.async");
    if (p.vec) {
      load_rows_async<kThreads, BJ>(sk1(stage), p.k1, seq, g, j_first, j_hi, D);
      load_rows_async<kThreads, BJ>(sv1(stage), p.v1, seq, g, j_first, j_hi, D);
    } else {
      load_row_pair<kThreads>(sk1(stage), sv1(stage), p.k1, p.v1, seq, g, j_first, BJ, Span{j_first, j_hi}, D, false);
    }
  };

  // ---- This warp: 16 rows (row_warp) and, of the j block and of the columns, its half.
  const int row_warp = warp_id() % kRowWarps, col_warp = warp_id() / kRowWarps;
  const int j0w = col_warp * WJ, col0w = col_warp * WC;
  SA_PATH(col_warp > 0, "output: second column warp");
  SA_PATH(kOneRow, "tile: one position per warp");
  SA_PATH(!kOneRow, "tile: a position per row");
  const auto x_slot = [&](int kk, int which) {
    return sx + ((row_warp * (BJ / 16) + kk) * 2 + which) * 32 + lane_id();
  };

  float x[WC / 8][4], y[WC / 8][4];
  zero_acc(x);
  zero_acc(y);
  // The lane's element pair (fragment row h, columns col0w + 8 n8 + frag_col(0) + {0, 1}) of sdq.
  const auto dq_pair = [&](const LaneRows& lr, int h, int n8) {
    return reinterpret_cast<float2*>(sdq + lr.row(h) * Cfg::kDqLd + col0w + n8 * 8 + frag_col(0));
  };

  // Loops: tiles of the span, offsets u of a tile, k1/v1 blocks of the tile's j window (one step
  // each; it counts the steps, nu the offsets).
  {
    const QueryTile t0 = tile_at(0);
    load_queries(t0, 0);
    if constexpr (kOneRow) {
      load_kv2(t0.rt.p0, t0.u_lo, 0);
    } else {
      load_ring(t0.rt.p0 - t0.u_lo, positions);
    }
    load_kv1(t0.j_lo, t0.j_hi, 0);
    cp_async_commit();
  }
  int it = 0, nu = 0;
#pragma unroll 1
  for (int ti = 0; ti < n_tiles; ++ti) {
    SA_PATH(ti > 0, "span: next tile");
    const QueryTile qt = tile_at(ti);
    const bool last_tile = ti + 1 == n_tiles;
    const LaneRows lr = lane_rows(qt, p.prob.band1, row_warp);
    float lse[2], lse_lo[2], delta[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // (opaque: 64-bit induction variables of these addresses across the tile loop would spill at 64)
      const int64_t stat = stat_index(seq, p.Hq, p.N, qt.query_head(lr.row(h), p.group), opaque(lr.pos[h]));
      lse[h] = lr.ok[h] ? gload(p.lse + stat) : 0.f;
      lse_lo[h] = lr.ok[h] ? gload(p.lse_lo + stat) : 0.f;
      delta[h] = lr.ok[h] ? gload(p.delta + stat) : 0.f;
    }
    const int nj = n_jblocks(qt);
    if constexpr (kQueryBufs == 2) {
      if (!last_tile) {
        // The next tile's q / dout into the other buffer.
        load_queries(tile_at(ti + 1), (ti + 1) & 1);
        cp_async_commit();
      }
    }
    const TileT tq = sq(ti % kQueryBufs), tdo = sdo(ti % kQueryBufs);
    const T* const q_h[2] = {tq.row(lr.row(0)), tq.row(lr.row(1))};
    const T* const do_h[2] = {tdo.row(lr.row(0)), tdo.row(lr.row(1))};

#pragma unroll 1
    for (int u = qt.u_lo; u <= qt.u_hi; ++u, ++nu) {
      SA_PATH(u > qt.u_lo, "pipeline: next u");
      // The k2 / v2 rows of the lane's ldmatrix row (a) and fragment rows (h) at this u. Packed:
      // buffer nu % 2, row k - (p0 - u); the warp's 16 rows share a position, so a, h[0] and h[1]
      // coincide. Sequence tiles: the ring's slots.
      const TileT tk2 = sk2(kOneRow ? nu & 1 : 0), tv2 = sv2(kOneRow ? nu & 1 : 0);
      const OffsetRows o = offset_rows(qt, lr, u, kOneRow ? qt.rt.p0 - u : 0);
      const int a_kv2 = kOneRow ? o.a : slot(o.a);
      const T* const k2_row = tk2.row(a_kv2);
      const T* const k2_h[2] = {kOneRow ? k2_row : tk2.row(slot(o.h[0])), kOneRow ? k2_row : tk2.row(slot(o.h[1]))};
      // kHold: the pair operands q ⊙ k2 and dout ⊙ v2 as A fragments for this u's whole j
      // loop, built once its k2 / v2 rows (and the tile's q / dout) are visible: [P]. Otherwise
      // each step rebuilds them from logit_rows.
      [[maybe_unused]] uint32_t a_held[DP / 16][4], e_held[DP / 16][4];
      [[maybe_unused]] const LogitRows<T> logit_rows{false, D, tq.row(lr.a_row), k2_row, q_h, k2_h};
      if constexpr (kHold) {
        SA_PATH(true, "operands: pairs held over the j loop");
        cp_async_wait<0>();
        cta_sync();  // [P]
        pair_operands<T, DP, kOneRow>(a_held, e_held, tq.row(lr.a_row), k2_row, tdo.row(lr.a_row), tv2.row(a_kv2));
      }

#pragma unroll 1
      for (int jb = 0; jb < nj; ++jb, ++it) {
        const int stage = it % Cfg::kStages;
        SA_PATH(jb > 0, "pipeline: next j block");
        // Prefetch the next step's k1/v1 block: this u's next, the next u's first or the next tile's.
        const bool next_in_tile = jb + 1 < nj || u < qt.u_hi;
        if (next_in_tile || !last_tile) {
          SA_PATH(true, "pipeline: prefetch");
          if (next_in_tile) {
            load_kv1(jb + 1 < nj ? qt.j_lo + (jb + 1) * BJ : qt.j_lo, qt.j_hi, (it + 1) % Cfg::kStages);
          } else {
            const QueryTile nt = tile_at(ti + 1);  // (recomputed here: registers are scarce at 128)
            load_kv1(nt.j_lo, nt.j_hi, (it + 1) % Cfg::kStages);
          }
          cp_async_commit();
          cp_async_wait<1>();  // all groups but the prefetch just issued are complete
        } else {
          cp_async_wait<0>();
        }
        cta_sync();  // B1: this step's q / dout, k2 / v2 rows and k1/v1 block are visible

        // S = (q ⊙ k2) @ k1_blk^T and dP = (dout ⊙ v2) @ v1_blk^T over this warp's j positions, k2
        // and v2 from the warp's one row (kOneRow).
        const int j0 = qt.j_lo + jb * BJ;
        float sp[WJ / 8][4], dp[WJ / 8][4];
        const TileT k1w{sk1(stage).row(j0w)}, v1w{sv1(stage).row(j0w)};
        if constexpr (kHold) {
          held_logits_and_dp<T, DP, WJ>(sp, dp, a_held, e_held, k1w, v1w);
        } else {
          SA_PATH(true, "operands: pairs rebuilt every step");
          logits_and_dp<T, DP, WJ, kOneRow>(sp, dp, logit_rows, tdo.row(lr.a_row), tv2.row(a_kv2), k1w, v1w);
        }

        // P and dA = P (dP - Delta), zero outside the (j, k) window; P overwrites S, dA dP. The
        // window test as offsets of this step's first column (j_first - jmin, jmax - j_first) plus
        // a constant per element: bounds per element hoisted out of the loop (jmin - c) would take
        // 16 registers.
        const int j_first = j0 + j0w + frag_col(0);
        const int past_min[2] = {j_first - lr.jmin[0], j_first - lr.jmin[1]};
        const int to_max[2] = {lr.jmax[0] - j_first, lr.jmax[1] - j_first};
#pragma unroll
        for (int n8 = 0; n8 < WJ / 8; ++n8) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int h = i >> 1, c = n8 * 8 + (i & 1);  // j = j_first + c
            const bool in = o.ok[h] && past_min[h] + c >= 0 && to_max[h] - c >= 0;
            SA_PATH(o.ok[h] && !in, "mask: j outside the window");
            sp[n8][i] = in ? prob_from_lse(logit(sp[n8][i], p.prob.scale), lse[h], lse_lo[h]) : 0.f;
            dp[n8][i] = sp[n8][i] * (dp[n8][i] - delta[h]);
          }
        }

        // x += dA @ k1_blk, y += P @ v1_blk over this warp's columns, dA and P of the whole block
        // as A operands (the other column warp's j positions through sx, [X]).
        uint32_t da[BJ / 16][4], pa[BJ / 16][4];
        block_step_operands<T, WJ / 16, BJ / 16>(da, pa, dp, sp, j0w / 16, x_slot);
        add_products<T>(x, da, sk1(stage), col0w);
        add_products<T>(y, pa, sv1(stage), col0w);
        cta_sync();  // B2: every warp is done with this stage and sx
      }

      // The next offset's k2 / v2 rows (this tile's next u or the next tile's first), under the
      // epilogue below. Sequence tiles: this tile's next u's one new row, k = p0 - (u + 1) (its
      // slot held k + kRing, offset u - 1's last row at most, read before this u's B1); the next
      // tile's rows wait for this u's [R] (below the loop).
      if constexpr (kOneRow) {
        if (u < qt.u_hi || !last_tile) {
          if (u < qt.u_hi) {
            load_kv2(qt.rt.p0, u + 1, (nu + 1) & 1);
          } else {
            const QueryTile nt = tile_at(ti + 1);
            load_kv2(nt.rt.p0, nt.u_lo, (nu + 1) & 1);
          }
          cp_async_commit();
        }
      } else if (u < qt.u_hi) {
        load_ring(qt.rt.p0 - (u + 1), 1);
        cp_async_commit();
      }

      // x and y of this u are complete: dq += x ⊙ k2 (the k2 row of each fragment row).
#pragma unroll
      for (int n8 = 0; n8 < WC / 8; ++n8) {
        const float2 w0 = sload_pair(k2_h[0], col0w + n8 * 8 + frag_col(0));
        const float2 w1 = kOneRow ? w0 : sload_pair(k2_h[1], col0w + n8 * 8 + frag_col(0));
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float2 w = h == 0 ? w0 : w1;
          float2* const at = dq_pair(lr, h, n8);
          const float2 prev = u == qt.u_lo ? float2{0.f, 0.f} : sload(at);  // the tile's first u: no sum yet
          sstore(at, float2{prev.x + x[n8][2 * h] * w.x, prev.y + x[n8][2 * h + 1] * w.y});
        }
      }
      if constexpr (!kOneRow) {
        // Sequence tiles (one head): each row's x ⊙ q and y ⊙ dout are the scratch rows' whole
        // additions from this u, k = pos - u, added from the lane's registers. Rows of one u have
        // distinct k, the column warps distinct columns, and the u's barriers order the adds to
        // one row (made by the rows pos = k + u of successive offsets).
        SA_PATH(true, "scratch: a row's partials added from registers");
        add_row_partials<T, WC / 8>(x, y, q_h, do_h, o.ok, lr, qt, p.scratch, layer, hb, col0w, u, D, p.N);
        zero_acc(x);
        zero_acc(y);
        cta_sync();  // [R]: this u's reads of the k2 / v2 ring are done
      } else {
        // Packed: the head sums of x ⊙ q and y ⊙ dout into sred (this row warp's rows, this column
        // warp's columns).
        float hx[WC / 32], hy[WC / 32];
        head_sum<T>(hx, x, q_h, col0w);
        head_sum<T>(hy, y, do_h, col0w);
#pragma unroll
        for (int m = 0; m < WC / 32; ++m) {
          const int col = head_sum_col<WC / 8>(m, col0w);
          sstore(sred + (row_warp * 2 + 0) * DP + col, hx[m]);
          sstore(sred + (row_warp * 2 + 1) * DP + col, hy[m]);
        }
        zero_acc(x);
        zero_acc(y);
        cta_sync();  // [R]: every row warp's head sums are in sred

        // Scratch rows k = p0 + ps - u of the tile's positions ps += the sums of the row warps at
        // ps (one row warp per position with 16 heads, both with 32), in row-warp order.
        SA_PATH(positions > 1, "head sum: a position per row warp");
        SA_PATH(positions == 1, "head sum: row warps of one position");
        for (int w = thread_id(); w < positions * 2 * DP; w += kThreads) {
          const int ps = w / (2 * DP), which = (w / DP) & 1, col = w % DP;
          const int pos = qt.rt.p0 + ps, k = pos - u;
          const bool in = col < D && pos < seq.len && k >= 0 && k < seq.len;
          SA_PATH(col < D && pos < seq.len && !in, "scratch: k outside the sequence");
          if (!in) continue;
          float sum = 0.f;
#pragma unroll
          for (int rw = 0; rw < kRowWarps; ++rw)
            if (((16 * rw) >> p.log2_heads) == ps) sum += sload(sred + (rw * 2 + which) * DP + col);
          const int64_t row = p.scratch.row_of(seq, p.N, k);
          float* const dst = p.scratch.at(which, layer, row, qt.g, hb, col);
          gstore(dst, gload(dst) + sum);
        }
      }
    }

    if (!last_tile && (kQueryBufs == 1 || !kOneRow)) {
      // The next tile's q / dout (one buffer) and k2 / v2 rows (sequence tiles): every thread has
      // passed this tile's last [R], after the last reads of sq / sdo and the ring (its first step
      // waits for them: once a tile).
      const QueryTile nt = tile_at(ti + 1);
      if constexpr (kQueryBufs == 1) load_queries(nt, 0);
      if constexpr (!kOneRow) load_ring(nt.rt.p0 - nt.u_lo, positions);
      cp_async_commit();
    }

    // The tile's dq rows are complete (the lane's own sdq elements).
    T* dq_row[2];
    lane_out_rows<T>(dq_row, p.dq, qt, lr, p.group);
#pragma unroll
    for (int n8 = 0; n8 < WC / 8; ++n8) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float2 v = sload(dq_pair(lr, h, n8));
        const int d = col0w + n8 * 8 + frag_col(0);
        if (dq_row[h] != nullptr && d < D) gstore(dq_row[h] + d, Elem<T>::from_float(v.x * p.prob.scale));
        if (dq_row[h] != nullptr && d + 1 < D) gstore(dq_row[h] + d + 1, Elem<T>::from_float(v.y * p.prob.scale));
      }
    }
  }
}

// dk2 = scale * (sum of the scratch's dk2 partials), dv2 = sum of its dv2 partials, over the
// layers and head blocks in a fixed order: one thread per output element (row, kv head, column).
struct Dkv2ReduceParams {
  Dkv2Scratch scratch;
  MutTensorRef dk2, dv2;
  int N;
  float scale;
};

constexpr int kReduceThreads = 128;

template <class T>
SA_GLOBAL(kReduceThreads)
dkv2_reduce_kernel(const Dkv2ReduceParams p) {
  const Dkv2Scratch& sc = p.scratch;
  const int64_t idx = static_cast<int64_t>(block_x()) * kReduceThreads + thread_id();
  const int64_t total = sc.rows * sc.Hkv * sc.D;
  SA_PATH(idx >= total, "tail: threads past the last element");
  if (idx >= total) return;  // no barrier follows
  const int col = static_cast<int>(idx % sc.D), g = static_cast<int>((idx / sc.D) % sc.Hkv);
  const int64_t row = idx / (static_cast<int64_t>(sc.D) * sc.Hkv);
  SA_PATH(sc.layers > 1, "reduce: several layers");
  SA_PATH(sc.head_blocks > 1, "reduce: several head blocks");
  float sk = 0.f, sv = 0.f;
  for (int l = 0; l < sc.layers; ++l) {
    for (int hb = 0; hb < sc.head_blocks; ++hb) {
      sk += gload(sc.at(0, l, row, g, hb, col));
      sv += gload(sc.at(1, l, row, g, hb, col));
    }
  }
  const int b = static_cast<int>(row / p.N), n = static_cast<int>(row % p.N);
  gstore(row_ptr<T>(p.dk2, b, n, g) + col, Elem<T>::from_float(sk * p.scale));
  gstore(row_ptr<T>(p.dv2, b, n, g) + col, Elem<T>::from_float(sv));
}

}  // namespace simplicial_attn::cuda
