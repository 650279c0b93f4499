// Runs the CUDA kernels of the unfused path (csrc/cuda/scores_softmax_kernels.cuh) on the CPU,
// so tests/test_scores_cuda_emulated.py checks them without a GPU.
//
// Each CTA's threads are real OS threads (one CTA at a time, so `__shared__` becomes a static
// that the CTA's threads share); __syncthreads is a barrier over the CTA and __shfl_xor_sync a
// two-phase exchange over the warp. The test builds this file with AddressSanitizer, so an
// out-of-bounds global access fails the run; outputs arrive NaN-filled, so an element no thread
// wrote fails the comparison; a barrier that not every thread reaches hangs and the test's
// timeout fails it. Not modelled: timing, registers, float16/bfloat16 (the kernels are run for
// float32; the index arithmetic they share with the other dtypes is the same code).
//
// Usage: scores_cuda_emu OP DIR, with DIR/args.txt holding the op's integers and floats and the
// tensors in DIR/<name>.bin (raw float32); outputs are written to DIR/<name>.bin.
//   softmax_fwd rows m               x -> y
//   softmax_bwd rows m               dp, p -> ds
//   scores_fwd  B N Hq Hkv D  size1 slide1 lo1  size2 slide2 lo2  scale det     q, k1, k2 -> s
//   scores_bwd  (same args)                                           ds, q, k1, k2 -> dq, dk1, dk2
//   (det: 1 for determinant logits, 0 for trilinear)
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// ---- the CUDA built-ins the kernels use ----------------------------------------------------

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
thread_local EmuDim3 threadIdx, blockIdx;

struct EmuBlock {
  explicit EmuBlock(int threads) : bar(threads), slots(threads) {
    for (int w = 0; w < (threads + 31) / 32; ++w) warps.push_back(std::make_unique<std::barrier<>>(32));
  }
  std::barrier<> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<float> slots;
};
thread_local EmuBlock* emu_block = nullptr;

inline void __syncthreads() { emu_block->bar.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  emu_block->slots[threadIdx.x] = v;
  emu_block->warps[warp]->arrive_and_wait();
  const float r = emu_block->slots[warp * 32 + (lane ^ static_cast<unsigned>(lane_mask))];
  emu_block->warps[warp]->arrive_and_wait();  // nobody overwrites a slot before all have read
  return r;
}

inline float __expf(float x) { return std::exp(x); }

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

#include "scores_softmax_kernels.cuh"

namespace sa = simplicial_attn;
namespace cs = simplicial_attn::cuda_scores;

// Runs body() for every thread of every block of a (grid_x, grid_y) grid, one block at a time.
void launch(unsigned grid_x, unsigned grid_y, unsigned threads, const std::function<void()>& body) {
  for (unsigned by = 0; by < grid_y; ++by) {
    for (unsigned bx = 0; bx < grid_x; ++bx) {
      EmuBlock block(static_cast<int>(threads));
      std::vector<std::thread> team;
      team.reserve(threads);
      for (unsigned t = 0; t < threads; ++t) {
        team.emplace_back([&, t] {
          threadIdx = {t, 0, 0};
          blockIdx = {bx, by, 0};
          emu_block = &block;
          body();
        });
      }
      for (auto& th : team) th.join();
    }
  }
}

template <typename T, int ITEMS, int ROW_THREADS, int BLOCK>
struct FwdLaunch {
  static void run(int64_t rows, const T* x, T* y, int64_t m) {
    launch(cs::row_blocks<ROW_THREADS, BLOCK>(rows), 1, BLOCK,
           [&] { cs::softmax_fwd_kernel<T, ITEMS, ROW_THREADS, BLOCK>(x, y, rows, m); });
  }
};

template <typename T, int ITEMS, int ROW_THREADS, int BLOCK>
struct BwdLaunch {
  static void run(int64_t rows, const T* dp, const T* p, T* ds, int64_t m) {
    launch(cs::row_blocks<ROW_THREADS, BLOCK>(rows), 1, BLOCK,
           [&] { cs::softmax_bwd_kernel<T, ITEMS, ROW_THREADS, BLOCK>(dp, p, ds, rows, m); });
  }
};

// ---- I/O -----------------------------------------------------------------------------------

