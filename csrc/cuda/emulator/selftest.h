// Planted faults the emulator must report, and two probes of its options, run by
// `emu selftest NAME` (tests/test_cuda_emulated.py::test_emulator_reports_planted_fault and the
// tests after it). Each fault kernel is a few lines that break one rule of emulator.h; a run that
// is not reported exits 0 with "selftest: not reported", which the test fails on.
//
//   misaligned-global    8-byte load from a 4-byte aligned global address
//   misaligned-shared    16-byte shared load at an 8-byte offset
//   helper-divergence    half the warp calls ldsm_a (a helper) from one kernel line, half from
//                        another: the same line inside the helper, different call sites
//   barrier-divergence   even and odd threads wait at different __syncthreads
//   shared-race          a shared write read by another thread before a barrier
//   early-cp-async-read  a cp.async destination read before the copy is waited for
//   output-two-threads   an output element written by two threads, a barrier between (outputs
//                        keep one owner)
//   rmw-unordered        an ordered read-modify-write buffer's element written by one thread and
//                        read by another before a barrier
//   rmw-two-ctas         two CTAs of a launch adding into one element of such a buffer
//   rmw-read-elsewhere   three CTAs read one element of such a buffer, the last one then writes
//                        it (the first CTA's read is the race)
//   rmw-ordered          threads of one CTA adding into one element in turn, barriers between:
//                        allowed (prints the sum)
//   order                prints the order CTAs and (first round of) threads ran in
//   special-functions    prints exp2 / log2 of a few arguments (with --fast-math: the MUFU model)
#pragma once

#include <cstdio>
#include <string>

#include "../common.cuh"
#include "../fragments.cuh"

namespace sa_selftest {

using namespace simplicial_attn::cuda;

inline void launch1(const char* name, int threads, int smem, std::function<void()> body) {
  sa_emu::launch(name, 0, sa_emu::Dim3{1, 1, 1}, sa_emu::Dim3{threads, 1, 1}, smem, std::move(body));
}

inline int run_selftest(const std::string& name) {
  alignas(16) static float global[64] = {};
  sa_emu::register_buffer(global, sizeof(global), "global", true);
  if (name == "misaligned-global") {
    launch1("misaligned_global", 32, 0, [] { (void)gload(reinterpret_cast<const float2*>(global + 1)); });
  } else if (name == "misaligned-shared") {
    launch1("misaligned_shared", 32, 64, [] {
      char* s = dynamic_smem();
      if (thread_id() == 0) sstore(reinterpret_cast<uint4*>(s), uint4{});
      if (thread_id() == 1) sstore(reinterpret_cast<uint4*>(s) + 1, uint4{});
      cta_sync();
      (void)sload(reinterpret_cast<const uint4*>(s + 8));
    });
  } else if (name == "helper-divergence") {
    launch1("helper_divergence", 32, 32 * 16, [] {
      __half* tile = reinterpret_cast<__half*>(dynamic_smem());
      for (int c = 0; c < 8; ++c) sstore(tile + thread_id() * 8 + c, __float2half(1.f));
      cta_sync();
      uint32_t a[4];
      if (lane_id() < 16)
        ldsm_a(a, tile + (lane_id() & 15) * 16, 0);
      else
        ldsm_a(a, tile + (lane_id() & 15) * 16, 0);
    });
  } else if (name == "barrier-divergence") {
    launch1("barrier_divergence", 64, 0, [] {
      if (thread_id() % 2)
        cta_sync();
      else
        cta_sync();
    });
  } else if (name == "shared-race") {
    launch1("shared_race", 64, 16, [] {
      float* s = reinterpret_cast<float*>(dynamic_smem());
      if (thread_id() == 0) sstore(s, 1.f);
      if (thread_id() == 1) (void)sload(s);
      cta_sync();
    });
  } else if (name == "early-cp-async-read") {
    launch1("early_cp_async_read", 32, 512, [] {
      uint4* s = reinterpret_cast<uint4*>(dynamic_smem());
      cp_async_16(s + thread_id(), global + 4 * (thread_id() % 16), true);
      cp_async_commit();
      (void)sload(s + thread_id());
      cp_async_wait<0>();
    });
  } else if (name == "output-two-threads") {
    launch1("output_two_threads", 64, 0, [] {
      if (thread_id() == 0) gstore(global, 1.f);
      cta_sync();
      if (thread_id() == 1) gstore(global, 2.f);
    });
  } else if (name.rfind("rmw-", 0) == 0) {
    alignas(16) static float scratch[16] = {};
    sa_emu::register_buffer(scratch, sizeof(scratch), "ordered", true, true);
    const auto add = [](int tid) {
      if (thread_id() == tid) gstore(scratch, gload(scratch) + 1.f);
    };
    if (name == "rmw-unordered") {
      launch1("rmw_unordered", 64, 0, [&] {
        add(0);
        add(1);
        cta_sync();
      });
    } else if (name == "rmw-two-ctas") {
      sa_emu::launch("rmw_two_ctas", 0, sa_emu::Dim3{2, 1, 1}, sa_emu::Dim3{32, 1, 1}, 0, [&] {
        add(0);
        cta_sync();
      });
    } else if (name == "rmw-read-elsewhere") {
      sa_emu::launch("rmw_read_elsewhere", 0, sa_emu::Dim3{3, 1, 1}, sa_emu::Dim3{32, 1, 1}, 0, [&] {
        if (thread_id() == 0) (void)gload(scratch);
        cta_sync();
        // whichever CTA runs last writes (CTAs run one after another, in a shuffled order)
        static int done = 0;
        if (thread_id() == 0 && ++done == 3) gstore(scratch, 1.f);
      });
    } else if (name == "rmw-ordered") {
      launch1("rmw_ordered", 64, 0, [&] {
        for (int t = 0; t < 3; ++t) {
          add(t * 17);
          cta_sync();
        }
      });
      printf("sum %g\n", scratch[0]);
      return 0;
    } else {
      fprintf(stderr, "unknown selftest %s\n", name.c_str());
      return 2;
    }
  } else if (name == "order") {
    std::string blocks, threads;
    sa_emu::launch("order", 0, sa_emu::Dim3{8, 1, 1}, sa_emu::Dim3{64, 1, 1}, 0, [&] {
      if (thread_id() == 0) blocks += std::to_string(block_x()) + " ";
      if (block_x() == 0) threads += std::to_string(thread_id()) + " ";
      cta_sync();
    });
    printf("blocks %s\nthreads %s\n", blocks.c_str(), threads.c_str());
    return 0;
  } else if (name == "special-functions") {
    for (const float x : {1.f, 0.5f, -3.25f, 10.1f, -130.f, -1e-40f}) {
      printf("exp2 %.9g %.9g\n", x, fast_exp2(x));
    }
    for (const float x : {1.f, 3.f, 0.75f, 1e30f, 1e-40f}) printf("log2 %.9g %.9g\n", x, fast_log2(x));
    return 0;
  } else {
    fprintf(stderr, "unknown selftest %s\n", name.c_str());
    return 2;
  }
  printf("selftest: not reported\n");
  return 0;
}

}  // namespace sa_selftest

using sa_selftest::run_selftest;
