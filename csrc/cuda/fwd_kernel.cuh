// Forward tensor-core kernel (fp16 / bf16 inputs, fp32 accumulation and softmax state).
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
//     P   = online softmax of scale * S over the joint (j, k) window, fp32 (numerics.cuh)
//     acc = acc * rescale + (P @ v1[j-block]) ⊙ v2[i - u]
//
// out = acc / l, lse = m + ln l (natural log, float32 [B, Hq, N]) and its residual lse_lo
// (numerics.cuh). For D > 128 the output columns are split over grid.z (see FwdConfig::kOutCols).
// Packed sequences: grid.x runs over (sequence, position tile); positions are the sequence's own,
// windows end at its boundaries, and a tile past its end exits at once.
//
// Loop (QueryStream in query_tile.cuh): u-chunks of kChunkU offsets (outer), j-blocks of kBlockJ
// positions through a 2-stage cp.async pipeline, u (inner), so each k1/v1 block is read from
// global memory once per u-chunk and reused for all its offsets. The host makes w2 <= w1 (swapping
// the symmetric roles of (k1, v1) and (k2, v2)), so u runs over the smaller window.
//
// Each warp owns 16 rows; a lane holds two of them (fragment rows g and g + 8, see common.cuh) and
// all their softmax state (softmax.cuh), so no row statistics are shared between warps.
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
  static constexpr int kBlockJ = DP <= 64 ? 64 : (DP <= 128 ? 32 : 16);  // k1/v1 positions per block
  static constexpr int kChunkU = DP <= 128 ? 16 : 8;                     // offsets u per k2/v2 region
  static constexpr int kRegionRows = kRows + kChunkU - 1;
  static constexpr int kStages = 2;
  // Output columns per CTA: D = 256 splits them over 2 CTAs (grid.z), which both compute S, so
  // the fp32 accumulator (kOutCols / 2 registers a lane) stays within the register file.
  static constexpr int kOutCols = DP <= 128 ? DP : 128;
  static constexpr int kRowBytes = (DP + 8) * 2;
  static constexpr int kSmemBytes = kRowBytes * (kRows + 2 * kRegionRows + 2 * kStages * kBlockJ);
  static_assert(kSmemBytes <= kSmemLimit, "forward tiles exceed the shared memory of an sm_86 block");
};

struct FwdKernelParams : QueryTileParams {
  MutTensorRef out;
  float* lse;     // contiguous [B, Hq, N]
  float* lse_lo;  // contiguous [B, Hq, N]
};

template <class T, class Cfg>
SA_GLOBAL(Cfg::kThreads)
fwd_kernel(const FwdKernelParams p) {
  constexpr int DP = Cfg::kHeadDim, BM = Cfg::kRows, BJ = Cfg::kBlockJ, DO = Cfg::kOutCols;
  constexpr int kThreads = Cfg::kThreads;
  constexpr float kNegInf = -__builtin_huge_valf();
  using TileT = Tile<T, DP>;

  // ---- The CTA's tile (QueryTile in query_tile.cuh); grid.z = output columns [col0, col0 + DO).
  const QueryTile qt = query_tile<BM>(p);
  if (qt.past_end()) return;  // the whole CTA, before any barrier
  const SeqSpan seq = qt.seq;
  const int D = p.D, col0 = block_z() * DO;
  const bool det = p.prob.determinant;
  SA_PATH(col0 > 0, "output: second column half");
  SA_PATH(det, "logits: determinant");

  // ---- Shared memory: sq is written once (prologue, cp.async group 0) and read-only afterwards;
  // the k2/v2 regions and k1/v1 stages are the stream's (owners and barriers: QueryStream).
  SmemCarver carver{dynamic_smem()};
  const TileT sq{carver.take<T>(BM * TileT::kLd)};
  const QueryStream<T, Cfg> stream(p, qt, carver);

  // ---- This lane's two rows; the q rows of its two fragment rows (the determinant's A operand
  // reads those).
  const LaneRows lr = lane_rows(qt, p.prob.band1);
  const T* const q_h[2] = {sq.row(lr.row(0)), sq.row(lr.row(1))};

  RowSoftmax softmax;
  float acc[DO / 8][4];
  zero_acc(acc);

  load_tile<kThreads>(sq, BM, D, p.vec, p.q.ptr, query_rows<T>(p.q, qt, p.group));
  stream.start();
  for (int it = 0; it < stream.n_iters; ++it) {
    const int c = it / stream.n_jblocks, stage = it % Cfg::kStages;
    stream.load_and_wait(it);
    cta_sync();  // B1: sq, the region and this iteration's stage are visible to every thread

    const int j0 = stream.j0(it), region_base = stream.region_base(c);
    const TileT sk1 = stream.sk1(stage), sv1 = stream.sv1(stage), sk2 = stream.sk2, sv2 = stream.sv2;
    for (int u = stream.chunk_lo(c); u <= stream.chunk_hi(c); ++u) {
      // The k2/v2 rows of k = pos - u in the region.
      const OffsetRows o = offset_rows(qt, lr, u, region_base);
      const T* const k2_h[2] = {sk2.row(o.h[0]), sk2.row(o.h[1])};
      const T* const v2_h[2] = {sv2.row(o.h[0]), sv2.row(o.h[1])};

      // S = (q ⊙ k2[pos - u]) @ k1_block^T, or (k2[pos - u] × q) @ k1_block^T
      const LogitRows<T> logit_rows{det, D, sq.row(lr.a_row), sk2.row(o.a), q_h, k2_h};
      float s[BJ / 8][4];
      logits<T, DP, BJ>(s, logit_rows, sk1);

      // Mask to the (j, k) window, scale to logits, online softmax update.
#pragma unroll
      for (int nt = 0; nt < BJ / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int h = i >> 1, j = j0 + nt * 8 + frag_col(i);
          SA_PATH(o.ok[h] && (j < lr.jmin[h] || j > lr.jmax[h]), "mask: j outside the window");
          s[nt][i] = (o.ok[h] && j >= lr.jmin[h] && j <= lr.jmax[h]) ? logit(s[nt][i], p.prob.scale) : kNegInf;
        }
      }
      float alpha[2];
      softmax.step(s, alpha);
      rescale_rows(acc, alpha);

      // acc += (P @ v1_block) ⊙ v2[pos - u], 16 output columns (col0 + nt * 8 ..) at a time.
      uint32_t pa[BJ / 16][4];
#pragma unroll
      for (int kk = 0; kk < BJ / 16; ++kk) c_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);
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
