// Backward, dq: per query tile, the same tiles and loop as the forward (query_tile.cuh: rows are
// (position, head) pairs of one kv head, offsets u = i - k outer in chunks, k1/v1 blocks streamed
// through 2 stages), with P recomputed from the saved lse instead of an online softmax:
//
//     S   = (q ⊙ k2[i - u]) @ k1_blk^T        P  = exp(scale * S - lse - lse_lo)   (numerics.cuh)
//     dP  = (dout ⊙ v2[i - u]) @ v1_blk^T     dA = P * (dP - Delta[i])
//     acc += (dA @ k1_blk) ⊙ k2[i - u]         dq = scale * acc
//
// Determinant logits: k2 × q instead of q ⊙ k2 in S, and acc += M × k2 with M = dA @ k1_blk,
// read back from a shared fp32 tile at the other channels of each chunk (add_cross_m, cross.cuh). The
// logit form is a template parameter here (not a runtime flag as in the other kernels): the
// determinant's epilogue in the same loop pushes the trilinear kernel at head dim 128 past 255
// registers (spills).
// Head packing of >= 16 heads per position with trilinear logits and head dims <= 128 runs the fused
// dq + dk2 + dv2 pass instead (bwd_dqkv2_kernel.cuh; launch_bwd.cuh chooses).
// Packed sequences as in the forward. The CTA owns its dq rows outright: no atomics, deterministic.
#pragma once

#include "cross.cuh"
#include "fragments.cuh"
#include "logit_operand.cuh"
#include "numerics.cuh"
#include "query_tile.cuh"

