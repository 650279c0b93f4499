// The vector-FMA loop behind fma_peak.h. Enough independent chains per thread to cover the
// FMA latency on every pipe (Zen 3 and Skylake: 4 cycles x 2 pipes = 8 in flight; 12 chains
// in the 16 ymm registers, 24 in the 32 zmm ones), no memory traffic, and the result summed
// and returned so the compiler cannot drop the loop.
#include "fma_peak.h"

#include <ATen/Parallel.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "cpu_info.h"
#include "isa_target.h"

#if SA_TARGET_SUPPORTED
#include <immintrin.h>
#endif

namespace simplicial_attn {
namespace cpu {
namespace {

// The multiplier and addend keep every chain near 1 forever (a fixed point of acc * m + a),
// so no lane ever becomes denormal or infinite and slows the loop down.
constexpr double kMul = 0.999999, kAdd = 1e-6;

#if SA_TARGET_SUPPORTED
#define SA_FMA_LOOP(NAME, ISA, REG, SET1, FMA, STORE, ELEM, LANES, CHAINS)                  \
  __attribute__((target(ISA))) double NAME(int64_t iters) {                                 \
    REG acc[CHAINS];                                                                        \
    for (int c = 0; c < CHAINS; ++c) acc[c] = SET1(static_cast<ELEM>(1 + c * 1e-3));        \
    const REG m = SET1(static_cast<ELEM>(kMul)), a = SET1(static_cast<ELEM>(kAdd));         \
    for (int64_t it = 0; it < iters; ++it) {                                                \
      _Pragma("GCC unroll 32") for (int c = 0; c < CHAINS; ++c) acc[c] = FMA(acc[c], m, a); \
    }                                                                                       \
    double sum = 0;                                                                         \
    for (int c = 0; c < CHAINS; ++c) {                                                      \
      ELEM lanes[LANES];                                                                    \
      STORE(lanes, acc[c]);                                                                 \
      for (int l = 0; l < LANES; ++l) sum += lanes[l];                                      \
    }                                                                                       \
    return sum;                                                                             \
  }
SA_FMA_LOOP(loop_avx512_f32, "avx512f", __m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps, float, 16, 24)
SA_FMA_LOOP(loop_avx512_f64, "avx512f", __m512d, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_storeu_pd, double, 8, 24)
SA_FMA_LOOP(loop_avx2_f32, "avx2,fma", __m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps, float, 8, 12)
SA_FMA_LOOP(loop_avx2_f64, "avx2,fma", __m256d, _mm256_set1_pd, _mm256_fmadd_pd, _mm256_storeu_pd, double, 4, 12)
#undef SA_FMA_LOOP
#endif

// Baseline flavour: a multiply and an add per lane (no FMA instruction to rely on), 16 bytes.
template <typename E>
double loop_base(int64_t iters) {
  constexpr int kLanes = 16 / sizeof(E), kChains = 12;
  E acc[kChains][kLanes];
  for (int c = 0; c < kChains; ++c) {
    for (int l = 0; l < kLanes; ++l) acc[c][l] = static_cast<E>(1 + c * 1e-3);
  }
  const E m = static_cast<E>(kMul), a = static_cast<E>(kAdd);
  for (int64_t it = 0; it < iters; ++it) {
    for (int c = 0; c < kChains; ++c) {
      for (int l = 0; l < kLanes; ++l) acc[c][l] = acc[c][l] * m + a;
    }
  }
  double sum = 0;
  for (int c = 0; c < kChains; ++c) {
    for (int l = 0; l < kLanes; ++l) sum += acc[c][l];
  }
  return sum;
}

struct Loop {
  double (*run)(int64_t iters);
  int64_t lanes, chains;
  const char* isa;
};

Loop pick_loop(bool fp64) {
  const char* isa = machine_isa();
#if SA_TARGET_SUPPORTED
  if (std::strcmp(isa, "avx512") == 0)
    return fp64 ? Loop{loop_avx512_f64, 8, 24, isa} : Loop{loop_avx512_f32, 16, 24, isa};
  if (std::strcmp(isa, "avx2") == 0) return fp64 ? Loop{loop_avx2_f64, 4, 12, isa} : Loop{loop_avx2_f32, 8, 12, isa};
#endif
  return fp64 ? Loop{loop_base<double>, 2, 12, "base"} : Loop{loop_base<float>, 4, 12, "base"};
}

// Seconds for every thread to run `iters` iterations at once (one parallel region).
double time_all_threads(const Loop& loop, int64_t threads, int64_t iters) {
  std::vector<double> sink(threads);
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) sink[t] = loop.run(iters);
  });
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  volatile double keep = sink[0];
  (void)keep;
  return s;
}

// Iterations per thread for one run of about `seconds`, calibrated on this thread alone (a
// parallel region's start-up would dominate short runs): grown until a run lasts a tenth of
// the target, then scaled to it.
int64_t calibrate(const Loop& loop, double seconds) {
  for (int64_t iters = 1 << 10;; iters *= 4) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile double keep = loop.run(iters);
    (void)keep;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s >= seconds / 10) return static_cast<int64_t>(iters * (seconds / s)) + 1;
  }
}

}  // namespace

FmaPeak fma_peak(bool fp64, double seconds, int64_t repeats, int64_t iters) {
  const Loop loop = pick_loop(fp64);
  const int64_t threads = at::get_num_threads();
  if (iters <= 0) iters = calibrate(loop, seconds);
  double best = 1e300;
  for (int64_t r = 0; r < (repeats < 1 ? 1 : repeats); ++r) {
    const double t = time_all_threads(loop, threads, iters);
    best = t < best ? t : best;
  }
  const double flops = 2.0 * loop.lanes * loop.chains * static_cast<double>(iters) * threads;
  return FmaPeak{flops / best / 1e9, flops, best, threads, loop.lanes, loop.chains, loop.isa};
}

}  // namespace cpu
}  // namespace simplicial_attn
