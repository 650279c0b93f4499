// The CUDA kernels of the unfused path (device code only; the launchers are in scores_softmax.cu).
// Layout and window geometry: csrc/include/scores_window.h. Compute in float32 for float32 /
// float16 / bfloat16 inputs.
//
// Softmax: a window is one row of M = W1 * W2 contiguous elements and the op is memory-bound,
// so each row is read once and written once: a warp (M <= 512) or a 512-thread block
// (M <= 16384) holds the whole row in registers, ITEMS values per thread, all loads issued
// before the first reduction; the max subtraction, exp, sum and scaling run on the registers.
// Longer rows take a block kernel that reads the row twice (online max and sum, then output).
//
// Scores: one block per (query, 32-slot tile of the k1 window, head) forms q * k1[j] (determinant
// logits, CONTRACT §8: the chunkwise cross product q × k1[j], since det(q, k1, k2) = k2 · (q × k1))
// for its 32 slots in shared memory and multiplies it against 32-slot tiles of the k2 window
// (4 logits per thread). The backward gathers, one block per output row (dq per query, dk1 / dk2
// per key position) with threads over the head dim, so every gradient has one writer and a fixed
// summation order; the determinant's gradients are cross products with the same sums taken at the
// chunk's other channels. These are analysis kernels with no speed target: plain float32 FMAs.
//
// Only CUDA built-ins that tests/scores_cuda_emu.cpp also provides are used here (threadIdx,
// blockIdx, __syncthreads, __shfl_xor_sync, __shared__, __expf, fmaf, fmaxf), so the emulator
// runs these exact kernels on the CPU.
#pragma once

#include <cstdint>

#include "scores_window.h"

namespace simplicial_attn {
namespace cuda_scores {

constexpr float kNegInf = -__builtin_huge_valf();

// ---- reductions ----------------------------------------------------------------------------

template <bool kMax>
__device__ __forceinline__ float combine(float a, float b) {
  return kMax ? fmaxf(a, b) : a + b;
}

// Reduces v over the ROW_THREADS threads sharing a row: a warp by shuffles, a block through
// shared memory (one slot per warp). Every thread of the row gets the result.
template <int ROW_THREADS, bool kMax>
__device__ __forceinline__ float row_reduce(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v = combine<kMax>(v, __shfl_xor_sync(0xffffffffu, v, off));
  if constexpr (ROW_THREADS > 32) {
    __shared__ float partial[ROW_THREADS / 32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = partial[0];
#pragma unroll
    for (int w = 1; w < ROW_THREADS / 32; ++w) v = combine<kMax>(v, partial[w]);
    __syncthreads();  // partial is reused by the next reduction
  }
  return v;
}

// ---- softmax -------------------------------------------------------------------------------

// ROW_THREADS = 32: each warp owns a row (BLOCK / 32 rows per block); ROW_THREADS = BLOCK: the
// block owns a row. Thread t holds elements t, t + ROW_THREADS, ... (coalesced loads).
template <typename T, int ITEMS, int ROW_THREADS, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    softmax_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t m) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (BLOCK / ROW_THREADS) + threadIdx.x / ROW_THREADS;
  if (row >= rows) return;  // uniform over the threads of a row
  const int t0 = threadIdx.x % ROW_THREADS;
  const T* xr = x + row * m;
  float v[ITEMS];
  float mx = kNegInf;
#pragma unroll
  for (int u = 0; u < ITEMS; ++u) {
    const int64_t e = t0 + static_cast<int64_t>(u) * ROW_THREADS;
    v[u] = e < m ? static_cast<float>(xr[e]) : kNegInf;
    mx = fmaxf(mx, v[u]);
  }
  mx = row_reduce<ROW_THREADS, true>(mx);
  const float shift = mx == kNegInf ? 0.f : mx;  // an all -inf row: exp(-inf) = 0, no NaN
  float sum = 0.f;
#pragma unroll
  for (int u = 0; u < ITEMS; ++u) {
    v[u] = __expf(v[u] - shift);
    sum += v[u];
  }
  sum = row_reduce<ROW_THREADS, false>(sum);
  const float inv = sum == 0.f ? 0.f : 1.f / sum;  // 0 only for an all -inf row; NaN stays NaN
  T* yr = y + row * m;
#pragma unroll
  for (int u = 0; u < ITEMS; ++u) {
    const int64_t e = t0 + static_cast<int64_t>(u) * ROW_THREADS;
    if (e < m) yr[e] = static_cast<T>(v[u] * inv);
  }
}

template <typename T, int ITEMS, int ROW_THREADS, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    softmax_bwd_kernel(const T* __restrict__ dp, const T* __restrict__ p, T* __restrict__ ds, int64_t rows, int64_t m) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (BLOCK / ROW_THREADS) + threadIdx.x / ROW_THREADS;
  if (row >= rows) return;
  const int t0 = threadIdx.x % ROW_THREADS;
  float pv[ITEMS], dv[ITEMS];
  float dot = 0.f;
#pragma unroll
  for (int u = 0; u < ITEMS; ++u) {
    const int64_t e = t0 + static_cast<int64_t>(u) * ROW_THREADS;
    pv[u] = e < m ? static_cast<float>(p[row * m + e]) : 0.f;
    dv[u] = e < m ? static_cast<float>(dp[row * m + e]) : 0.f;
    dot += pv[u] * dv[u];
  }
  dot = row_reduce<ROW_THREADS, false>(dot);
#pragma unroll
  for (int u = 0; u < ITEMS; ++u) {
    const int64_t e = t0 + static_cast<int64_t>(u) * ROW_THREADS;
    if (e < m) ds[row * m + e] = static_cast<T>(pv[u] * (dv[u] - dot));
  }
}