namespace simplicial_attn::cuda {

template <int DP>
struct DqConfig {
  static constexpr int kHeadDim = DP;
  static constexpr int kRows = DP <= 64 ? 64 : (DP <= 128 ? 32 : 16);  // 16 per warp
  static constexpr int kWarps = kRows / 16;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockJ = DP <= 64 ? 64 : (DP <= 128 ? 32 : 16);
  static constexpr int kChunkU = DP <= 128 ? 16 : 8;
  static constexpr int kRegionRows = kRows + kChunkU - 1;
  static constexpr int kStages = 2;
  static constexpr int kOutCols = DP <= 128 ? DP : 128;  // see FwdConfig::kOutCols
  static constexpr int kRowBytes = (DP + 8) * 2;
  static constexpr int kSmemBytes = kRowBytes * (2 * kRows + 2 * kRegionRows + 2 * kStages * kBlockJ);
  // Determinant logits add the CrossTile of M (fp32, all rows).
  static constexpr int kSmemBytesDet = kSmemBytes + kRows * CrossTile<kOutCols, DP>::kWidth * 4;
  static_assert(kSmemBytesDet <= kSmemLimit, "dq tiles exceed the shared memory of an sm_86 block");
};

struct DqKernelParams : QueryTileParams, GradInputs {
  MutTensorRef dq;
};

template <class T, class Cfg, bool kDet>
SA_GLOBAL(Cfg::kThreads)
dq_kernel(const DqKernelParams p) {
  constexpr int DP = Cfg::kHeadDim, BM = Cfg::kRows, BJ = Cfg::kBlockJ, DO = Cfg::kOutCols;
  constexpr int kThreads = Cfg::kThreads;
  using TileT = Tile<T, DP>;

  // ---- The CTA's tile (as in the forward).
  const QueryTile qt = query_tile<BM>(p);
  if (qt.past_end()) return;  // the whole CTA, before any barrier
  const SeqSpan seq = qt.seq;
  const int D = p.D, col0 = block_z() * DO;
  constexpr bool det = kDet;
  SA_PATH(col0 > 0, "output: second column half");
  SA_PATH(det, "logits: determinant");

  // ---- Shared memory; owners and barriers as in the forward (B1 / B2):
  //   sq, sdo    written once (prologue), read-only afterwards.
  //   regions, k1/v1 stages: the stream's (QueryStream).
  //   sm         (determinant only) M of one u: written after the previous u's [X2], read after [X1].
  SmemCarver carver{dynamic_smem()};
  const TileT sq{carver.take<T>(BM * TileT::kLd)};
  const TileT sdo{carver.take<T>(BM * TileT::kLd)};
  const QueryStream<T, Cfg> stream(p, qt, carver);
  float* const sm_base = det ? carver.take<float>(BM * CrossTile<DO, DP>::kWidth) : nullptr;

  // ---- This lane's two rows: window of j, lse, lse_lo and Delta; their q rows.
  const LaneRows lr = lane_rows(qt, p.prob.band1);
  const T* const q_h[2] = {sq.row(lr.row(0)), sq.row(lr.row(1))};
  float lse[2], lse_lo[2], delta[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t stat = stat_index(seq, p.Hq, p.N, qt.query_head(lr.row(h), p.group), lr.pos[h]);
    lse[h] = lr.ok[h] ? gload(p.lse + stat) : 0.f;
    lse_lo[h] = lr.ok[h] ? gload(p.lse_lo + stat) : 0.f;
    delta[h] = lr.ok[h] ? gload(p.delta + stat) : 0.f;
  }

  float acc[DO / 8][4];
  zero_acc(acc);

  load_tile<kThreads>(sq, BM, D, p.vec, p.q.ptr, query_rows<T>(p.q, qt, p.group));
  load_tile<kThreads>(sdo, BM, D, p.vec, p.dout.ptr, query_rows<T>(p.dout, qt, p.group));
  stream.start();
  for (int it = 0; it < stream.n_iters; ++it) {
    const int c = it / stream.n_jblocks, stage = it % Cfg::kStages;
    stream.load_and_wait(it);
    cta_sync();  // B1

    const int j0 = stream.j0(it), region_base = stream.region_base(c);
    const TileT sk1 = stream.sk1(stage), sv1 = stream.sv1(stage), sk2 = stream.sk2, sv2 = stream.sv2;
    for (int u = stream.chunk_lo(c); u <= stream.chunk_hi(c); ++u) {
      const OffsetRows o = offset_rows(qt, lr, u, region_base);
      const T* const k2_h[2] = {sk2.row(o.h[0]), sk2.row(o.h[1])};

      // S = (q ⊙ k2) @ k1_blk^T (or (k2 × q) @ k1_blk^T) and dP = (dout ⊙ v2) @ v1_blk^T.
      float s[BJ / 8][4], dp[BJ / 8][4];
      const LogitRows<T> logit_rows{det, D, sq.row(lr.a_row), sk2.row(o.a), q_h, k2_h};
      logits_and_dp<T, DP, BJ>(s, dp, logit_rows, sdo.row(lr.a_row), sv2.row(o.a), sk1, sv1);

      // dA = P (dP - Delta), zero outside the (j, k) window.
#pragma unroll
      for (int nt = 0; nt < BJ / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int h = i >> 1, j = j0 + nt * 8 + frag_col(i);
          const bool in = o.ok[h] && j >= lr.jmin[h] && j <= lr.jmax[h];
          SA_PATH(o.ok[h] && !in, "mask: j outside the window");
          const float prob = in ? prob_from_lse(logit(s[nt][i], p.prob.scale), lse[h], lse_lo[h]) : 0.f;
          dp[nt][i] = prob * (dp[nt][i] - delta[h]);
        }
      }

      // acc += (dA @ k1_blk) ⊙ k2, 16 output columns at a time (determinant: M × k2).
      uint32_t da[BJ / 16][4];
#pragma unroll
      for (int kk = 0; kk < BJ / 16; ++kk) c_to_a<T>(da[kk], dp[2 * kk], dp[2 * kk + 1]);
      if constexpr (det) {
        const CrossTile<DO, DP> sm(sm_base, col0);
        const auto m_at = [&](int, int r, int ch) { return sload(sm.at(r, ch)); };
        const auto k2_at = [&](int h, int, int ch) { return Elem<T>::to_float(sload(k2_h[h] + ch)); };
        add_cross_m<T, DP, BJ, DO>(acc, sm, lr.warp_row0, da, sk1, col0, D, m_at, k2_at);
      } else {
        add_product_times_rows<T>(acc, da, sk1, col0, k2_h);
      }
    }
    cta_sync();  // B2
  }

  T* dq_row[2];
  lane_out_rows<T>(dq_row, p.dq, qt, lr, p.group);
  const float scale[2] = {p.prob.scale, p.prob.scale};
  store_acc_rows<T>(acc, dq_row, scale, col0, D);
}

}  // namespace simplicial_attn::cuda
