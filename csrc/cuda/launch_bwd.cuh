// Backward launchers, on the caller's stream, each kernel the only writer of its outputs (no
// atomics, deterministic):
//   1. delta_kernel   Delta = rowsum(dout * out)               [B, Hq, N] workspace
//   2. dq             per query tile
//   3. dk1, dv1       per k1/v1 tile, looping over the query heads of its kv head
//   4. dk2, dv2       per k2/v2 tile, likewise
// except that with >= 16 query heads packed per position, or with Hq == Hkv (trilinear logits,
// head dims <= 128), 2 and 4 are one pass over the query tiles, dqkv2_kernel (dq, and dk2 / dv2
// partials into a zeroed float32 scratch the caller allocates: bwd_scratch_floats), then
// dkv2_reduce_kernel.
// This file: the tensor-core kernels (fp16 / bf16), included by bwd_fp16.cu and bwd_bf16.cu;
// fp32 runs the SIMT kernels (launch_simt.cuh).
#pragma once

#include <algorithm>

#include "bwd_dkv1_kernel.cuh"
#include "bwd_dkv2_kernel.cuh"
#include "bwd_dq_kernel.cuh"
#include "bwd_dqkv2_kernel.cuh"
#include "launch.cuh"
#include "launch_delta.cuh"
#include "static_switch.h"