constexpr int kLoopThreads = 512;

// Rows longer than the register kernels hold: per-thread online (max, sum), combined over the
// block, then a second read of the row to write it.
template <typename T>
__global__ void __launch_bounds__(kLoopThreads)
    softmax_fwd_looped_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t m) {
  const T* xr = x + static_cast<int64_t>(blockIdx.x) * m;
  T* yr = y + static_cast<int64_t>(blockIdx.x) * m;
  float mx = kNegInf, sum = 0.f;
  for (int64_t e = threadIdx.x; e < m; e += kLoopThreads) {
    const float v = static_cast<float>(xr[e]);
    const float m_new = fmaxf(mx, v);
    const float sub = m_new == kNegInf ? 0.f : m_new;
    sum = sum * __expf(mx - sub) + __expf(v - sub);
    mx = m_new;
  }
  const float row_max = row_reduce<kLoopThreads, true>(mx);
  const float shift = row_max == kNegInf ? 0.f : row_max;
  const float total = row_reduce<kLoopThreads, false>(sum * __expf(mx - shift));
  const float inv = total == 0.f ? 0.f : 1.f / total;
  for (int64_t e = threadIdx.x; e < m; e += kLoopThreads) {
    yr[e] = static_cast<T>(__expf(static_cast<float>(xr[e]) - shift) * inv);
  }
}

template <typename T>
__global__ void __launch_bounds__(kLoopThreads)
    softmax_bwd_looped_kernel(const T* __restrict__ dp, const T* __restrict__ p, T* __restrict__ ds, int64_t m) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * m;
  float dot = 0.f;
  for (int64_t e = threadIdx.x; e < m; e += kLoopThreads) {
    dot += static_cast<float>(p[base + e]) * static_cast<float>(dp[base + e]);
  }
  dot = row_reduce<kLoopThreads, false>(dot);
  for (int64_t e = threadIdx.x; e < m; e += kLoopThreads) {
    const float pv = static_cast<float>(p[base + e]);
    ds[base + e] = static_cast<T>(pv * (static_cast<float>(dp[base + e]) - dot));
  }
}

// Picks the register kernel whose row capacity first reaches m and launches it:
//   warp per row, 4 rows per block:  m <= 32, 128, 512     (1, 4, 16 items per thread)
//   512-thread block per row:        m <= 1024, 4096, 16384 (2, 8, 32 items per thread)
// Returns false when m is longer (the caller runs the looped kernel).
template <typename T, template <typename, int, int, int> class Launch, typename... Args>
bool launch_resident(int64_t rows, int64_t m, Args... args) {
  if (m <= 32) return Launch<T, 1, 32, 128>::run(rows, args...), true;
  if (m <= 128) return Launch<T, 4, 32, 128>::run(rows, args...), true;
  if (m <= 512) return Launch<T, 16, 32, 128>::run(rows, args...), true;
  if (m <= 1024) return Launch<T, 2, 512, 512>::run(rows, args...), true;
  if (m <= 4096) return Launch<T, 8, 512, 512>::run(rows, args...), true;
  if (m <= 16384) return Launch<T, 32, 512, 512>::run(rows, args...), true;
  return false;
}

