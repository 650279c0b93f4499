// Backward, dq: per query tile, the same tiles and loop as the forward (fwd_kernel.cuh: rows are
// (position, head) pairs of one kv head, offsets u = i - k outer in chunks, k1/v1 blocks streamed
// through 2 stages), with P recomputed from the saved lse instead of an online softmax:
//
//     S   = (q ⊙ k2[i - u]) @ k1_blk^T        P  = exp(scale * S - lse - lse_lo)   (numerics.cuh)
//     dP  = (dout ⊙ v2[i - u]) @ v1_blk^T     dA = P * (dP - Delta[i])
//     acc += (dA @ k1_blk) ⊙ k2[i - u]         dq = scale * acc
//
// Determinant logits: k2 × q instead of q ⊙ k2 in S, and acc += M × k2 with M = dA @ k1_blk,
// read back from a shared fp32 tile at the other channels of each chunk (CrossTile, tile.cuh). The
// logit form is a template parameter here (not a runtime flag as in the other kernels): the
// determinant's epilogue in the same loop pushes the trilinear kernel at head dim 128 past 255
// registers (spills).
// Packed sequences as in the forward. The CTA owns its dq rows outright: no atomics, deterministic.
#pragma once

#include "numerics.cuh"
#include "tile.cuh"

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

struct DqKernelParams {
  TensorRef q, dout, k1, k2, v1, v2;
  MutTensorRef dq;
  const float* lse;     // [B, Hq, N], natural log
  const float* lse_lo;  // [B, Hq, N]
  const float* delta;   // [B, Hq, N]
  int N, Hq, group, D;
  ProblemDesc prob;
  int log2_heads, head_blocks, pos_tiles;  // as in FwdKernelParams
  bool vec;
};

