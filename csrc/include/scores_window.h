// Window geometry of the unfused path (simplicial_attn::scores_* ops), shared by the CPU and CUDA
// kernels; header-only and free of torch so the CUDA kernels also build in the CPU emulator of
// tests/scores_cuda_emu.cpp. The Python twin is simplicial_attn/problem.py
// (WindowAxis, window_axis): keep the two in step.
//
// The scores are [B, Hq, N, W1, W2]; slot a of query i on a window axis is the position
//   start(i) + a,   start(i) = slide * i - lo
//   w given, causal:  size w, start i - w + 1     w None, causal:  size N, start i - N + 1
//   w given, centred: size w, start i - w / 2     w None, centred: size N, start 0 (absolute)
// Every slot is inside the window by construction; a slot is masked (-inf) only when its
// position falls outside [0, N).
#pragma once

#include <cstdint>
#include <optional>

#if defined(__CUDACC__)
#define SA_HOST_DEVICE __host__ __device__
#else
#define SA_HOST_DEVICE
#endif

namespace simplicial_attn {

struct WindowAxis {
  int64_t size;
  int64_t slide;  // 1: the window moves with the query; 0: absolute positions
  int64_t lo;

  SA_HOST_DEVICE int64_t start(int64_t i) const { return slide * i - lo; }

  // Queries [*first, *last) whose window holds position p (n = sequence length).
  SA_HOST_DEVICE void queries_holding(int64_t p, int64_t n, int64_t* first, int64_t* last) const {
    if (slide == 0) {  // slot p + lo for every query, if the axis has it
      const bool held = p + lo >= 0 && p + lo < size;
      *first = 0;
      *last = held ? n : 0;
      return;
    }
    // slot a = p - i + lo must lie in [0, size)
    const int64_t lo_i = p + lo - size + 1, hi_i = p + lo + 1;
    *first = lo_i > 0 ? lo_i : 0;
    *last = hi_i < n ? hi_i : n;
    if (*last < *first) *last = *first;
  }
};

inline WindowAxis window_axis(std::optional<int64_t> w, int64_t n, bool causal) {
  if (!w.has_value()) return causal ? WindowAxis{n, 1, n - 1} : WindowAxis{n, 0, 0};
  return WindowAxis{*w, 1, causal ? *w - 1 : *w / 2};
}

}  // namespace simplicial_attn
