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
//           (determinant logits: k2[i - u] × q per 3-channel chunk instead of q ⊙ k2, tile.cuh)
//     P   = online softmax of scale * S over the joint (j, k) window, fp32 (numerics.cuh)
//     acc = acc * rescale + (P @ v1[j-block]) ⊙ v2[i - u]
//
// out = acc / l, lse = m + ln l (natural log, float32 [B, Hq, N]) and its residual lse_lo
// (numerics.cuh). For D > 128 the output columns are split over grid.z (see FwdConfig::kOutCols).
// Packed sequences: grid.x runs over (sequence, position tile); positions are the sequence's own,
// windows end at its boundaries, and a tile past its end exits at once.
//
// Loop order: u-chunks of kChunkU offsets (outer), j-blocks of kBlockJ positions, u (inner). A
// u-chunk needs k2/v2 rows [p0 - u_hi, p_last - u_lo] (a "region", kRows + kChunkU - 1 rows at
// most) and k1/v1 blocks stream through a 2-stage cp.async pipeline, so each k1/v1 block is read
// from global memory once per u-chunk and reused for all its offsets. The host makes w2 <= w1
// (swapping the symmetric roles of (k1, v1) and (k2, v2)), so u runs over the smaller window.
//
// Each warp owns 16 rows; a lane holds two of them (fragment rows g and g + 8, see common.cuh) and
// all their softmax state, so no row statistics are shared between warps.
#pragma once

#include "numerics.cuh"
#include "tile.cuh"

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

struct FwdKernelParams {
  TensorRef q, k1, k2, v1, v2;
  MutTensorRef out;
  float* lse;     // contiguous [B, Hq, N]
  float* lse_lo;  // contiguous [B, Hq, N]
  int N, Hq, group, D;
  ProblemDesc prob;  // windows, scale, logits, sequence layout (params.h)
  int log2_heads;    // a tile holds 1 << log2_heads query heads (1: sequence tiling)
  int head_blocks;   // tiles along the heads of one group: ceil(group / heads)
  int pos_tiles;     // tiles along a sequence: ceil(max length / positions per tile)
  bool vec;          // 16-byte cp.async loads allowed (D % 8 == 0, aligned rows)
};

