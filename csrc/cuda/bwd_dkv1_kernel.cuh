// Backward, dk1 and dv1: per tile of k1/v1 positions j of one kv head g. For a query block of
// positions i and an offset u = i - k (k = i - u, the k2/v2 position), the products
//
//     aq[i]  = q[i] ⊙ k2[i - u]          bdo[i] = dout[i] ⊙ v2[i - u]          (built in shared memory;
//                                          determinant logits: aq[i] = k2[i - u] × q[i] per chunk)
//
// turn every term into a plain tensor-core product over the query block:
//
//     S^T  = k1_tile @ aq^T      P^T = exp(scale * S^T - lse[i] - lse_lo[i])   (numerics.cuh)
//     dP^T = v1_tile @ bdo^T     dA^T = P^T * (dP^T - Delta[i])
//     acc_k += dA^T @ aq          dk1 = scale * acc_k
//     acc_v += P^T  @ bdo         dv1 = acc_v
//
// GQA: the query heads of the group are a loop inside the CTA (no atomics; the CTA owns its rows).
// Packed sequences: grid.x runs over (sequence, tile of j positions); a tile past its sequence's
// end exits at once.
// The host swaps (k1, v1) and (k2, v2) when w2 > w1, so u runs over the smaller window and the
// query blocks over the larger one.
//
// Loop: query head, query block (q, dout, lse, Delta loaded), u-chunk (k2 / v2 region of the block
// loaded), u (products built, then used). Loads are synchronous (cp.async, wait, barrier): the
// products must be rebuilt for every u anyway, which dominates. At DP <= 128 (trilinear) each thread
// holds its q / dout vectors over the block (kHoldQuery), so a product reads one shared vector, not two.
#pragma once

#include "cross.cuh"
#include "fragments.cuh"
#include "key_tile.cuh"
#include "logit_operand.cuh"
#include "numerics.cuh"

