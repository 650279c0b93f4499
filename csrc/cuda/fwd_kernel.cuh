// Forward tensor-core kernel (fp16 / bf16 inputs, fp32 accumulation and softmax state), the fast
// path on sm_80 / sm_86 / sm_89 (mma.sync is their native tensor-core instruction; it also runs
// on sm_90, where the Triton forward is the fast path).
//
// A CTA owns kRows query rows of one kv head g; a row is a (position, query head) pair:
//
//     sequence tiling (1 head per tile)       head packing (GQA with >= 16 heads per kv head)
//     rows = positions p0 .. p0+63 of head h  rows = heads of the group at position p0 (.. p0+k)
//
// With u = i - k (the offset of the k2/v2 position k from the query position i), the k2 row of
// every query row is a row of one shifted tile, so for each u and each block of k1/v1 positions j
//
//     S   = (q ⊙ k2[i - u]) @ k1[j-block]^T             [rows, BJ]  two tensor-core products
//           (determinant logits: k2[i - u] × q per 3-channel chunk instead of q ⊙ k2, cross.cuh)
//     P   = online softmax of scale * S over the joint (j, k) window, fp32 (softmax.cuh)
//     acc = acc * rescale + (P @ v1[j-block]) ⊙ v2[i - u]
//
// out = acc / l, lse = m + ln l (natural log, float32 [B, Hq, N]) and its residual lse_lo
// (numerics.cuh). For D > 128 the output columns are split over grid.z (see FwdConfig::kOutCols).
// Packed sequences: grid.x runs over (sequence, position tile); positions are the sequence's own,
// windows end at its boundaries, and a tile past its end exits at once.
//
// Loop (QueryStream in query_tile.cuh): u-chunks of kChunkU offsets (outer), j-blocks of kBlockJ
// positions through a 2-stage cp.async pipeline, u (inner). The host makes w2 <= w1 (swapping the
// symmetric roles of (k1, v1) and (k2, v2)), so u runs over the smaller window.
//
// What stays in registers, and why (the fast path of sm_80 / sm_86 / sm_89, issue 23): a j-block's
// k1 and v1 enter every one of the chunk's kChunkU offsets, so each warp loads their mma fragments
// once, at the start of the block's iteration, and holds them for all its steps (u, block)
// (fragments.cuh, held_*; q's fragments too where they fit, D <= 64). A step then reads from shared
// memory only what depends on u: the k2 factor of its A operand q ⊙ k2 (one ldmatrix per 16
// channels) and the v2 pairs of its epilogue (one row's under head packing, where a warp's 16 rows
// share one position), plus q's ldmatrix where q is not held. Before, a step also re-read every B
// fragment: 0.111 shared-memory bytes per MMA FLOP at the README's head-packed D = 128 shape, the
// loop's bound with issue; now 0.049 (bench/gpu_model.py, sm_80; kOneRow below). Two more savings per step: the
// window mask only on a block that crosses some row's window edge (interior blocks take every
// logit), and the rescale of the accumulators only when some row's running max moved. Determinant
// logits (their A operand is built from shared rows at each step and needs the registers), D = 256,
// and D = 128 on sm_90 (kSm90Device) read the stage at each step instead.
//
// Each warp owns 16 rows; a lane holds two of them (fragment rows g and g + 8, see common.cuh) and
// all their softmax state, so no row statistics are shared between warps.
#pragma once

#include "fragments.cuh"
#include "logit_operand.cuh"
#include "query_tile.cuh"
#include "softmax.cuh"