template <class T, class Cfg>
SA_GLOBAL(Cfg::kThreads)
fwd_kernel(const FwdKernelParams p) {
  constexpr int DP = Cfg::kHeadDim, BM = Cfg::kRows, BJ = Cfg::kBlockJ, CU = Cfg::kChunkU, DO = Cfg::kOutCols;
  constexpr int kThreads = Cfg::kThreads;
  constexpr float kNegInf = -__builtin_huge_valf();
  using TileT = Tile<T, DP>;

  // ---- The CTA's tile (positions, heads, loop bounds: QueryTile in tile.cuh); grid.z = output
  // columns [col0, col0 + DO).
  const QueryTile qt = query_tile<BM>(p);
  if (qt.past_end()) return;  // the whole CTA, before any barrier
  const SeqSpan seq = qt.seq;
  const int g = qt.g, positions = qt.positions;
  const RowTile rt = qt.rt;
  const int N = seq.len, D = p.D, col0 = block_z() * DO;
  const bool det = p.prob.determinant;
  SA_PATH(col0 > 0, "output: second column half");
  SA_PATH(det, "logits: determinant");
  const int L1 = p.prob.band1.left, R1 = p.prob.band1.right;
  const int p0 = rt.p0, u_lo = qt.u_lo, u_hi = qt.u_hi, j_lo = qt.j_lo, j_hi = qt.j_hi;
  const int n_jblocks = ceil_div(j_hi - j_lo + 1, BJ);
  const int n_iters = n_jblocks * ceil_div(u_hi - u_lo + 1, CU);

  // ---- Shared memory. Owners and barriers (B1 / B2 in the loop):
  //   sq         written once (prologue, cp.async group 0), read-only afterwards.
  //   sk2, sv2   the region of the current u-chunk: written at the first iteration of a chunk,
  //              after B2 of the previous iteration (its last reader); read after B1.
  //   sk1/sv1[s] the k1/v1 block of iteration `it` lives in stage it % 2; it is written during
  //              iteration it - 1 (after B2 of iteration it - 2, the last reader of that stage)
  //              and read after B1 of iteration it.
  SmemCarver carver{dynamic_smem()};
  const TileT sq{carver.take<T>(BM * TileT::kLd)};
  const TileT sk2{carver.take<T>(Cfg::kRegionRows * TileT::kLd)};
  const TileT sv2{carver.take<T>(Cfg::kRegionRows * TileT::kLd)};
  T* const k1_stages = carver.take<T>(Cfg::kStages * BJ * TileT::kLd);
  T* const v1_stages = carver.take<T>(Cfg::kStages * BJ * TileT::kLd);
  auto sk1 = [&](int stage) { return TileT{k1_stages + stage * BJ * TileT::kLd}; };
  auto sv1 = [&](int stage) { return TileT{v1_stages + stage * BJ * TileT::kLd}; };

  const int kv_head = g;
  auto load_q = [&] {
    load_tile<kThreads>(sq, BM, D, p.vec, p.q.ptr, [&](int r) -> const T* {
      return rt.valid(r) ? row_ptr<T>(p.q, seq, rt.pos(r), g * p.group + rt.head(r)) : nullptr;
    });
  };
  // Chunk c covers offsets [u_lo + c * CU, min(u_lo + c * CU + CU - 1, u_hi)]; its region holds
  // the k2/v2 rows at positions region_base(c) + r, r < positions + (chunk length) - 1.
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

  // ---- This lane's two rows (fragment rows g4 and g4 + 8 of its warp's 16).
  const int warp_row0 = 16 * warp_id(), g4 = lane_id() >> 2;
  int my_pos[2], jmin[2], jmax[2];
  bool my_ok[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp_row0 + g4 + 8 * h;
    my_pos[h] = rt.pos(r);
    my_ok[h] = rt.valid(r);
    jmin[h] = imax(0, my_pos[h] - L1);
    jmax[h] = imin(N - 1, my_pos[h] + R1);
  }
  // The lane's ldmatrix row for A operands: row (lane % 16) of the warp's 16; the q rows of its
  // two fragment rows (the determinant's A operand reads those).
  const int a_row = warp_row0 + (lane_id() & 15);
  const T* const q_h[2] = {sq.row(warp_row0 + g4), sq.row(warp_row0 + g4 + 8)};

  float m[2] = {kNegInf, kNegInf};  // running max of the logits (natural units)
  float l[2] = {0.f, 0.f};          // running sum of exp(logit - m)
  float acc[DO / 8][4];
#pragma unroll
  for (int nt = 0; nt < DO / 8; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;

  load_q();
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
      cp_async_wait<1>();  // all groups but the prefetch just issued are complete
    } else {
      cp_async_wait<0>();
    }
    cta_sync();  // B1: sq, the region and this iteration's stage are visible to every thread

    const int j0 = j_lo + (it % n_jblocks) * BJ;
    const int region_base = p0 - chunk_hi(c);
    for (int u = chunk_lo(c); u <= chunk_hi(c); ++u) {
      // Region rows of k = pos - u for the lane's A row and its two fragment rows.
      const T* k2_a = sk2.row(rt.pos(a_row) - u - region_base);
      const T* v2_h[2];
      const T* k2_h[2];
      bool ok[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int k = my_pos[h] - u;
        v2_h[h] = sv2.row(k - region_base);
        k2_h[h] = sk2.row(k - region_base);
        ok[h] = my_ok[h] && k >= 0 && k < N;
        SA_PATH(my_ok[h] && !ok[h], "mask: k outside the sequence");
      }

      // S = (q ⊙ k2[pos - u]) @ k1_block^T, or (k2[pos - u] × q) @ k1_block^T
      const LogitRows<T> lr{det, D, sq.row(a_row), k2_a, q_h, k2_h};
      float s[BJ / 8][4];
#pragma unroll
      for (int nt = 0; nt < BJ / 8; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[nt][i] = 0.f;
#pragma unroll 2
      for (int kt = 0; kt < DP / 16; ++kt) {
        uint32_t a[4];
        lr.a_operand(a, kt * 16);
#pragma unroll
        for (int nt = 0; nt < BJ / 8; nt += 2) {
          uint32_t b0[2], b1[2];
          ldsm_b_nmajor(b0, b1, sk1(stage), nt * 8, kt * 16);
          mma_acc<T>(s[nt], a, b0);
          mma_acc<T>(s[nt + 1], a, b1);
        }
      }

      // Mask to the (j, k) window, scale to logits, online softmax update.
      float row_max[2] = {kNegInf, kNegInf};
#pragma unroll
      for (int nt = 0; nt < BJ / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int h = i >> 1, j = j0 + nt * 8 + frag_col(i);
          SA_PATH(ok[h] && (j < jmin[h] || j > jmax[h]), "mask: j outside the window");
          s[nt][i] = (ok[h] && j >= jmin[h] && j <= jmax[h]) ? logit(s[nt][i], p.prob.scale) : kNegInf;
          row_max[h] = fmaxf(row_max[h], s[nt][i]);
        }
      }
      float m_use[2], alpha[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float m_new = fmaxf(m[h], quad_max(row_max[h]));
        // A row with nothing in its window so far keeps m = -inf; subtracting 0 instead keeps
        // exp2 at 0 there rather than NaN (-inf - -inf).
        m_use[h] = m_new == kNegInf ? 0.f : m_new;
        alpha[h] = exp_shifted(m[h], m_use[h]);
        m[h] = m_new;
      }
      float row_sum[2] = {0.f, 0.f};
#pragma unroll
      for (int nt = 0; nt < BJ / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          s[nt][i] = exp_shifted(s[nt][i], m_use[i >> 1]);
          row_sum[i >> 1] += s[nt][i];
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + quad_sum(row_sum[h]);
#pragma unroll
      for (int nt = 0; nt < DO / 8; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[nt][i] *= alpha[i >> 1];

      // acc += (P @ v1_block) ⊙ v2[pos - u], 16 output columns (col0 + nt * 8 ..) at a time.
      uint32_t pa[BJ / 16][4];
#pragma unroll
      for (int kk = 0; kk < BJ / 16; ++kk) c_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int nt = 0; nt < DO / 8; nt += 2) {
        float t0[4] = {0.f, 0.f, 0.f, 0.f}, t1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int kk = 0; kk < BJ / 16; ++kk) {
          uint32_t b0[2], b1[2];
          ldsm_b_kmajor(b0, b1, sv1(stage), kk * 16, col0 + nt * 8);
          mma_acc<T>(t0, pa[kk], b0);
          mma_acc<T>(t1, pa[kk], b1);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float2 w0 = sload_pair(v2_h[h], col0 + nt * 8 + frag_col(2 * h));
          const float2 w1 = sload_pair(v2_h[h], col0 + nt * 8 + 8 + frag_col(2 * h));
          acc[nt][2 * h] += t0[2 * h] * w0.x;
          acc[nt][2 * h + 1] += t0[2 * h + 1] * w0.y;
          acc[nt + 1][2 * h] += t1[2 * h] * w1.x;
          acc[nt + 1][2 * h + 1] += t1[2 * h + 1] * w1.y;
        }
      }
    }
    cta_sync();  // B2: every warp is done with this stage and (if the chunk ends) the region
  }

  // ---- Epilogue: out = acc / l; lse (natural log) and lse_lo, written by lane 0 of each quad.
  T* out_row[2];
  float inv_l[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp_row0 + g4 + 8 * h, head = g * p.group + rt.head(r);
    out_row[h] = my_ok[h] ? row_ptr<T>(p.out, seq, my_pos[h], head) : nullptr;
    inv_l[h] = l[h] > 0.f ? 1.f / l[h] : 0.f;
    if (my_ok[h] && (lane_id() & 3) == 0 && col0 == 0) {
      const RowLse rl = row_lse(m[h], l[h]);
      const int64_t stat = stat_index(seq, p.Hq, p.N, head, my_pos[h]);
      gstore(p.lse + stat, rl.lse);
      gstore(p.lse_lo + stat, rl.lo);
    }
  }
  store_acc_rows<T>(acc, out_row, inv_l, col0, D);
}

}  // namespace simplicial_attn::cuda