namespace simplicial_attn::cuda {

template <int DP>
struct Dkv1Config {
  static constexpr int kHeadDim = DP;
  static constexpr int kRows = DP <= 128 ? 64 : 32;  // j positions, 16 per row warp
  static constexpr int kRowWarps = kRows / 16;
  // The CTA computes kOutCols output columns of dk1 and dv1 (above 128 they are split over grid.z).
  // At DP = 128 two fp32 accumulators of 128 columns do not fit one warp's registers, so kColWarps
  // = 2 warps share each 16 rows: each computes S^T / dP^T for its half of the query block, the
  // halves meet in shared memory (sx) as mma A operands, and each accumulates its 64 columns.
  // S and dP are computed once per CTA (a split over grid.z would compute them once per half).
  // With 64 accumulator registers a warp then holds its rows' k1 / v1 A fragments in registers
  // for the whole kernel (kHoldA), and sx takes the shared memory of sk1, dead after that.
  static constexpr int kOutCols = DP <= 128 ? DP : 64;
  static constexpr int kColWarps = DP == 128 ? 2 : 1;
  static constexpr bool kHoldA = kColWarps > 1;
  static constexpr int kWarpCols = kOutCols / kColWarps;
  static constexpr int kWarps = kRowWarps * kColWarps;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockI = DP <= 128 ? 32 : 16;  // query positions per block
  static constexpr int kWarpI = kBlockI / kColWarps;   // of them, per warp in S^T / dP^T
  static constexpr int kChunkU = DP <= 128 ? 16 : 8;
  static constexpr int kRegionRows = kBlockI + kChunkU - 1;
  static constexpr int kRowBytes = (DP + 8) * 2;
  // kHoldQuery: the products' elements a thread builds are the same (row, 8 columns) for every u,
  // so with the trilinear logits its q / dout vectors are read from shared memory once per query
  // block and held (kQuerySteps of each), not re-read for every u. Only where they are few
  // (DP = 64 and 128: 2 x 2 vectors, 16 registers).
  static constexpr int kQuerySteps = kBlockI * (DP / 8) / kThreads;
  static constexpr bool kHoldQuery = DP <= 128 && kQuerySteps * kThreads == kBlockI * (DP / 8) && kQuerySteps <= 2;
  // sx: per row warp, per 16 queries, dA^T and P^T as A fragments (4 x 32 bits per lane).
  static constexpr int kXWords = kColWarps > 1 ? kRowWarps * (kBlockI / 16) * 2 * 32 * 4 : 0;
  static constexpr int kSmemBytes =
      kRowBytes * (2 * kRows + 2 * kBlockI + 2 * kRegionRows + 2 * kBlockI) + 3 * ((kBlockI * 4 + 15) / 16 * 16);
  static_assert(kWarpI % 16 == 0 && kWarpCols % 16 == 0, "whole mma tiles per warp");
  static_assert(kXWords == 0 || (kHoldA && kXWords * 4 <= kRowBytes * kRows), "sx lives in sk1's bytes");
  static_assert(kSmemBytes <= kSmemLimit, "dk1/dv1 tiles exceed the shared memory of an sm_86 block");
};

struct Dkv1KernelParams : TileParams, GradInputs {
  MutTensorRef dk1, dv1;
};

template <class T, class Cfg>
SA_GLOBAL(Cfg::kThreads)
dkv1_kernel(const Dkv1KernelParams p) {
  constexpr int DP = Cfg::kHeadDim, BM = Cfg::kRows, BI = Cfg::kBlockI, CU = Cfg::kChunkU, DO = Cfg::kOutCols;
  constexpr int WI = Cfg::kWarpI, WC = Cfg::kWarpCols, kColWarps = Cfg::kColWarps;
  constexpr bool kHoldA = Cfg::kHoldA;
  constexpr int kThreads = Cfg::kThreads;
  using TileT = Tile<T, DP>;

  // ---- The CTA's tile: j positions [tile.r0, tile.r_last] of kv head tile.g (key_tile.cuh).
  const KeyTile tile = key_tile<BM, DO>(p);
  if (tile.past_end()) return;  // the whole CTA, before any barrier
  const int N = tile.seq.len, D = p.D;
  const bool det = p.prob.determinant;
  const int L1 = p.prob.band1.left, R1 = p.prob.band1.right;
  // Queries i whose k1 window holds some j of the tile, and their offsets u = i - k in the k2 band
  // with some k in [0, N).
  const Span queries = band_union(band_reverse(p.prob.band1), tile.r0, tile.r_last, N);
  const int i_lo = queries.lo, i_hi = queries.hi;
  const int n_iblocks = ceil_div(i_hi - i_lo + 1, BI);
  const Span offsets = offset_span(p.prob.band2, i_lo, i_hi, N);
  const int u_lo = offsets.lo, u_hi = offsets.hi;
  const int n_chunks = ceil_div(u_hi - u_lo + 1, CU);

  // ---- Shared memory. Owners and barriers:
  //   sk1, sv1         this CTA's rows, written once (prologue), read-only afterwards; with kHoldA
  //                    read only in the prologue (to registers), before its barrier [H].
  //   sq, sdo, slse,   the query block: written when a block starts, read until the block's last
  //   sdel             [C] barrier; rewritten only after it. (kHoldQuery: sq / sdo read into
  //                    registers after the block's first [L], and by the determinant's products.)
  //   sk2, sv2         the region of the u-chunk: written when a chunk starts (after [C] of the
  //                    previous u), read while building products; rewritten after the chunk's last [C].
  //   saq, sbdo        the products of one u: written by all threads after [C] of the previous u,
  //                    read by the mma after [P].
  //   sx               (kColWarps > 1, in sk1's bytes) dA^T / P^T of one u as A fragments: written
  //                    by each warp for its queries after [P] (so after [H]), read by the warps of
  //                    the same rows after [X]; rewritten after [C].
  SmemCarver carver{dynamic_smem()};
  const TileT sk1{carver.take<T>(BM * TileT::kLd)};
  const TileT sv1{carver.take<T>(BM * TileT::kLd)};
  const TileT sq{carver.take<T>(BI * TileT::kLd)};
  const TileT sdo{carver.take<T>(BI * TileT::kLd)};
  const TileT sk2{carver.take<T>(Cfg::kRegionRows * TileT::kLd)};
  const TileT sv2{carver.take<T>(Cfg::kRegionRows * TileT::kLd)};
  const TileT saq{carver.take<T>(BI * TileT::kLd)};
  const TileT sbdo{carver.take<T>(BI * TileT::kLd)};
  float* const slse = carver.take<float>(BI);     // lse of the block's queries
  float* const slse_lo = carver.take<float>(BI);  // lse_lo of the block's queries
  float* const sdel = carver.take<float>(BI);     // Delta of the block's queries
  uint4* const sx = kColWarps > 1 ? reinterpret_cast<uint4*>(sk1.row(0)) : nullptr;

  // ---- This warp's 16 rows (j positions) and, of the query block and of the output columns, its
  // part: queries [q0, q0 + WI) in S^T / dP^T and columns [col0, col0 + WC) of dk1 / dv1.
  // (kColWarps == 1: constants, so the single-warp form's code is what it was.)
  const int row_warp = kColWarps > 1 ? warp_id() % Cfg::kRowWarps : warp_id();
  const int col_warp = kColWarps > 1 ? warp_id() / Cfg::kRowWarps : 0;
  const int warp_row0 = 16 * row_warp, g4 = lane_id() >> 2;
  const int a_row = warp_row0 + (lane_id() & 15);
  const int my_row[2] = {warp_row0 + g4, warp_row0 + g4 + 8};
  const int my_j[2] = {tile.r0 + my_row[0], tile.r0 + my_row[1]};
  const int q0 = col_warp * WI;
  KeyTile out = tile;  // the columns this warp stores
  out.col0 = tile.col0 + col_warp * WC;
  SA_PATH(col_warp > 0, "output: second column warp");
  // sx slot of (this row warp, 16-query step kk, dA^T or P^T) for this lane.
  const auto x_slot = [&](int kk, int which) {
    return sx + ((row_warp * (BI / 16) + kk) * 2 + which) * 32 + lane_id();
  };

  float acc_k[WC / 8][4], acc_v[WC / 8][4];
  zero_acc(acc_k);
  zero_acc(acc_v);

  load_own_rows<kThreads>(sk1, sv1, p.k1, p.v1, tile, BM, D, p.vec);
  uint32_t a_k1[kHoldA ? DP / 16 : 1][4], a_v1[kHoldA ? DP / 16 : 1][4];  // kHoldA: the rows' A fragments
  if constexpr (kHoldA) {
    cp_async_commit();
    cp_async_wait<0>();
    cta_sync();  // the k1 / v1 rows are visible
    held_a<T, DP>(a_k1, sk1.row(a_row));
    held_a<T, DP>(a_v1, sv1.row(a_row));
    cta_sync();  // [H]: every warp holds its fragments; sk1's bytes become sx
  }
  // kHeldQuery (Cfg::kHoldQuery resolved for this architecture): this thread's q / dout vectors
  // of the query block (read after its [L]). Not on sm_90 at DP = 128, where ptxas spills 4 B
  // for them (sm_90's fast path is Triton's).
  constexpr bool kHeldQuery = Cfg::kHoldQuery && !(kSm90Device && DP == 128);
  constexpr int kHeldSteps = kHeldQuery ? Cfg::kQuerySteps : 1;
  uint4 held_q[kHeldSteps] = {}, held_do[kHeldSteps] = {};
  for (int hh = 0; hh < p.group; ++hh) {
    const int h = tile.g * p.group + hh;
    for (int ib = 0; ib < n_iblocks; ++ib) {
      const int i0 = i_lo + ib * BI;
      for (int c = 0; c < n_chunks; ++c) {
        const int c_lo = u_lo + c * CU, c_hi = imin(c_lo + CU - 1, u_hi);
        SA_PATH(hh > 0 && ib == 0 && c == 0, "loop: next query head");
        SA_PATH(ib > 0 && c == 0, "loop: next query block");
        SA_PATH(c > 0, "loop: next u chunk");
        if (c == 0) load_query_rows<kThreads>(p, tile.seq, h, i0, BI, Span{i0, i_hi}, sq, sdo, slse, slse_lo, sdel);
        // The region of the chunk for the block at i0: k2/v2 rows at positions i0 - c_hi + r.
        load_row_pair<kThreads>(sk2, sv2, p.k2, p.v2, tile.seq, tile.g, i0 - c_hi, BI + c_hi - c_lo, Span{0, N - 1}, D,
                                p.vec);
        cp_async_commit();
        cp_async_wait<0>();
        cta_sync();  // [L]: k1/v1 rows, the query block and the region are visible
        if constexpr (kHeldQuery) {
          if (c == 0) {
#pragma unroll
            for (int st = 0; st < kHeldSteps; ++st) {
              const int idx = thread_id() + st * kThreads, r = idx / (DP / 8), col = (idx % (DP / 8)) * 8;
              held_q[st] = sload(reinterpret_cast<const uint4*>(sq.row(r) + col));
              held_do[st] = sload(reinterpret_cast<const uint4*>(sdo.row(r) + col));
            }
          }
        }

        for (int u = c_lo; u <= c_hi; ++u) {
          // Products of query row r with k2/v2 at k = i0 + r - u: region row r + (c_hi - u).
          if (kHeldQuery && !det) {
            SA_PATH(true, "operands: query vectors held over the block");
#pragma unroll
            for (int st = 0; st < kHeldSteps; ++st) {
              const int idx = thread_id() + st * kThreads, r = idx / (DP / 8), col = (idx % (DP / 8)) * 8;
              const int kr = r + c_hi - u;
              sstore(reinterpret_cast<uint4*>(saq.row(r) + col),
                     product8<T>(held_q[st], sload(reinterpret_cast<const uint4*>(sk2.row(kr) + col))));
              sstore(reinterpret_cast<uint4*>(sbdo.row(r) + col),
                     product8<T>(held_do[st], sload(reinterpret_cast<const uint4*>(sv2.row(kr) + col))));
            }
          } else {
            SA_PATH(true, "operands: query vectors read every u");
            for (int idx = thread_id(); idx < BI * (DP / 8); idx += kThreads) {
              const int r = idx / (DP / 8), col = (idx % (DP / 8)) * 8;
              if (det)
                store_cross8(saq.row(r) + col, sk2.row(r + c_hi - u), sq.row(r), col, D);
              else
                store_product8(saq.row(r) + col, sq.row(r) + col, sk2.row(r + c_hi - u) + col);
              store_product8(sbdo.row(r) + col, sdo.row(r) + col, sv2.row(r + c_hi - u) + col);
            }
          }
          cta_sync();  // [P]: the products are visible

          // S^T = k1_tile @ aq^T and dP^T = v1_tile @ bdo^T: [16 j rows, WI queries] per warp.
          float s[WI / 8][4], dp[WI / 8][4];
          zero_acc(s);
          zero_acc(dp);
          if constexpr (kHoldA) {
#pragma unroll
            for (int kt = 0; kt < DP / 16; ++kt) s_dp_kstep<T, DP, WI>(s, dp, a_k1[kt], a_v1[kt], saq, sbdo, q0, kt);
          } else {
#pragma unroll 2
            for (int kt = 0; kt < DP / 16; ++kt) {
              uint32_t a[4], e[4];
              ldsm_a(a, sk1.row(a_row), kt * 16);
              ldsm_a(e, sv1.row(a_row), kt * 16);
              s_dp_kstep<T, DP, WI>(s, dp, a, e, saq, sbdo, q0, kt);
            }
          }

          // P^T and dA^T, zero unless j is in the window of i and k = i - u lies in [0, N).
#pragma unroll
          for (int nt = 0; nt < WI / 8; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int h2 = i >> 1, col = q0 + nt * 8 + frag_col(i), qi = i0 + col, k = qi - u, j = my_j[h2];
              const bool in = j < N && qi <= i_hi && j >= qi - L1 && j <= qi + R1 && k >= 0 && k < N;
              SA_PATH(j < N && qi > i_hi, "mask: query past the last block row");
              SA_PATH(j < N && qi <= i_hi && (j < qi - L1 || j > qi + R1), "mask: j outside the window");
              SA_PATH(j < N && qi <= i_hi && (k < 0 || k >= N), "mask: k outside the sequence");
              s[nt][i] =
                  in ? prob_from_lse(logit(s[nt][i], p.prob.scale), sload(slse + col), sload(slse_lo + col)) : 0.f;
              dp[nt][i] = s[nt][i] * (dp[nt][i] - sload(sdel + col));
            }
          }

          // dA^T and P^T of the whole query block as A operands (16 queries a step): this warp's
          // own steps from registers; with kColWarps > 1 every step through sx, where the warps of
          // the same rows meet.
          uint32_t da[BI / 16][4], pa[BI / 16][4];
          block_step_operands<T, WI / 16, BI / 16>(da, pa, dp, s, q0 / 16, x_slot);  // [X] if kColWarps > 1

          // acc_k += dA^T @ aq;  acc_v += P^T @ bdo over this warp's columns (aq, bdo read k-major:
          // row = query).
#pragma unroll
          for (int nt = 0; nt < WC / 8; nt += 2) {
#pragma unroll
            for (int kk = 0; kk < BI / 16; ++kk) {
              uint32_t b0[2], b1[2];
              ldsm_b_kmajor(b0, b1, saq, kk * 16, out.col0 + nt * 8);
              mma_acc<T>(acc_k[nt], da[kk], b0);
              mma_acc<T>(acc_k[nt + 1], da[kk], b1);
              ldsm_b_kmajor(b0, b1, sbdo, kk * 16, out.col0 + nt * 8);
              mma_acc<T>(acc_v[nt], pa[kk], b0);
              mma_acc<T>(acc_v[nt + 1], pa[kk], b1);
            }
          }
          cta_sync();  // [C]: every warp is done with the products and sx (and, at the end of a
                       // chunk or block, with the region and the query block)
        }
      }
    }
  }

  // At the positions the masks used (my_j): the tile rows (my_row) are not kept alive for this.
  store_key_grads_at<T>(acc_k, acc_v, p.dk1, p.dv1, out, my_j, p.prob.scale, D);
}

}  // namespace simplicial_attn::cuda