template <int ROW_THREADS, int BLOCK>
unsigned int row_blocks(int64_t rows) {
  constexpr int64_t kRowsPerBlock = BLOCK / ROW_THREADS;
  return static_cast<unsigned int>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

// ---- trilinear scores ----------------------------------------------------------------------
// Inputs contiguous: q [B, N, Hq, D], k1 / k2 [B, N, Hkv, D]; scores [B, Hq, N, W1, W2] float32.

struct ScoreSizes {
  int64_t B, N, Hq, Hkv, D;
};

// The next channel of t's 3-channel chunk, cyclically (s(t) of CONTRACT §8), and the one after.
__device__ __forceinline__ int64_t chunk_next(int64_t t) { return t + (t % 3 == 2 ? -2 : 1); }
__device__ __forceinline__ int64_t chunk_prev(int64_t t) { return t + (t % 3 == 0 ? 2 : -1); }

template <typename T>
struct ScoresArgs {
  const T* q;
  const T* k1;
  const T* k2;
  ScoreSizes d;
  WindowAxis ax1, ax2;
  float scale;
  bool determinant;

  __device__ float qv(int64_t b, int64_t i, int64_t h, int64_t t) const {
    return static_cast<float>(q[((b * d.N + i) * d.Hq + h) * d.D + t]);
  }
  __device__ float kv(const T* k, int64_t b, int64_t p, int64_t g, int64_t t) const {
    return static_cast<float>(k[((b * d.N + p) * d.Hkv + g) * d.D + t]);
  }
  __device__ bool inside(int64_t p) const { return p >= 0 && p < d.N; }
};

constexpr int kTile = 32;           // slots per tile on both window axes
constexpr int kChunkD = 32;         // head-dim columns staged in shared memory at a time
constexpr int kScoreThreads = 256;  // 32 x 8: lane = k2 slot, warp = 4 k1 slots

// No __launch_bounds__: with it ptxas squeezes this kernel into 64 registers and spills; without
// it the kernel takes 72 (sm_80, no spills) and still fits 3 blocks per SM.
template <typename T>
__global__ void scores_fwd_kernel(ScoresArgs<T> s, float* __restrict__ out, int64_t n_atiles) {
  __shared__ float qk1_s[kTile][kChunkD + 1];  // +1: the k2 reads below are conflict-free
  __shared__ float k2_s[kTile][kChunkD + 1];
  const ScoreSizes d = s.d;
  const WindowAxis ax1 = s.ax1, ax2 = s.ax2;
  const int64_t i = blockIdx.x / n_atiles, a0 = blockIdx.x % n_atiles * kTile;
  const int64_t h = blockIdx.y % d.Hq, b = blockIdx.y / d.Hq, g = h / (d.Hq / d.Hkv);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t W1 = ax1.size, W2 = ax2.size;
  float* o = out + ((b * d.Hq + h) * d.N + i) * W1 * W2;
  for (int64_t c0 = 0; c0 < W2; c0 += kTile) {
    float acc[kTile / 8] = {};
    for (int64_t d0 = 0; d0 < d.D; d0 += kChunkD) {
      for (int e = threadIdx.x; e < kTile * kChunkD; e += kScoreThreads) {
        const int row = e / kChunkD, col = e % kChunkD;
        const int64_t t = d0 + col, j = ax1.start(i) + a0 + row, k = ax2.start(i) + c0 + row;
        const bool t_ok = t < d.D;
        float qk1 = 0.f;
        if (t_ok && a0 + row < W1 && s.inside(j)) {
          // q ⊙ k1, or (q × k1)[t] = q[s(t)] k1[s(s(t))] - q[s(s(t))] k1[s(t)]
          const int64_t t1 = chunk_next(t), t2 = chunk_prev(t);
          qk1 = s.determinant
                    ? s.qv(b, i, h, t1) * s.kv(s.k1, b, j, g, t2) - s.qv(b, i, h, t2) * s.kv(s.k1, b, j, g, t1)
                    : s.qv(b, i, h, t) * s.kv(s.k1, b, j, g, t);
        }
        qk1_s[row][col] = qk1;
        k2_s[row][col] = t_ok && c0 + row < W2 && s.inside(k) ? s.kv(s.k2, b, k, g, t) : 0.f;
      }
      __syncthreads();
#pragma unroll 8
      for (int t = 0; t < kChunkD; ++t) {
        const float kval = k2_s[lane][t];
#pragma unroll
        for (int r = 0; r < kTile / 8; ++r) acc[r] = fmaf(qk1_s[warp + 8 * r][t], kval, acc[r]);
      }
      __syncthreads();
    }
    const int64_t c = c0 + lane, k = ax2.start(i) + c;
#pragma unroll
    for (int r = 0; r < kTile / 8; ++r) {
      const int64_t a = a0 + warp + 8 * r, j = ax1.start(i) + a;
      if (a < W1 && c < W2) o[a * W2 + c] = s.inside(j) && s.inside(k) ? s.scale * acc[r] : kNegInf;
    }
  }
}

// dq[i] = scale sum_{a,c} dS[i,a,c] k1[j_a] k2[k_c] (determinant: k1[j_a] × k2[k_c]); one block per
// (b, h, i), thread t = column.
template <typename T>
__global__ void scores_dq_kernel(ScoresArgs<T> s, const float* __restrict__ ds, T* __restrict__ dq) {
  const ScoreSizes d = s.d;
  const int64_t item = blockIdx.x;  // (b * Hq + h) * N + i
  const int64_t i = item % d.N, h = item / d.N % d.Hq, b = item / (d.N * d.Hq), g = h / (d.Hq / d.Hkv);
  const int64_t t = threadIdx.x;
  if (t >= d.D) return;
  const int64_t W1 = s.ax1.size, W2 = s.ax2.size;
  // Determinant: (k1 × k2)[t] = k1[t1] k2[t2] - k1[t2] k2[t1], t1 = s(t), t2 = s(s(t)); the
  // trilinear form is its t1 = t2 = t term alone.
  const bool det = s.determinant;
  const int64_t t1 = det ? chunk_next(t) : t, t2 = det ? chunk_prev(t) : t;
  float acc = 0.f;
  for (int64_t a = 0; a < W1; ++a) {
    const int64_t j = s.ax1.start(i) + a;
    if (!s.inside(j)) continue;
    const float* row = ds + (item * W1 + a) * W2;
    float r1 = 0.f, r2 = 0.f;  // sum_c dS k2[k_c] at t2, and at t1
    for (int64_t c = 0; c < W2; ++c) {
      const int64_t k = s.ax2.start(i) + c;
      if (s.inside(k)) {
        r1 = fmaf(row[c], s.kv(s.k2, b, k, g, t2), r1);
        if (det) r2 = fmaf(row[c], s.kv(s.k2, b, k, g, t1), r2);
      }
    }
    acc = fmaf(r1, s.kv(s.k1, b, j, g, t1), acc);
    if (det) acc = fmaf(-r2, s.kv(s.k1, b, j, g, t2), acc);
  }
  dq[((b * d.N + i) * d.Hq + h) * d.D + t] = static_cast<T>(s.scale * acc);
}

// dk1[p] (FOR_K2 = false) or dk2[p] (true): the sum over the query heads of kv head g and the
// queries whose window holds p of q[i] * (dS slice against the other key window); determinant:
// dk1 = dS (k2 × q), dk2 = dS (q × k1), i.e. sign * (K × q) with K the other key and sign -1 for
// dk2. One block per (b, g, p), thread t = column.
template <typename T, bool FOR_K2>
__global__ void scores_dk_kernel(ScoresArgs<T> s, const float* __restrict__ ds, T* __restrict__ dk) {
  const ScoreSizes d = s.d;
  const int64_t item = blockIdx.x;  // (b * Hkv + g) * N + p
  const int64_t p = item % d.N, g = item / d.N % d.Hkv, b = item / (d.N * d.Hkv);
  const int64_t t = threadIdx.x;
  if (t >= d.D) return;
  const WindowAxis own = FOR_K2 ? s.ax2 : s.ax1;
  const WindowAxis other = FOR_K2 ? s.ax1 : s.ax2;
  const T* other_keys = FOR_K2 ? s.k1 : s.k2;
  const int64_t W1 = s.ax1.size, W2 = s.ax2.size, G = d.Hq / d.Hkv;
  const int64_t other_stride = FOR_K2 ? W2 : 1, own_stride = FOR_K2 ? 1 : W2;
  int64_t i_first, i_last;
  own.queries_holding(p, d.N, &i_first, &i_last);
  // Determinant: (K × q)[t] = K[t1] q[t2] - K[t2] q[t1]; the trilinear form is its t1 = t2 = t term.
  const bool det = s.determinant;
  const int64_t t1 = det ? chunk_next(t) : t, t2 = det ? chunk_prev(t) : t;
  float acc = 0.f;
  for (int64_t h = g * G; h < (g + 1) * G; ++h) {
    for (int64_t i = i_first; i < i_last; ++i) {
      const float* slots = ds + ((b * d.Hq + h) * d.N + i) * W1 * W2 + (p - own.start(i)) * own_stride;
      float r1 = 0.f, r2 = 0.f;  // sum_o dS K[pos_o] at t1, and at t2
      for (int64_t o = 0; o < other.size; ++o) {
        const int64_t pos = other.start(i) + o;
        if (s.inside(pos)) {
          r1 = fmaf(slots[o * other_stride], s.kv(other_keys, b, pos, g, t1), r1);
          if (det) r2 = fmaf(slots[o * other_stride], s.kv(other_keys, b, pos, g, t2), r2);
        }
      }
      acc = fmaf(s.qv(b, i, h, t2), r1, acc);
      if (det) acc = fmaf(-s.qv(b, i, h, t1), r2, acc);
    }
  }
  const float sign = det && FOR_K2 ? -1.f : 1.f;
  dk[((b * d.N + p) * d.Hkv + g) * d.D + t] = static_cast<T>(sign * s.scale * acc);
}

// Threads of the backward kernels' blocks: one per head-dim column, whole warps.
inline unsigned int threads_for(int64_t D) { return static_cast<unsigned int>((D + 31) / 32 * 32); }

}  // namespace cuda_scores
}  // namespace simplicial_attn