namespace simplicial_attn::cuda {

// The backward kernels' parameters: TileParams and what they read besides the inputs.
template <class Params>
void set_grad_params(Params& p, const BwdArgs& a, int elem_bytes) {
  set_tile_params(p, a, elem_bytes);
  p.vec = p.vec && rows_16b_aligned(a.dout, elem_bytes);
  p.dout = a.dout;
  p.lse = a.lse;
  p.lse_lo = a.lse_lo;
  p.delta = a.delta;
}

// The fused dq + dk2 + dv2 pass (bwd_dqkv2_kernel.cuh), planned from the call (keys already
// swapped: with_smaller_window_second). THE place that chooses it: >= 16 query heads packed per
// position (each warp's 16 rows at one position: the head sums are sums over a warp's rows) or
// Hq == Hkv (sequence tiles of one head: no head sums), trilinear logits (the determinant's
// cross-product epilogues need the registers the fused accumulators take) and head dims <= 128
// (three 64-column fp32 accumulators per lane at 128). Other calls run dq and dkv2: GQA groups of
// 2 to 15 too, whose sequence tiles would need a scratch block per query head (head_blocks =
// group).
//
// Spans: a CTA walks span_tiles tiles, S = span_tiles * positions positions, and adds into scratch
// layer span % layers, layers = 1 + ceil((L2 + R2) / S) (capped by the spans per sequence). S is
// at least L2 + R2 (2 layers) where that leaves kDqKv2MinCtas CTAs, else shrinks, never below
// (L2 + R2) / 3 (so at most 4 layers). Scratch: 2 x layers x (B * N) x Hkv x head_blocks x D
// float32, head_blocks = ceil(group / 32) (1 with Hq == Hkv): at the target shape (B = 2, N =
// 16384, Hkv = 1, 64 heads, D = 128, w2 = 32) 2 layers x 2 head blocks, 128 MiB; with Hq == Hkv
// 2 layers, 4 floats per element of k2 (512 MiB at B = 2, N = 8192, Hq = Hkv = 16, D = 128).
struct DqKv2Plan {
  bool fused = false, packed = false;
  int log2_heads = 0, head_blocks = 0, span_tiles = 0, spans = 0, layers = 0;
  int64_t scratch_floats = 0;
};
constexpr int64_t kDqKv2MinCtas = 264;  // two per SM of a 132-SM H100

template <int DP>
DqKv2Plan plan_dqkv2(const BwdArgs& a) {
  DqKv2Plan pl;
  if constexpr (DP <= 128) {
    using Cfg = DqKv2Config<DP, true>;  // (both forms tile 32 rows)
    const int group = a.dims.Hq / a.dims.Hkv, heads = heads_per_tile(group, Cfg::kRows);
    // Packed (>= 16 heads a position) or sequence tiles of one head with Hq == Hkv; GQA groups of 2 to
    // 15 run dq and dkv2 (a fused pass would keep a scratch block per query head).
    if (a.prob.determinant || (heads < 16 && group > 1)) return pl;
    pl.fused = true;
    pl.packed = heads >= 16;
    pl.log2_heads = log2_floor(heads);
    pl.head_blocks = static_cast<int>(ceil_div64(group, heads));
    const int positions = Cfg::kRows / heads, len = a.prob.max_seqlen;
    const int reach = a.prob.band2.left + a.prob.band2.right;
    const int max_tiles = static_cast<int>(ceil_div64(len, positions));
    const auto ctas = [&](int tiles) {
      return ceil_div64(len, static_cast<int64_t>(tiles) * positions) * a.prob.num_seqs * a.dims.Hkv * pl.head_blocks;
    };
    const int min_tiles = std::max(1, static_cast<int>(ceil_div64(reach, 3 * positions)));
    int tiles = std::max(1, static_cast<int>(ceil_div64(reach, positions)));
    while (tiles > min_tiles && ctas(tiles) < kDqKv2MinCtas) tiles = std::max(min_tiles, (tiles + 1) / 2);
    pl.span_tiles = std::min(tiles, max_tiles);
    pl.spans = static_cast<int>(ceil_div64(len, static_cast<int64_t>(pl.span_tiles) * positions));
    const int64_t span_len = static_cast<int64_t>(pl.span_tiles) * positions;
    pl.layers = static_cast<int>(std::min<int64_t>(1 + ceil_div64(reach, span_len), pl.spans));
    pl.scratch_floats =
        2 * static_cast<int64_t>(pl.layers) * a.dims.B * a.dims.N * a.dims.Hkv * pl.head_blocks * a.dims.D;
  }
  return pl;
}

template <class T, int DP, bool kPacked>
void launch_dqkv2(const BwdArgs& a, const DqKv2Plan& pl, cudaStream_t stream) {
  if constexpr (DP <= 128) {
    using Cfg = DqKv2Config<DP, kPacked>;
    SA_HOST_CHECK(a.scratch != nullptr, "simplicial_attn: the fused backward needs its scratch (bwd_scratch_floats)");
    const Dkv2Scratch scratch{
        a.scratch, static_cast<int64_t>(a.dims.B) * a.dims.N, pl.layers, a.dims.Hkv, pl.head_blocks, a.dims.D};
    DqKv2KernelParams p;
    set_grad_params(p, a, sizeof(T));
    p.dq = a.dq;
    p.scratch = scratch;
    p.span_tiles = pl.span_tiles;
    p.log2_heads = pl.log2_heads;
    p.head_blocks = pl.head_blocks;
    p.pos_tiles = pl.spans;
    const Grid grid{static_cast<int64_t>(pl.spans) * a.prob.num_seqs, static_cast<int64_t>(a.dims.Hkv) * pl.head_blocks,
                    1};
    launch_kernel("dqkv2_kernel", DP, &dqkv2_kernel<T, Cfg>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
    const Dkv2ReduceParams r{scratch, a.dk2, a.dv2, a.dims.N, a.prob.scale};
    const int64_t total = scratch.rows * a.dims.Hkv * a.dims.D;
    launch_kernel("dkv2_reduce_kernel", DP, &dkv2_reduce_kernel<T>, Grid{ceil_div64(total, kReduceThreads), 1, 1},
                  kReduceThreads, 0, stream, r);
  }
}

template <class T, int DP>
void launch_bwd_tc(const BwdArgs& args, cudaStream_t stream) {
  const BwdArgs a = with_smaller_window_second(args);
  launch_delta<T>(a, stream);
  const DqKv2Plan fused = plan_dqkv2<DP>(a);
  if (fused.fused) {
    if (fused.packed) {
      launch_dqkv2<T, DP, true>(a, fused, stream);
    } else {
      launch_dqkv2<T, DP, false>(a, fused, stream);
    }
  } else {
    using Cfg = DqConfig<DP>;
    DqKernelParams p;
    set_grad_params(p, a, sizeof(T));
    p.dq = a.dq;
    const Grid grid = plan_query_tiles<Cfg>(p, a.dims, a.prob);
    // One instantiation per logit form (the fused pass takes the head-packed trilinear calls).
    if (a.prob.determinant) {
      launch_kernel("dq_kernel", DP, &dq_kernel<T, Cfg, true>, grid, Cfg::kThreads, Cfg::kSmemBytesDet, stream, p);
    } else {
      launch_kernel("dq_kernel", DP, &dq_kernel<T, Cfg, false>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
    }
  }
  {
    using Cfg = Dkv1Config<DP>;
    Dkv1KernelParams p;
    set_grad_params(p, a, sizeof(T));
    p.dk1 = a.dk1;
    p.dv1 = a.dv1;
    const Grid grid = plan_key_tiles<Cfg>(p, a.dims, a.prob);
    launch_kernel("dkv1_kernel", DP, &dkv1_kernel<T, Cfg>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
  }
  if (!fused.fused) {
    Dkv2KernelParams p;
    set_grad_params(p, a, sizeof(T));
    p.dk2 = a.dk2;
    p.dv2 = a.dv2;
    // Each logit form has its own tiles (Dkv2Config: the determinant keeps the column split at 128).
    if (a.prob.determinant) {
      using Cfg = Dkv2Config<DP, true>;
      const Grid grid = plan_key_tiles<Cfg>(p, a.dims, a.prob);
      launch_kernel("dkv2_kernel", DP, &dkv2_kernel<T, Cfg, true>, grid, Cfg::kThreads, Cfg::kSmemBytesDet, stream, p);
    } else {
      using Cfg = Dkv2Config<DP, false>;
      const Grid grid = plan_key_tiles<Cfg>(p, a.dims, a.prob);
      launch_kernel("dkv2_kernel", DP, &dkv2_kernel<T, Cfg, false>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
    }
  }
}

// The scratch the call's backward needs, float32 elements (0: none), for the caller to allocate
// zeroed: the fused pass's dk2 / dv2 partials (plan_dqkv2).
inline int64_t bwd_tc_scratch_floats(const BwdArgs& args) {
  return HEADDIM_SWITCH(args.dims.D, kHeadDim,
                        [&] { return plan_dqkv2<kHeadDim>(with_smaller_window_second(args)).scratch_floats; });
}

template <class T>
void run_bwd_tc(const BwdArgs& a, cudaStream_t stream) {
  HEADDIM_SWITCH(a.dims.D, kHeadDim, [&] { launch_bwd_tc<T, kHeadDim>(a, stream); });
}

}  // namespace simplicial_attn::cuda