template <class T, class Cfg, bool kDet>
SA_GLOBAL(Cfg::kThreads)
dq_kernel(const DqKernelParams p) {
  constexpr int DP = Cfg::kHeadDim, BM = Cfg::kRows, BJ = Cfg::kBlockJ, CU = Cfg::kChunkU, DO = Cfg::kOutCols;
  constexpr int kThreads = Cfg::kThreads;
  using TileT = Tile<T, DP>;

  // ---- The CTA's tile (as in the forward).
  const QueryTile qt = query_tile<BM>(p);
  if (qt.past_end()) return;  // the whole CTA, before any barrier
  const SeqSpan seq = qt.seq;
  const int g = qt.g, positions = qt.positions;
  const RowTile rt = qt.rt;
  const int N = seq.len, D = p.D, col0 = block_z() * DO;
  constexpr bool det = kDet;
  SA_PATH(col0 > 0, "output: second column half");
  SA_PATH(det, "logits: determinant");
  const int L1 = p.prob.band1.left, R1 = p.prob.band1.right;
  const int p0 = rt.p0, u_lo = qt.u_lo, u_hi = qt.u_hi, j_lo = qt.j_lo, j_hi = qt.j_hi;
  const int n_jblocks = ceil_div(j_hi - j_lo + 1, BJ);
  const int n_iters = n_jblocks * ceil_div(u_hi - u_lo + 1, CU);

  // ---- Shared memory; owners and barriers as in the forward (B1 / B2):
  //   sq, sdo    written once (prologue), read-only afterwards.
  //   sk2, sv2   region of the current u-chunk, rewritten at a chunk's first iteration after B2.
  //   k1/v1      stage it % 2, filled during iteration it - 1, read after B1 of iteration it.
  //   sm         (determinant only) M of one u: written after the previous u's [X2], read after [X1].
  SmemCarver carver{dynamic_smem()};
  const TileT sq{carver.take<T>(BM * TileT::kLd)};
  const TileT sdo{carver.take<T>(BM * TileT::kLd)};
  const TileT sk2{carver.take<T>(Cfg::kRegionRows * TileT::kLd)};
  const TileT sv2{carver.take<T>(Cfg::kRegionRows * TileT::kLd)};
  T* const k1_stages = carver.take<T>(Cfg::kStages * BJ * TileT::kLd);
  T* const v1_stages = carver.take<T>(Cfg::kStages * BJ * TileT::kLd);
  auto sk1 = [&](int stage) { return TileT{k1_stages + stage * BJ * TileT::kLd}; };
  auto sv1 = [&](int stage) { return TileT{v1_stages + stage * BJ * TileT::kLd}; };
  float* const sm_base = det ? carver.take<float>(BM * CrossTile<DO, DP>::kWidth) : nullptr;

  const int kv_head = g;
  auto query_rows = [=](const TensorRef& t) {
    return [=](int r) -> const T* {
      return rt.valid(r) ? row_ptr<T>(t, seq, rt.pos(r), g * p.group + rt.head(r)) : nullptr;
    };
  };
  auto chunk_lo = [&](int c) { return u_lo + c * CU; };
  auto chunk_hi = [&](int c) { return imin(u_lo + c * CU + CU - 1, u_hi); };
  auto load_region = [&](int c) {
    const int base = p0 - chunk_hi(c), rows = positions + chunk_hi(c) - chunk_lo(c);
    auto src = [=](const TensorRef& t) {
      return [=](int r) -> const T* {
        const int k = base + r;
        return (k >= 0 && k < N) ? row_ptr<T>(t, seq, k, kv_head) : nullptr;
      };
    };
    load_tile<kThreads>(sk2, rows, D, p.vec, p.k2.ptr, src(p.k2));
    load_tile<kThreads>(sv2, rows, D, p.vec, p.v2.ptr, src(p.v2));
  };
  auto load_kv1 = [&](int it, int stage) {
    const int j0 = j_lo + (it % n_jblocks) * BJ;
    auto src = [=](const TensorRef& t) {
      return [=](int r) -> const T* { return j0 + r <= j_hi ? row_ptr<T>(t, seq, j0 + r, kv_head) : nullptr; };
    };
    load_tile<kThreads>(sk1(stage), BJ, D, p.vec, p.k1.ptr, src(p.k1));
    load_tile<kThreads>(sv1(stage), BJ, D, p.vec, p.v1.ptr, src(p.v1));
  };

  // ---- This lane's two rows: window of j, lse, lse_lo and Delta; their q rows.
  const int warp_row0 = 16 * warp_id(), g4 = lane_id() >> 2;
  const int a_row = warp_row0 + (lane_id() & 15);
  int my_pos[2], jmin[2], jmax[2];
  bool my_ok[2];
  float lse[2], lse_lo[2], delta[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp_row0 + g4 + 8 * h;
    my_pos[h] = rt.pos(r);
    my_ok[h] = rt.valid(r);
    jmin[h] = imax(0, my_pos[h] - L1);
    jmax[h] = imin(N - 1, my_pos[h] + R1);
    const int64_t stat = stat_index(seq, p.Hq, p.N, g * p.group + rt.head(r), my_pos[h]);
    lse[h] = my_ok[h] ? gload(p.lse + stat) : 0.f;
    lse_lo[h] = my_ok[h] ? gload(p.lse_lo + stat) : 0.f;
    delta[h] = my_ok[h] ? gload(p.delta + stat) : 0.f;
  }

  float acc[DO / 8][4];
#pragma unroll
  for (int nt = 0; nt < DO / 8; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;

  load_tile<kThreads>(sq, BM, D, p.vec, p.q.ptr, query_rows(p.q));
  load_tile<kThreads>(sdo, BM, D, p.vec, p.dout.ptr, query_rows(p.dout));
  load_kv1(0, 0);
  cp_async_commit();
  for (int it = 0; it < n_iters; ++it) {
    const int c = it / n_jblocks, stage = it % Cfg::kStages;
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
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    cta_sync();  // B1

    const int j0 = j_lo + (it % n_jblocks) * BJ;
    const int region_base = p0 - chunk_hi(c);
    for (int u = chunk_lo(c); u <= chunk_hi(c); ++u) {
      const int a_region = rt.pos(a_row) - u - region_base;
      const T* k2_h[2];
      bool ok[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int k = my_pos[h] - u;
        k2_h[h] = sk2.row(k - region_base);
        ok[h] = my_ok[h] && k >= 0 && k < N;
        SA_PATH(my_ok[h] && !ok[h], "mask: k outside the sequence");
      }

      // S = (q ⊙ k2) @ k1_blk^T (or (k2 × q) @ k1_blk^T) and dP = (dout ⊙ v2) @ v1_blk^T.
      float s[BJ / 8][4], dp[BJ / 8][4];
      const T* const q_h[2] = {sq.row(warp_row0 + g4), sq.row(warp_row0 + g4 + 8)};
      const LogitRows<T> lr{det, D, sq.row(a_row), sk2.row(a_region), q_h, k2_h};
      logits_and_dp<T, DP, BJ>(s, dp, lr, sdo.row(a_row), sv2.row(a_region), sk1(stage), sv1(stage));

      // dA = P (dP - Delta), zero outside the (j, k) window.
#pragma unroll
      for (int nt = 0; nt < BJ / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int h = i >> 1, j = j0 + nt * 8 + frag_col(i);
          const bool in = ok[h] && j >= jmin[h] && j <= jmax[h];
          SA_PATH(ok[h] && !in, "mask: j outside the window");
          const float prob = in ? prob_from_lse(logit(s[nt][i], p.prob.scale), lse[h], lse_lo[h]) : 0.f;
          dp[nt][i] = prob * (dp[nt][i] - delta[h]);
        }
      }

      // acc += (dA @ k1_blk) ⊙ k2, 16 output columns at a time (determinant: M × k2, below).
      uint32_t da[BJ / 16][4];
#pragma unroll
      for (int kk = 0; kk < BJ / 16; ++kk) c_to_a<T>(da[kk], dp[2 * kk], dp[2 * kk + 1]);
      if constexpr (det) {
        const CrossTile<DO, DP> sm(sm_base, col0);
        store_m<T, DP, BJ, DO>(sm, warp_row0, da, sk1(stage));
        cta_sync();  // [X1]: M of every row is in sm
#pragma unroll
        for (int nt = 0; nt < DO / 8; ++nt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            // (M × k2)[c] = M[s(c)] k2[s(s(c))] - M[s(s(c))] k2[s(c)]
            const int h = i >> 1, r = warp_row0 + frag_row(i), c = col0 + nt * 8 + frag_col(i);
            if (c >= D) continue;
            const int c1 = chunk_next(c), c2 = chunk_prev(c);
            acc[nt][i] += sload(sm.at(r, c1)) * Elem<T>::to_float(sload(k2_h[h] + c2)) -
                          sload(sm.at(r, c2)) * Elem<T>::to_float(sload(k2_h[h] + c1));
          }
        }
        cta_sync();  // [X2]: every warp is done reading sm
        continue;
      }
#pragma unroll
      for (int nt = 0; nt < DO / 8; nt += 2) {
        float t0[4] = {0.f, 0.f, 0.f, 0.f}, t1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int kk = 0; kk < BJ / 16; ++kk) {
          uint32_t b0[2], b1[2];
          ldsm_b_kmajor(b0, b1, sk1(stage), kk * 16, col0 + nt * 8);
          mma_acc<T>(t0, da[kk], b0);
          mma_acc<T>(t1, da[kk], b1);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float2 w0 = sload_pair(k2_h[h], col0 + nt * 8 + frag_col(2 * h));
          const float2 w1 = sload_pair(k2_h[h], col0 + nt * 8 + 8 + frag_col(2 * h));
          acc[nt][2 * h] += t0[2 * h] * w0.x;
          acc[nt][2 * h + 1] += t0[2 * h + 1] * w0.y;
          acc[nt + 1][2 * h] += t1[2 * h] * w1.x;
          acc[nt + 1][2 * h + 1] += t1[2 * h + 1] * w1.y;
        }
      }
    }
    cta_sync();  // B2
  }

  T* dq_row[2];
  float scale[2] = {p.prob.scale, p.prob.scale};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp_row0 + g4 + 8 * h;
    dq_row[h] = my_ok[h] ? row_ptr<T>(p.dq, seq, my_pos[h], g * p.group + rt.head(r)) : nullptr;
  }
  store_acc_rows<T>(acc, dq_row, scale, col0, D);
}

}  // namespace simplicial_attn::cuda
