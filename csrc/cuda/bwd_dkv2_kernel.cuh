// Backward, dk2 and dv2: per tile of k2/v2 positions k of one kv head g. With the offset
// u = i - k, the query of row k at offset u is i = k + u: a shifted row, exactly as k2 is for the
// forward's query rows. For each query head h of g's group, each u and each k1/v1 block:
//
//     S   = (k2[k] ⊙ q[k + u]) @ k1_blk^T        P  = exp(scale * S - lse - lse_lo)   (numerics.cuh)
//     dP  = (v2[k] ⊙ dout[k + u]) @ v1_blk^T     dA = P * (dP - Delta[k + u])
//     acc_k += (dA @ k1_blk) ⊙ q[k + u]           dk2 = scale * acc_k
//     acc_v += (P  @ v1_blk) ⊙ dout[k + u]        dv2 = acc_v
//
// Determinant logits: k2 × q instead of k2 ⊙ q in S, and acc_k += q × M with M = dA @ k1_blk read
// back from a shared fp32 tile (add_cross_m, cross.cuh); the logit form is a template parameter, as in
// bwd_dq_kernel.cuh (the determinant's epilogue pushes the trilinear kernel past 255 registers at
// head dim 64). Packed sequences: grid.x runs over (sequence, position tile), a tile past its
// sequence's end exits at once.
//
// GQA: the query heads of the group are a loop inside the CTA, so the sum over them needs no
// atomics and the CTA owns its dk2 / dv2 rows. The host swaps (k1, v1) and (k2, v2) when w2 > w1,
// so u runs over the smaller window.
//
// Loop: (query head, u-chunk) outer with a region of q / dout / lse / Delta rows at positions
// [k0 + u_lo, k_last + u_hi] of the chunk, then k1/v1 blocks through 2 stages, then u.
#pragma once

#include <type_traits>

#include "cross.cuh"
#include "fragments.cuh"
#include "key_tile.cuh"
#include "logit_operand.cuh"
#include "numerics.cuh"

