// This CPU's vector-FMA peak, the ceiling every CPU benchmark figure is reported against
// (bench/cpu_peak.py; exposed as simplicial_attn._C.cpu_fma_peak by csrc/bindings.cpp).
#pragma once

#include <cstdint>

namespace simplicial_attn {
namespace cpu {

struct FmaPeak {
  double gflops;    // best of the repeats, all threads together
  double flops;     // of one repeat
  double seconds;   // duration of that best repeat
  int64_t threads;  // ATen intra-op threads that ran the loop
  int64_t lanes;    // elements per vector register
  int64_t chains;   // independent accumulators per thread
  const char* isa;  // "avx512", "avx2" or "base" (the best the CPU has, not capped)
};

// Runs `chains` independent chains of vector multiply-adds (acc = acc * m + a) on every
// intra-op thread at once, float64 when `fp64`, float32 otherwise; each repeat lasts about
// `seconds`, or runs exactly `iters` iterations per thread when iters > 0 (for a caller that
// times it itself, e.g. by CPU time). 2 FLOPs per lane per multiply-add.
FmaPeak fma_peak(bool fp64, double seconds, int64_t repeats, int64_t iters = 0);

}  // namespace cpu
}  // namespace simplicial_attn
