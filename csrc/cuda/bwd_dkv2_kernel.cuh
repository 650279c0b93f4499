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
// back from a shared fp32 tile (CrossTile, tile.cuh); the logit form is a template parameter, as in
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

#include "numerics.cuh"
#include "tile.cuh"

namespace simplicial_attn::cuda {

template <int DP>
struct Dkv2Config {
  static constexpr int kHeadDim = DP;
  static constexpr int kRows = DP <= 64 ? 64 : (DP <= 128 ? 32 : 16);  // k positions, 16 per warp
  static constexpr int kWarps = kRows / 16;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockJ = DP <= 64 ? 64 : (DP <= 128 ? 32 : 16);
  static constexpr int kChunkU = DP <= 128 ? 16 : 8;
  static constexpr int kRegionRows = kRows + kChunkU - 1;
  static constexpr int kStages = 2;
  // Two fp32 accumulators (dk2, dv2): above 64 columns they are split over grid.z.
  static constexpr int kOutCols = DP <= 64 ? DP : 64;
  static constexpr int kRowBytes = (DP + 8) * 2;
  static constexpr int kSmemBytes =
      kRowBytes * (2 * kRows + 2 * kRegionRows + 2 * kStages * kBlockJ) + 3 * ((kRegionRows * 4 + 15) / 16 * 16);
  // Determinant logits add the CrossTile of M (fp32, all rows).
  static constexpr int kSmemBytesDet = kSmemBytes + kRows * CrossTile<kOutCols, DP>::kWidth * 4;
  static_assert(kSmemBytesDet <= kSmemLimit, "dk2/dv2 tiles exceed the shared memory of an sm_86 block");
};

struct Dkv2KernelParams {
  TensorRef q, dout, k1, k2, v1, v2;
  MutTensorRef dk2, dv2;
  const float* lse;     // [B, Hq, N], natural log
  const float* lse_lo;  // [B, Hq, N]
  const float* delta;   // [B, Hq, N]
  int N, Hq, group, D;
  ProblemDesc prob;
  int pos_tiles;  // ceil(max sequence length / kRows)
  bool vec;
};

template <class T, class Cfg, bool kDet>
SA_GLOBAL(Cfg::kThreads)
dkv2_kernel(const Dkv2KernelParams p) {
  constexpr int DP = Cfg::kHeadDim, BM = Cfg::kRows, BJ = Cfg::kBlockJ, CU = Cfg::kChunkU, DO = Cfg::kOutCols;
  constexpr int kThreads = Cfg::kThreads;
  using TileT = Tile<T, DP>;

  // ---- The CTA's tile: grid.x = (sequence, tile of k positions [k0, k0 + BM)), grid.y = kv head,
  // grid.z = output columns [col0, col0 + DO).
  const SeqSpan seq = seq_span(p.prob, p.N, block_x() / p.pos_tiles);
  const int g = block_y();
  const int N = seq.len, D = p.D, col0 = block_z() * DO;
  const int k0 = (block_x() % p.pos_tiles) * BM, k_last = imin(k0 + BM - 1, N - 1);
  SA_PATH(k0 >= N, "tile: past the sequence's end");
  if (k0 >= N) return;  // the whole CTA, before any barrier
  constexpr bool det = kDet;
  SA_PATH(col0 > 0, "output: second column half");
  SA_PATH(det, "logits: determinant");
  const int L1 = p.prob.band1.left, R1 = p.prob.band1.right, L2 = p.prob.band2.left, R2 = p.prob.band2.right;
  SA_PATH(k0 + BM > N, "tile: last partial position tile");
  // Offsets u = i - k in the k2 band with some i = k + u in [0, N).
  const int u_lo = imax(-R2, -k_last), u_hi = imin(L2, N - 1 - k0);
  const int n_chunks = ceil_div(u_hi - u_lo + 1, CU);
  auto chunk_lo = [&](int c) { return u_lo + c * CU; };
  auto chunk_hi = [&](int c) { return imin(u_lo + c * CU + CU - 1, u_hi); };
  // k1/v1 positions j of chunk c: the union of the windows J(i) of its queries i.
  auto chunk_jlo = [&](int c) { return imax(0, imax(0, k0 + chunk_lo(c)) - L1); };
  auto chunk_jhi = [&](int c) { return imin(N - 1, imin(N - 1, k_last + chunk_hi(c)) + R1); };
  auto chunk_jblocks = [&](int c) { return ceil_div(chunk_jhi(c) - chunk_jlo(c) + 1, BJ); };

  // ---- Shared memory. Owners and barriers (B1 / B2 in the loop):
  //   sk2, sv2             this CTA's rows, written once (prologue), read-only afterwards.
  //   sq, sdo, slse, sdel  region of the current (head, chunk): rewritten at its first iteration,
  //                        after B2 of the previous iteration (the last reader); read after B1.
  //   k1/v1 stage it % 2   filled during iteration it - 1, read after B1 of iteration it.
  //   sm                   (determinant only) M of one u: written after the previous u's [X2],
  //                        read after [X1].
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

  auto key_rows = [=](const TensorRef& t) {
    return [=](int r) -> const T* { return k0 + r < N ? row_ptr<T>(t, seq, k0 + r, g) : nullptr; };
  };
  // The region of (hh, c): query rows at positions base + r, r < BM + chunk length - 1.
  auto load_region = [&](Step s) {
    const int h = g * p.group + s.hh, base = k0 + chunk_lo(s.c), rows = BM + chunk_hi(s.c) - chunk_lo(s.c);
    auto src = [=](const TensorRef& t) {
      return [=](int r) -> const T* {
        const int i = base + r;
        return (i >= 0 && i < N) ? row_ptr<T>(t, seq, i, h) : nullptr;
      };
    };
    load_tile<kThreads>(sq, rows, D, p.vec, p.q.ptr, src(p.q));
    load_tile<kThreads>(sdo, rows, D, p.vec, p.dout.ptr, src(p.dout));
    for (int r = thread_id(); r < rows; r += kThreads) {
      const int i = base + r;
      const int64_t stat = stat_index(seq, p.Hq, p.N, h, i);
      const bool in = i >= 0 && i < N;
      sstore(slse + r, in ? gload(p.lse + stat) : 0.f);
      sstore(slse_lo + r, in ? gload(p.lse_lo + stat) : 0.f);
      sstore(sdel + r, in ? gload(p.delta + stat) : 0.f);
    }
  };
  auto load_kv1 = [&](Step s, int stage) {
    const int j0 = chunk_jlo(s.c) + s.jb * BJ, j_hi = chunk_jhi(s.c);
    auto src = [=](const TensorRef& t) {
      return [=](int r) -> const T* { return j0 + r <= j_hi ? row_ptr<T>(t, seq, j0 + r, g) : nullptr; };
    };
    load_tile<kThreads>(sk1(stage), BJ, D, p.vec, p.k1.ptr, src(p.k1));
    load_tile<kThreads>(sv1(stage), BJ, D, p.vec, p.v1.ptr, src(p.v1));
  };

  // ---- This lane's two rows (k positions) and its ldmatrix row.
  const int warp_row0 = 16 * warp_id(), g4 = lane_id() >> 2;
  const int a_row = warp_row0 + (lane_id() & 15);
  int my_row[2];
  bool my_ok[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    my_row[h] = warp_row0 + g4 + 8 * h;
    my_ok[h] = k0 + my_row[h] < N;
  }
  const T* const k2_h[2] = {sk2.row(my_row[0]), sk2.row(my_row[1])};

  float acc_k[DO / 8][4], acc_v[DO / 8][4];
#pragma unroll
  for (int nt = 0; nt < DO / 8; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc_k[nt][i] = acc_v[nt][i] = 0.f;

  load_tile<kThreads>(sk2, BM, D, p.vec, p.k2.ptr, key_rows(p.k2));
  load_tile<kThreads>(sv2, BM, D, p.vec, p.v2.ptr, key_rows(p.v2));
  load_kv1(Step{0, 0, 0}, 0);
  cp_async_commit();
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
        const int rr = my_row[h] + shift, i = k0 + my_row[h] + u;
        q_h[h] = sq.row(rr);
        do_h[h] = sdo.row(rr);
        lse[h] = sload(slse + rr);
        lse_lo[h] = sload(slse_lo + rr);
        delta[h] = sload(sdel + rr);
        ok[h] = my_ok[h] && i >= 0 && i < N;
        SA_PATH(my_ok[h] && !ok[h], "mask: query outside the sequence");
        jmin[h] = imax(0, i - L1);
        jmax[h] = imin(N - 1, i + R1);
      }

      // S = (k2 ⊙ q_shift) @ k1_blk^T (or (k2 × q_shift) @ k1_blk^T), dP = (v2 ⊙ dout_shift) @ v1_blk^T.
      float s_[BJ / 8][4], dp[BJ / 8][4];
      const LogitRows<T> lr{det, D, sq.row(a_row + shift), sk2.row(a_row), q_h, k2_h};
      logits_and_dp<T, DP, BJ>(s_, dp, lr, sv2.row(a_row), sdo.row(a_row + shift), sk1(stage), sv1(stage));

      // P and dA = P (dP - Delta), zero outside the window; P overwrites S, dA overwrites dP.
#pragma unroll
      for (int nt = 0; nt < BJ / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int h = i >> 1, j = j0 + nt * 8 + frag_col(i);
          const bool in = ok[h] && j >= jmin[h] && j <= jmax[h];
          SA_PATH(ok[h] && !in, "mask: j outside the window");
          s_[nt][i] = in ? prob_from_lse(logit(s_[nt][i], p.prob.scale), lse[h], lse_lo[h]) : 0.f;
          dp[nt][i] = s_[nt][i] * (dp[nt][i] - delta[h]);
        }
      }