namespace simplicial_attn::cuda {

template <int DP>
struct FwdConfig {
  static constexpr int kHeadDim = DP;
  static constexpr int kRows = DP <= 128 ? 64 : 32;  // query rows per CTA, 16 per warp
  static constexpr int kWarps = kRows / 16;
  static constexpr int kThreads = 32 * kWarps;
  // k1/v1 positions per block: its fragments (DP / 4 + kOutCols / 4 registers a lane per 16
  // positions) stay in registers for the chunk's offsets (trilinear logits, D <= 128).
  static constexpr int kBlockJ = DP <= 128 ? 32 : 16;
  static constexpr int kChunkU = DP <= 128 ? 16 : 8;  // offsets u per k2/v2 region
  static constexpr int kRegionRows = kRows + kChunkU - 1;
  static constexpr int kStages = 2;
  // Output columns per CTA: D = 256 splits them over 2 CTAs (grid.z), which both compute S, so
  // the fp32 accumulator (kOutCols / 2 registers a lane) stays within the register file.
  static constexpr int kOutCols = DP <= 128 ? DP : 128;
  // Registers held across steps (trilinear logits): a stage's k1 / v1 fragments for the chunk's
  // offsets (kHoldB; at 256 they would not fit beside the accumulator), and q's for the whole
  // loop where they fit beside those (kHoldQ; else a step loads them from q's shared rows).
  static constexpr bool kHoldB = DP <= 128;
  static constexpr bool kHoldQ = DP <= 64;
  static constexpr int kRowBytes = (DP + 8) * 2;
  // A k2/v2 region holds positions + kChunkU - 1 rows: at most kRegionRows (sequence tiling); under
  // head packing (a tile of few positions) the launch asks for less for the v2 buffer, the last
  // one (QueryStream), so two CTAs fit on an sm_80 SM.
  static constexpr int smem_bytes(int region_rows) {
    return kRowBytes * (kRows + kRegionRows + region_rows + 2 * kStages * kBlockJ);
  }
  static constexpr int kSmemBytes = smem_bytes(kRegionRows);
  static_assert(kSmemBytes <= kSmemLimit, "forward tiles exceed the shared memory of an sm_86 block");
};

struct FwdKernelParams : QueryTileParams {
  MutTensorRef out;
  float* lse;     // contiguous [B, Hq, N]
  float* lse_lo;  // contiguous [B, Hq, N]
};

// Per architecture (common.cuh kSm90Device / kSm86Device): ptxas for sm_90 spills the held k1 / v1
// fragments at D = 128 (255 registers), so there (the Triton forward is the fast path, this kernel
// the fallback) it reads the stage at each step, as at D = 256; for sm_86 it spills 8 bytes of the
// held form at D = 128 when k2's one-row A fragment comes from two 32-bit loads, so that
// architecture keeps k2's ldmatrix under head packing (kOneRow still reads v2's one row once).

// kDet: determinant logits, a separate instantiation (as dq's and dk2's): its A operand, built
// from shared rows at each step, needs the registers the trilinear form holds k1 / v1 in.
// kOneRow: the launch packs >= 16 heads per position (log2_heads >= 4), so each warp's 16 rows
// share one position and read one k2 row and one v2 row per offset (the held form only; an
// instantiation of its own, so each loop is straight-line code, which bench/gpu_model.py reads).
template <class T, class Cfg, bool kDet, bool kOneRow>
SA_GLOBAL(Cfg::kThreads)
fwd_kernel(const FwdKernelParams p) {
  constexpr int DP = Cfg::kHeadDim, BM = Cfg::kRows, BJ = Cfg::kBlockJ, DO = Cfg::kOutCols;
  constexpr int kThreads = Cfg::kThreads;
  constexpr bool kHoldB = Cfg::kHoldB && !kDet && (DP <= 64 || !kSm90Device), kHoldQ = Cfg::kHoldQ && !kDet;
  constexpr bool kOne = kOneRow && kHoldB, kOneK2 = kOne && !(DP == 128 && kSm86Device);
  constexpr float kNegInf = -__builtin_huge_valf();
  using TileT = Tile<T, DP>;

  // ---- The CTA's tile (QueryTile in query_tile.cuh); grid.z = output columns [col0, col0 + DO).
  const QueryTile qt = query_tile<BM>(p);
  if (qt.past_end()) return;  // the whole CTA, before any barrier
  const SeqSpan seq = qt.seq;
  const int D = p.D, col0 = block_z() * DO;
  SA_PATH(col0 > 0, "output: second column half");
  SA_PATH(kDet, "logits: determinant");

  // ---- Shared memory: sq is written once (prologue, cp.async group 0) and read-only afterwards;
  // the k2/v2 regions and k1/v1 stages are the stream's (owners and barriers: QueryStream).
  SmemCarver carver{dynamic_smem()};
  const TileT sq{carver.take<T>(BM * TileT::kLd)};
  const QueryStream<T, Cfg> stream(p, qt, carver, qt.positions + Cfg::kChunkU - 1);

  // ---- This lane's two rows; the q rows of its two fragment rows (the determinant's A operand
  // reads those).
  const LaneRows lr = lane_rows(qt, p.prob.band1);
  const T* const q_h[2] = {sq.row(lr.row(0)), sq.row(lr.row(1))};

  RowSoftmax softmax;
  float acc[DO / 8][4];
  zero_acc(acc);
  uint32_t qa[DP / 16][4];  // q's A fragments (kHoldQ), loaded at iteration 0
  // A stage's k1 / v1 fragments (kHoldB; one element otherwise, never used).
  using KeyFrags = uint32_t[kHoldB ? DP / 16 : 1][BJ / 8][2];
  using ValueFrags = uint32_t[kHoldB ? BJ / 16 : 1][DO / 8][2];

  load_tile<kThreads>(sq, BM, D, p.vec, p.q.ptr, query_rows<T>(p.q, qt, p.group));
  stream.start();
  SA_PATH(kOne, "tile: one position per warp");
  for (int it = 0; it < stream.n_iters; ++it) {
    const int c = it / stream.n_jblocks, stage = it % Cfg::kStages;
    stream.load_and_wait(it);
    cta_sync();  // B1: sq, the region and this iteration's stage are visible to every thread

    const int j0 = stream.j0(it), region_base = stream.region_base(c);
    const TileT sk1 = stream.sk1(stage), sv1 = stream.sv1(stage), sk2 = stream.sk2, sv2 = stream.sv2;
    if constexpr (kHoldQ) {
      if (it == 0) held_a<T, DP>(qa, sq.row(lr.a_row));
    }
    // The stage's k1 / v1 fragments, held for every offset of the chunk.
    [[maybe_unused]] KeyFrags kb;
    [[maybe_unused]] ValueFrags vb;
    if constexpr (kHoldB) {
      held_b_nmajor<T, DP, BJ>(kb, sk1);
      held_b_kmajor<T, DP, BJ, DO / 8>(vb, sv1, col0);
    }

    for (int u = stream.chunk_lo(c); u <= stream.chunk_hi(c); ++u) {
      // The k2/v2 rows of k = pos - u in the region.
      const OffsetRows o = offset_rows(qt, lr, u, region_base);
      const T* const k2_h[2] = {sk2.row(o.h[0]), sk2.row(o.h[1])};
      const T* const v2_h[2] = {sv2.row(o.h[0]), sv2.row(o.h[1])};

      // S = (q ⊙ k2[pos - u]) @ k1_block^T, or (k2[pos - u] × q) @ k1_block^T
      float s[BJ / 8][4];
      zero_acc(s);
      if constexpr (kHoldB) {
#pragma unroll
        for (int kt = 0; kt < DP / 16; ++kt) {
          uint32_t a[4];
          q_times_k2<T, DP, kHoldQ, kOneK2>(a, qa, sq.row(lr.a_row), sk2.row(o.a), kt);
#pragma unroll
          for (int nt = 0; nt < BJ / 8; ++nt) mma_acc<T>(s[nt], a, kb[kt][nt]);
        }
      } else {
        // The determinant, or q ⊙ k2 at D = 256: nothing held, the stage read at each step.
        const LogitRows<T> logit_rows{kDet, D, sq.row(lr.a_row), sk2.row(o.a), q_h, k2_h};
        logits<T, DP, BJ>(s, logit_rows, sk1);
      }

      // Scale to logits; mask to the (j, k) window unless the block lies inside every row's.
      const int j_last = j0 + BJ - 1;
      const bool interior = warp_all(o.ok[0] && o.ok[1] && j0 >= lr.jmin[0] && j0 >= lr.jmin[1] &&
                                     j_last <= lr.jmax[0] && j_last <= lr.jmax[1]);
      SA_PATH(interior, "mask: interior block");
      SA_PATH(!interior, "mask: edge block");
      if (interior) {
#pragma unroll
        for (int nt = 0; nt < BJ / 8; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) s[nt][i] = logit(s[nt][i], p.prob.scale);
      } else {
#pragma unroll
        for (int nt = 0; nt < BJ / 8; ++nt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int h = i >> 1, j = j0 + nt * 8 + frag_col(i);
            SA_PATH(o.ok[h] && (j < lr.jmin[h] || j > lr.jmax[h]), "mask: j outside the window");
            s[nt][i] = (o.ok[h] && j >= lr.jmin[h] && j <= lr.jmax[h]) ? logit(s[nt][i], p.prob.scale) : kNegInf;
          }
        }
      }
      float alpha[2];
      softmax.step(s, alpha);
      // alpha is exactly 1 where the running max did not move: skip the rescale when it is for
      // every row of the warp.
      const bool moved = warp_any(alpha[0] != 1.f || alpha[1] != 1.f);
      SA_PATH(!moved, "softmax: rescale skipped");
      if (moved) rescale_rows(acc, alpha);

      // acc += (P @ v1_block) ⊙ v2[pos - u], 16 output columns (col0 + nt * 8 ..) at a time.
      uint32_t pa[BJ / 16][4];
#pragma unroll
      for (int kk = 0; kk < BJ / 16; ++kk) c_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);
      if constexpr (kHoldB)
        add_held_product_times_rows<T, kOne>(acc, pa, vb, col0, v2_h);
      else
        add_product_times_rows<T>(acc, pa, sv1, col0, v2_h);
    }
    cta_sync();  // B2: every warp is done with this stage and (if the chunk ends) the region
  }

  // ---- Epilogue: out = acc / l; lse (natural log) and lse_lo, written by lane 0 of each quad.
  T* out_row[2];
  lane_out_rows<T>(out_row, p.out, qt, lr, p.group);
  float inv_l[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    inv_l[h] = softmax.inv_sum(h);
    if (lr.ok[h] && (lane_id() & 3) == 0 && col0 == 0) {
      const RowLse rl = softmax.lse(h);
      const int64_t stat = stat_index(seq, p.Hq, p.N, qt.query_head(lr.row(h), p.group), lr.pos[h]);
      gstore(p.lse + stat, rl.lse);
      gstore(p.lse_lo + stat, rl.lo);
    }
  }
  store_acc_rows<T>(acc, out_row, inv_l, col0, D);
}

}  // namespace simplicial_attn::cuda