std::vector<float> read(const std::string& dir, const std::string& name, size_t n) {
  std::vector<float> v(n);
  std::ifstream f(dir + "/" + name + ".bin", std::ios::binary);
  if (!f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(float)))) {
    throw std::runtime_error("cannot read " + std::to_string(n) + " floats from " + name + ".bin");
  }
  return v;
}

void write(const std::string& dir, const std::string& name, const std::vector<float>& v) {
  std::ofstream f(dir + "/" + name + ".bin", std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
}

std::vector<float> poisoned(size_t n) { return std::vector<float>(n, std::nanf("")); }

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s OP DIR\n", argv[0]);
    return 2;
  }
  const std::string op = argv[1], dir = argv[2];
  std::ifstream args(dir + "/args.txt");
  if (op == "softmax_fwd" || op == "softmax_bwd") {
    int64_t rows, m;
    args >> rows >> m;
    const size_t n = static_cast<size_t>(rows * m);
    if (op == "softmax_fwd") {
      const auto x = read(dir, "x", n);
      auto y = poisoned(n);
      if (!cs::launch_resident<float, FwdLaunch>(rows, m, x.data(), y.data(), m)) {
        launch(static_cast<unsigned>(rows), 1, cs::kLoopThreads,
               [&] { cs::softmax_fwd_looped_kernel<float>(x.data(), y.data(), m); });
      }
      write(dir, "y", y);
    } else {
      const auto dp = read(dir, "dp", n), p = read(dir, "p", n);
      auto ds = poisoned(n);
      if (!cs::launch_resident<float, BwdLaunch>(rows, m, dp.data(), p.data(), ds.data(), m)) {
        launch(static_cast<unsigned>(rows), 1, cs::kLoopThreads,
               [&] { cs::softmax_bwd_looped_kernel<float>(dp.data(), p.data(), ds.data(), m); });
      }
      write(dir, "ds", ds);
    }
    return 0;
  }
  cs::ScoreSizes d{};
  sa::WindowAxis ax1{}, ax2{};
  float scale;
  int det;
  args >> d.B >> d.N >> d.Hq >> d.Hkv >> d.D >> ax1.size >> ax1.slide >> ax1.lo >> ax2.size >> ax2.slide >> ax2.lo >>
      scale >> det;
  const size_t nq = d.B * d.N * d.Hq * d.D, nk = d.B * d.N * d.Hkv * d.D;
  const size_t ns = d.B * d.Hq * d.N * ax1.size * ax2.size;
  const auto q = read(dir, "q", nq), k1 = read(dir, "k1", nk), k2 = read(dir, "k2", nk);
  const cs::ScoresArgs<float> s{q.data(), k1.data(), k2.data(), d, ax1, ax2, scale, det != 0};
  if (op == "scores_fwd") {
    auto out = poisoned(ns);
    const int64_t n_atiles = (ax1.size + cs::kTile - 1) / cs::kTile;
    launch(static_cast<unsigned>(d.N * n_atiles), static_cast<unsigned>(d.B * d.Hq), cs::kScoreThreads,
           [&] { cs::scores_fwd_kernel<float>(s, out.data(), n_atiles); });
    write(dir, "s", out);
  } else if (op == "scores_bwd") {
    const auto ds = read(dir, "ds", ns);
    auto dq = poisoned(nq), dk1 = poisoned(nk), dk2 = poisoned(nk);
    const unsigned threads = cs::threads_for(d.D);
    launch(static_cast<unsigned>(d.B * d.Hq * d.N), 1, threads,
           [&] { cs::scores_dq_kernel<float>(s, ds.data(), dq.data()); });
    const auto kv_blocks = static_cast<unsigned>(d.B * d.Hkv * d.N);
    launch(kv_blocks, 1, threads, [&] { cs::scores_dk_kernel<float, false>(s, ds.data(), dk1.data()); });
    launch(kv_blocks, 1, threads, [&] { cs::scores_dk_kernel<float, true>(s, ds.data(), dk2.data()); });
    write(dir, "dq", dq);
    write(dir, "dk1", dk1);
    write(dir, "dk2", dk2);
  } else {
    std::fprintf(stderr, "unknown op %s\n", op.c_str());
    return 2;
  }
  return 0;
}