      // acc_k += (dA @ k1_blk) ⊙ q_shift (determinant: q_shift × M, below); acc_v += (P @ v1_blk) ⊙ dout_shift.
      uint32_t da[BJ / 16][4], pa[BJ / 16][4];
#pragma unroll
      for (int kk = 0; kk < BJ / 16; ++kk) {
        c_to_a<T>(da[kk], dp[2 * kk], dp[2 * kk + 1]);
        c_to_a<T>(pa[kk], s_[2 * kk], s_[2 * kk + 1]);
      }
#pragma unroll
      for (int nt = 0; nt < DO / 8; nt += 2) {
        float tk0[4] = {0.f, 0.f, 0.f, 0.f}, tk1[4] = {0.f, 0.f, 0.f, 0.f};
        float tv0[4] = {0.f, 0.f, 0.f, 0.f}, tv1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int kk = 0; kk < BJ / 16; ++kk) {
          uint32_t b0[2], b1[2];
          if constexpr (!det) {
            ldsm_b_kmajor(b0, b1, sk1(stage), kk * 16, col0 + nt * 8);
            mma_acc<T>(tk0, da[kk], b0);
            mma_acc<T>(tk1, da[kk], b1);
          }
          ldsm_b_kmajor(b0, b1, sv1(stage), kk * 16, col0 + nt * 8);
          mma_acc<T>(tv0, pa[kk], b0);
          mma_acc<T>(tv1, pa[kk], b1);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int c = col0 + nt * 8 + frag_col(2 * h);
          const float2 d0 = sload_pair(do_h[h], c), d1 = sload_pair(do_h[h], c + 8);
          if constexpr (!det) {
            const float2 q0 = sload_pair(q_h[h], c), q1 = sload_pair(q_h[h], c + 8);
            acc_k[nt][2 * h] += tk0[2 * h] * q0.x;
            acc_k[nt][2 * h + 1] += tk0[2 * h + 1] * q0.y;
            acc_k[nt + 1][2 * h] += tk1[2 * h] * q1.x;
            acc_k[nt + 1][2 * h + 1] += tk1[2 * h + 1] * q1.y;
          }
          acc_v[nt][2 * h] += tv0[2 * h] * d0.x;
          acc_v[nt][2 * h + 1] += tv0[2 * h + 1] * d0.y;
          acc_v[nt + 1][2 * h] += tv1[2 * h] * d1.x;
          acc_v[nt + 1][2 * h + 1] += tv1[2 * h + 1] * d1.y;
        }
      }
      if constexpr (det) {
        const CrossTile<DO, DP> sm(sm_base, col0);
        store_m<T, DP, BJ, DO>(sm, warp_row0, da, sk1(stage));
        cta_sync();  // [X1]: M of every row is in sm
#pragma unroll
        for (int nt = 0; nt < DO / 8; ++nt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            // (q × M)[c] = q[s(c)] M[s(s(c))] - q[s(s(c))] M[s(c)]
            const int h = i >> 1, r = warp_row0 + frag_row(i), c = col0 + nt * 8 + frag_col(i);
            if (c >= D) continue;
            const int c1 = chunk_next(c), c2 = chunk_prev(c);
            acc_k[nt][i] += Elem<T>::to_float(sload(q_h[h] + c1)) * sload(sm.at(r, c2)) -
                            Elem<T>::to_float(sload(q_h[h] + c2)) * sload(sm.at(r, c1));
          }
        }
        cta_sync();  // [X2]: every warp is done reading sm
      }
    }
    cta_sync();  // B2: every warp is done with this stage and (if the chunk ends) the region
  }

  T* dk_row[2];
  T* dv_row[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    dk_row[h] = my_ok[h] ? row_ptr<T>(p.dk2, seq, k0 + my_row[h], g) : nullptr;
    dv_row[h] = my_ok[h] ? row_ptr<T>(p.dv2, seq, k0 + my_row[h], g) : nullptr;
  }
  const float scale_k[2] = {p.prob.scale, p.prob.scale}, one[2] = {1.f, 1.f};
  store_acc_rows<T>(acc_k, dk_row, scale_k, col0, D);
  store_acc_rows<T>(acc_v, dv_row, one, col0, D);
}

}  // namespace simplicial_attn::cuda