namespace simplicial_attn::cuda {

// kDet: the determinant instantiation's tiles. A CTA computes kOutCols output columns of dk2 and
// dv2; a column split over grid.z would compute S and dP once per part. At DP = 128 the trilinear
// kernel takes all 128 columns: two fp32 accumulators of 128 columns do not fit one warp's
// registers, so kColWarps = 2 warps share each 16 rows, each computes S / dP for its half of the
// j block, the halves meet in shared memory (sx) as mma A operands, and each accumulates its 64
// columns. The determinant's epilogue (CrossTile of M, add_cross_m) keeps the split over grid.z at
// 128 (kOutCols = 64, both halves recompute S and dP), as does DP = 256 (4 x 64); DP = 64: one CTA,
// all columns.
template <int DP, bool kDet = false>
struct Dkv2Config {
  static constexpr int kHeadDim = DP;
  static constexpr int kRows = DP <= 64 ? 64 : (DP <= 128 ? 32 : 16);  // k positions, 16 per row warp
  static constexpr int kRowWarps = kRows / 16;
  static constexpr bool kAllCols = DP <= 64 || (DP <= 128 && !kDet);
  static constexpr int kOutCols = kAllCols ? DP : 64;
  static constexpr int kColWarps = DP == 128 && !kDet ? 2 : 1;
  // With 64 accumulator registers a column warp holds its rows' k2 and v2 A fragments in
  // registers for the whole kernel: a step's A operands k2 ⊙ q_shift and v2 ⊙ dout_shift then read
  // only q and dout (v2's not on sm_90, where ptxas spills 4 B with them at fp16: the kernel's
  // kHoldV2).
  static constexpr bool kHoldA = kColWarps > 1;
  static constexpr int kWarpCols = kOutCols / kColWarps;
  static constexpr int kWarps = kRowWarps * kColWarps;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockJ = DP <= 64 ? 64 : (DP <= 128 ? 32 : 16);
  static constexpr int kWarpJ = kBlockJ / kColWarps;  // j positions per warp in S / dP
  static constexpr int kChunkU = DP <= 128 ? 16 : 8;
  static constexpr int kRegionRows = kRows + kChunkU - 1;
  static constexpr int kStages = 2;
  static constexpr int kRowBytes = (DP + 8) * 2;
  // sx: two buffers (alternate u) of, per row warp and 16 j positions, dA and P as A fragments
  // (4 x 32 bits per lane).
  static constexpr int kXWords = kColWarps > 1 ? 2 * kRowWarps * (kBlockJ / 16) * 2 * 32 * 4 : 0;
  static constexpr int kSmemBytes = kRowBytes * (2 * kRows + 2 * kRegionRows + 2 * kStages * kBlockJ) +
                                    3 * ((kRegionRows * 4 + 15) / 16 * 16) + kXWords * 4;
  // Determinant logits add the CrossTile of M (fp32, all rows); the launch of <DP, true> asks for it.
  static constexpr int kSmemBytesDet = kSmemBytes + (kDet ? kRows * CrossTile<kOutCols, DP>::kWidth * 4 : 0);
  static_assert(kWarpJ % 16 == 0 && kWarpCols % 16 == 0, "whole mma tiles per warp");
  static_assert(!kDet || kColWarps == 1, "the determinant's epilogue takes all of the CTA's columns per warp");
  static_assert(kSmemBytesDet <= kSmemLimit, "dk2/dv2 tiles exceed the shared memory of an sm_86 block");
};

struct Dkv2KernelParams : TileParams, GradInputs {
  MutTensorRef dk2, dv2;
};

template <class T, class Cfg, bool kDet>
SA_GLOBAL(Cfg::kThreads)
dkv2_kernel(const Dkv2KernelParams p) {
  constexpr int DP = Cfg::kHeadDim, BM = Cfg::kRows, BJ = Cfg::kBlockJ, CU = Cfg::kChunkU, DO = Cfg::kOutCols;
  constexpr int WJ = Cfg::kWarpJ, WC = Cfg::kWarpCols, kColWarps = Cfg::kColWarps;
  constexpr bool kHoldA = Cfg::kHoldA;
  constexpr int kThreads = Cfg::kThreads;
  using TileT = Tile<T, DP>;
  static_assert(std::is_same_v<Cfg, Dkv2Config<DP, kDet>>, "the logit form's own tiles");

  // ---- The CTA's tile: k positions [k0, k_last] of kv head tile.g (key_tile.cuh).
  const KeyTile tile = key_tile<BM, DO>(p);
  if (tile.past_end()) return;  // the whole CTA, before any barrier
  const int N = tile.seq.len, D = p.D, k0 = tile.r0, k_last = tile.r_last;
  constexpr bool det = kDet;
  const int L2 = p.prob.band2.left, R2 = p.prob.band2.right;
  // Offsets u = i - k in the k2 band with some i = k + u in [0, N).
  const int u_lo = imax(-R2, -k_last), u_hi = imin(L2, N - 1 - k0);
  const int n_chunks = ceil_div(u_hi - u_lo + 1, CU);
  auto chunk_lo = [&](int c) { return u_lo + c * CU; };
  auto chunk_hi = [&](int c) { return imin(u_lo + c * CU + CU - 1, u_hi); };
  // k1/v1 positions j of chunk c: the union of the windows J(i) of its queries i.
  auto chunk_j = [&](int c) {
    return band_union(p.prob.band1, imax(0, k0 + chunk_lo(c)), imin(N - 1, k_last + chunk_hi(c)), N);
  };
  auto chunk_jlo = [&](int c) { return chunk_j(c).lo; };
  auto chunk_jhi = [&](int c) { return chunk_j(c).hi; };
  auto chunk_jblocks = [&](int c) { return ceil_div(chunk_jhi(c) - chunk_jlo(c) + 1, BJ); };

  // ---- Shared memory. Owners and barriers (B1 / B2 in the loop):
  //   sk2, sv2             this CTA's rows, written once (prologue), read-only afterwards.
  //   sq, sdo, slse, sdel  region of the current (head, chunk): rewritten at its first iteration,
  //                        after B2 of the previous iteration (the last reader); read after B1.
  //   k1/v1 stage it % 2   filled during iteration it - 1, read after B1 of iteration it.
  //   sm                   (determinant only) M of one u: written after the previous u's [X2],
  //                        read after [X1].
  //   sx buffer u % 2      (kColWarps > 1) dA / P of one u as A fragments: written by each warp for
  //                        its j positions, read by the warps of the same rows after [X]; written
  //                        again at u + 2, after every warp has passed [X] of u + 1, so after its
  //                        reads of u (program order).
  SmemCarver carver{dynamic_smem()};
  const TileT sk2{carver.take<T>(BM * TileT::kLd)};
  const TileT sv2{carver.take<T>(BM * TileT::kLd)};
  const TileT sq{carver.take<T>(Cfg::kRegionRows * TileT::kLd)};
  const TileT sdo{carver.take<T>(Cfg::kRegionRows * TileT::kLd)};
  T* const k1_stages = carver.take<T>(Cfg::kStages * BJ * TileT::kLd);
  T* const v1_stages = carver.take<T>(Cfg::kStages * BJ * TileT::kLd);
  float* const slse = carver.take<float>(Cfg::kRegionRows);     // lse of the region's queries
  float* const slse_lo = carver.take<float>(Cfg::kRegionRows);  // lse_lo of the region's queries
  float* const sdel = carver.take<float>(Cfg::kRegionRows);     // Delta of the region's queries
  auto sk1 = [&](int stage) { return TileT{k1_stages + stage * BJ * TileT::kLd}; };
  auto sv1 = [&](int stage) { return TileT{v1_stages + stage * BJ * TileT::kLd}; };
  float* const sm_base = det ? carver.take<float>(BM * CrossTile<DO, DP>::kWidth) : nullptr;
  uint4* const sx = kColWarps > 1 ? carver.take<uint4>(Cfg::kXWords / 4) : nullptr;

  // Iterations walk (query head hh, chunk c, k1/v1 block jb), jb fastest.
  struct Step {
    int hh, c, jb;
  };
  auto next = [&](Step s) {
    if (++s.jb == chunk_jblocks(s.c)) {
      s.jb = 0;
      if (++s.c == n_chunks) {
        s.c = 0;
        ++s.hh;
      }
    }
    return s;
  };

  // The region of (hh, c): query rows at positions k0 + chunk_lo + r, r < BM + chunk length - 1.
  auto load_region = [&](Step s) {
    const int h = tile.g * p.group + s.hh, rows = BM + chunk_hi(s.c) - chunk_lo(s.c);
    load_query_rows<kThreads>(p, tile.seq, h, k0 + chunk_lo(s.c), rows, Span{0, N - 1}, sq, sdo, slse, slse_lo, sdel);
  };
  auto load_kv1 = [&](Step s, int stage) {
    const int j0 = chunk_jlo(s.c) + s.jb * BJ;
    load_row_pair<kThreads>(sk1(stage), sv1(stage), p.k1, p.v1, tile.seq, tile.g, j0, BJ, Span{j0, chunk_jhi(s.c)}, D,
                            p.vec);
  };

  // ---- This warp's 16 rows (k positions) and, of the j block and of the output columns, its
  // part: j positions [j0w, j0w + WJ) of the block in S / dP and columns [out.col0, out.col0 + WC).
  // (kColWarps == 1: constants, so the single-warp form's code is what it was.)
  const int row_warp = kColWarps > 1 ? warp_id() % Cfg::kRowWarps : warp_id();
  const int col_warp = kColWarps > 1 ? warp_id() / Cfg::kRowWarps : 0;
  const int warp_row0 = 16 * row_warp, g4 = lane_id() >> 2;
  const int j0w = col_warp * WJ;
  KeyTile out = tile;  // the columns this warp accumulates and stores
  out.col0 = tile.col0 + col_warp * WC;
  SA_PATH(col_warp > 0, "output: second column warp");
  // sx slot of (buffer, this row warp, 16-j step kk, dA or P) for this lane.
  const auto x_slot = [&](int buf, int kk, int which) {
    return sx + (((buf * Cfg::kRowWarps + row_warp) * (BJ / 16) + kk) * 2 + which) * 32 + lane_id();
  };
  const int a_row = warp_row0 + (lane_id() & 15);
  int my_row[2];
  bool my_ok[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    my_row[h] = warp_row0 + g4 + 8 * h;
    my_ok[h] = k0 + my_row[h] < N;
  }
  const T* const k2_h[2] = {sk2.row(my_row[0]), sk2.row(my_row[1])};

  float acc_k[WC / 8][4], acc_v[WC / 8][4];
  zero_acc(acc_k);
  zero_acc(acc_v);

  load_own_rows<kThreads>(sk2, sv2, p.k2, p.v2, tile, BM, D, p.vec);
  load_kv1(Step{0, 0, 0}, 0);
  cp_async_commit();
  constexpr bool kHoldV2 = kHoldA && !kSm90Device;
  uint32_t a_k2[kHoldA ? DP / 16 : 1][4];   // kHoldA: the rows' A fragments of k2
  uint32_t a_v2[kHoldV2 ? DP / 16 : 1][4];  // kHoldV2: and of v2
  if constexpr (kHoldA) {
    cp_async_wait<0>();
    cta_sync();  // the k2 / v2 rows are visible (they stay, read-only)
    held_a<T, DP>(a_k2, sk2.row(a_row));
    if constexpr (kHoldV2) held_a<T, DP>(a_v2, sv2.row(a_row));
  }
  int it = 0;
  for (Step s{0, 0, 0}; s.hh < p.group; s = next(s), ++it) {
    const int stage = it % Cfg::kStages;
    SA_PATH(s.jb > 0, "pipeline: next j block");
    if (s.jb == 0) {
      SA_PATH(s.c > 0, "pipeline: next u chunk");
      SA_PATH(s.hh > 0 && s.c == 0, "loop: next query head");
      load_region(s);
      cp_async_commit();
    }
    const Step n = next(s);
    if (n.hh < p.group) {
      SA_PATH(true, "pipeline: prefetch");
      load_kv1(n, (it + 1) % Cfg::kStages);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    cta_sync();  // B1: k2/v2 rows, the region and this iteration's stage are visible

    const int j0 = chunk_jlo(s.c) + s.jb * BJ;
    for (int u = chunk_lo(s.c); u <= chunk_hi(s.c); ++u) {
      // Region row of query i = k + u for row r: r + (u - chunk_lo).
      const int shift = u - chunk_lo(s.c);
      const T* q_h[2];
      const T* do_h[2];
      bool ok[2];
      int jmin[2], jmax[2];
      float lse[2], lse_lo[2], delta[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // (kHoldV2, opaque: k0 + my_row[h], hoisted, is one register too many with v2 held; ptxas
        // spilled it)
        const int row = kHoldV2 ? opaque(my_row[h]) : my_row[h], rr = row + shift, i = k0 + row + u;
        q_h[h] = sq.row(rr);
        do_h[h] = sdo.row(rr);
        lse[h] = sload(slse + rr);
        lse_lo[h] = sload(slse_lo + rr);
        delta[h] = sload(sdel + rr);
        ok[h] = my_ok[h] && i >= 0 && i < N;
        SA_PATH(my_ok[h] && !ok[h], "mask: query outside the sequence");
        const Span window = band_span(p.prob.band1, i, N);
        jmin[h] = window.lo;
        jmax[h] = window.hi;
      }

      // S = (k2 ⊙ q_shift) @ k1_blk^T (or (k2 × q_shift) @ k1_blk^T), dP = (v2 ⊙ dout_shift) @ v1_blk^T,
      // over this warp's j positions (the stage's rows from j0w on).
      float s_[WJ / 8][4], dp[WJ / 8][4];
      const TileT k1w{sk1(stage).row(j0w)}, v1w{sv1(stage).row(j0w)};
      if constexpr (kHoldA) {
        zero_acc(s_);
        zero_acc(dp);
        const T* const q_row = sq.row(a_row + shift);
        const T* const do_row = sdo.row(a_row + shift);
#pragma unroll
        for (int kt = 0; kt < DP / 16; ++kt) {
          uint32_t a[4], e[4];  // k2 ⊙ q_shift (the product commutes exactly) and v2 ⊙ dout_shift
          q_times_k2<T, DP, true, false>(a, a_k2, nullptr, q_row, kt);
          if constexpr (kHoldV2) {
            q_times_k2<T, DP, true, false>(e, a_v2, nullptr, do_row, kt);
          } else {
            ldsm_a_product<T>(e, sv2.row(a_row), do_row, kt * 16);
          }
          s_dp_kstep<T, DP, WJ>(s_, dp, a, e, k1w, v1w, 0, kt);
        }
      } else {
        const LogitRows<T> logit_rows{det, D, sq.row(a_row + shift), sk2.row(a_row), q_h, k2_h};
        logits_and_dp<T, DP, WJ>(s_, dp, logit_rows, sv2.row(a_row), sdo.row(a_row + shift), k1w, v1w);
      }

      // P and dA = P (dP - Delta), zero outside the window; P overwrites S, dA overwrites dP.
#pragma unroll
      for (int nt = 0; nt < WJ / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int h = i >> 1, j = j0 + j0w + nt * 8 + frag_col(i);
          const bool in = ok[h] && j >= jmin[h] && j <= jmax[h];
          SA_PATH(ok[h] && !in, "mask: j outside the window");
          s_[nt][i] = in ? prob_from_lse(logit(s_[nt][i], p.prob.scale), lse[h], lse_lo[h]) : 0.f;
          dp[nt][i] = s_[nt][i] * (dp[nt][i] - delta[h]);
        }
      }

      // acc_k += (dA @ k1_blk) ⊙ q_shift (determinant: q_shift × M, below); acc_v += (P @ v1_blk) ⊙ dout_shift.
      // dA and P of the whole j block as A operands (16 positions a step): this warp's own steps
      // from registers; with kColWarps > 1 every step through sx, where the warps of the same rows meet.
      uint32_t da[BJ / 16][4], pa[BJ / 16][4];
      const int buf = u & 1;  // sx's buffer of this u
      const auto u_slot = [&](int kk, int which) { return x_slot(buf, kk, which); };
      block_step_operands<T, WJ / 16, BJ / 16>(da, pa, dp, s_, j0w / 16, u_slot);  // [X] if kColWarps > 1
      if constexpr (det) {
        const CrossTile<DO, DP> sm(sm_base, tile.col0);
        const auto q_at = [&](int h, int, int ch) { return Elem<T>::to_float(sload(q_h[h] + ch)); };
        const auto m_at = [&](int, int r, int ch) { return sload(sm.at(r, ch)); };
        add_cross_m<T, DP, BJ, DO>(acc_k, sm, warp_row0, da, sk1(stage), tile.col0, D, q_at, m_at);
      } else {
        add_product_times_rows<T>(acc_k, da, sk1(stage), out.col0, q_h);
      }
      add_product_times_rows<T>(acc_v, pa, sv1(stage), out.col0, do_h);
    }
    cta_sync();  // B2: every warp is done with this stage and (if the chunk ends) the region
  }

  store_key_grads<T>(acc_k, acc_v, p.dk2, p.dv2, out, my_row, p.prob.scale, D);
}

}  // namespace simplicial_attn::cuda
