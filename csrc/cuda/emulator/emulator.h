// A CPU emulator for the device primitives of csrc/cuda/common.cuh, so the CUDA kernels run and are
// checked on a machine without a GPU (tests/test_cuda_emulated.py drives it through driver.cc).
//
// What it models:
//   * a CTA is `blockDim.x` threads run as cooperative fibers on one OS thread; they switch only at
//     __syncthreads and at warp collectives (shfl, ldmatrix, mma), which wait for all 32 lanes;
//   * CTAs run one after another and the ready threads of a CTA in turn, both in an order shuffled
//     by the launch seed (set_seed), so no result may depend on either order;
//   * mma.m16n8k16 and ldmatrix.x4 with the register layouts of the PTX ISA (section 9.7.14.5.8
//     "Matrix Fragments for mma.m16n8k16" and 9.7.14.5.15 "ldmatrix"), products exact, sums in fp32;
//   * cp.async as a copy that lands when the issuing thread waits for its group;
//   * optionally (set_fast_math) the arithmetic of nvcc --use_fast_math, which the GPU build uses:
//     subnormals flushed to zero (MXCSR FTZ/DAZ in every fiber) and exp2 / log2 as the MUFU
//     approximations (ex2.approx.ftz, lg2.approx.ftz), each off by its worst-case error (2 ulp
//     relative, 2^-22 absolute) with a sign that varies with the argument.
// What it checks (each failure prints what, where, and exits with status 3):
//   * every global access lies inside a buffer the driver registered; read-only buffers are not
//     written; no output element is written by two different threads (ownership: no atomics),
//     except in a buffer registered for ordered read-modify-writes (a fused pass's scratch): there
//     threads of one CTA may take turns on an element when a barrier separates each access from
//     the other threads' last write and read of it, and no two CTAs of a launch touch it where one
//     writes (so the order of the adds is the program's, never the schedule's);
//   * every global and shared access is naturally aligned (a 16-byte vector on 16 bytes, ...);
//   * shared memory: reads of bytes never written, reads or writes of bytes with a cp.async in
//     flight, and races: two threads touching the same byte between two barriers where one writes;
//   * every thread of a CTA reaches the same __syncthreads, every lane of a warp the same collective
//     (a mismatch or an early exit is reported as a deadlock). A call is identified by its Site:
//     the chain of call sites from the kernel down to the primitive, so two calls of one helper
//     from different kernel lines are different collectives;
//   * ldmatrix / cp.async addresses are 16-byte aligned and inside shared memory.
// It counts the code paths a kernel marks with SA_PATH (path_counts), per kernel and head dim.
// What it does not model: timing, occupancy, register limits, memory-model subtleties beyond
// "visible after the next barrier", hardware rounding inside the tensor core.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <xmmintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <source_location>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sa_emu {

struct Dim3 {
  int x = 1, y = 1, z = 1;
};

// Where a collective is called: the chain of source locations from the kernel's call down to the
// primitive (outermost first). Helpers take a Site and pass `site.then(here)` on (SA_SITE_* in
// common.cuh), so the chain names the kernel line even when the primitive sits in a helper.
struct Site {
  static constexpr int kDepth = 6;
  const char* file[kDepth] = {};
  int line[kDepth] = {};
  int depth = 0;
  uint64_t id = 1469598103934665603ull;
  Site(const std::source_location& loc = std::source_location::current()) { push(loc); }  // NOLINT: implicit
  Site then(const std::source_location& loc) const {
    Site s = *this;
    s.push(loc);
    return s;
  }
  bool operator==(const Site& o) const { return id == o.id; }
  std::string str() const {
    std::string out;
    for (int i = 0; i < depth; ++i) {
      const char* base = strrchr(file[i], '/');
      out += (i ? " > " : "") + std::string(base ? base + 1 : file[i]) + ":" + std::to_string(line[i]);
    }
    return out;
  }

 private:
  // The driver is one translation unit, so a file's name is one string literal: its address names it.
  void push(const std::source_location& loc) {
    id = (id ^ reinterpret_cast<uintptr_t>(loc.file_name())) * 1099511628211ull;
    id = (id ^ loc.line()) * 1099511628211ull;
    if (depth < kDepth) {
      file[depth] = loc.file_name();
      line[depth] = static_cast<int>(loc.line());
      ++depth;
    }
  }
};

struct Context;
inline Context*& current_context() {
  static Context* ctx = nullptr;
  return ctx;
}
inline std::string where();

[[noreturn]] inline void fail(const char* fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  fprintf(stderr, "emulator error: %s [%s]\n", msg, where().c_str());
  fflush(stderr);
  _exit(3);
}

// ------------------------------------------------------------------------------------------------
// Fibers: a minimal x86-64 context switch (callee-saved registers, MXCSR and x87 control word).
extern "C" void sa_emu_switch(void** save_sp, void* new_sp);
asm(R"(
.text
.globl sa_emu_switch
.type sa_emu_switch,@function
sa_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size sa_emu_switch, .-sa_emu_switch
)");

enum class FiberState { kReady, kWaitBarrier, kWaitWarp, kDone };

struct PendingCopy {
  char* dst;
  unsigned char data[16];
};

struct Fiber {
  void* sp = nullptr;
  int tid = 0;
  FiberState state = FiberState::kReady;
  int coll_set = 0;                              // slot set of the collective it waits in
  std::vector<PendingCopy> open_group;           // cp.async issued, not yet committed
  std::vector<std::vector<PendingCopy>> groups;  // committed, oldest first
};

// One lane's inputs to a warp collective.
struct Slot {
  int kind = 0;
  Site site;
  uint32_t u[6] = {};
  const char* ptr = nullptr;
  float f = 0.f;
};

struct WarpState {
  int arrived = 0;
  int kind = 0;
  Site site;
  unsigned gen = 0;
  Slot slots[2][32];
};

// Shadow state of one shared-memory byte.
struct SmemShadow {
  int32_t w_epoch = -1;  // barrier epoch of the last completed write, -1: never written
  int16_t w_tid = -1;
  int16_t r_tid = -1;  // -2: several threads read it in r_epoch
  int32_t r_epoch = -1;
  bool pending = false;  // a cp.async into it is in flight
};

// Shadow state of one byte of an ordered read-modify-write buffer: the last write and read, each
// as (launch, block) << 11, thread and the block's barrier epoch; r_tid -2: several threads read it;
// r_shared_launch: the launch in which two or more CTAs read it (-1 none).
struct RmwShadow {
  int64_t w_cta = -1, r_cta = -1, r_shared_launch = -1;
  int32_t w_epoch = -1, r_epoch = -1;
  int16_t w_tid = -1, r_tid = -1;
};

struct Buffer {
  uintptr_t lo, hi;
  std::string name;
  bool writable;
  std::vector<int64_t> owner;  // per byte: (launch, block, thread) that wrote it, -1 none
  std::vector<RmwShadow> rmw;  // ordered read-modify-write buffers only (owner unused)
};

struct Context {
  // launch
  std::string kernel;
  int launch_id = 0;
  Dim3 grid, block, block_idx;
  // CTA
  std::vector<char> smem;
  std::vector<SmemShadow> shadow;
  std::vector<Fiber> fibers;
  std::vector<std::vector<char>> stacks;
  std::vector<WarpState> warps;
  void* sched_sp = nullptr;
  Fiber* cur = nullptr;
  int bar_arrived = 0;
  Site bar_site;
  int epoch = 0;
  std::function<void()> body;
  // global memory
  std::vector<Buffer> buffers;
  size_t max_smem = 101376;  // the smallest opt-in limit of the target archs (sm_86: 99 KiB)
  long long collectives = 0;
  // options (set by the driver before the first launch)
  uint64_t seed = 1;
  std::mt19937_64 rng{1};
  bool fast_math = false;
  // SA_PATH counts: path_counts[label][path name], label = "kernel/head_dim"; during a launch they
  // go to launch_paths, keyed by the name's address (a hot-loop marker costs one hash lookup).
  std::string label;
  std::map<std::string, std::map<std::string, long long>> path_counts;
  std::unordered_map<const char*, long long> launch_paths;
};

inline Context& ctx() {
  if (!current_context()) current_context() = new Context();
  return *current_context();
}

inline std::string where() {
  Context* c = current_context();
  if (!c || c->kernel.empty()) return "host";
  char buf[320];
  snprintf(buf, sizeof(buf), "kernel %s, block (%d,%d,%d), thread %d, seed %llu", c->kernel.c_str(), c->block_idx.x,
           c->block_idx.y, c->block_idx.z, c->cur ? c->cur->tid : -1, static_cast<unsigned long long>(c->seed));
  return buf;
}

// Options, set once by the driver before the first launch.
inline void set_seed(uint64_t seed) {
  ctx().seed = seed;
  ctx().rng.seed(seed);
}
// FTZ/DAZ for the calling thread and every fiber started after it (they inherit its MXCSR).
inline void set_fast_math(bool on) {
  ctx().fast_math = on;
  if (on) _mm_setcsr(_mm_getcsr() | 0x8040);
}

// Natural alignment: an access of `bytes` (a power of two up to 16) starts on a multiple of it.
inline void check_aligned(const void* p, size_t bytes, const char* what) {
  if (bytes <= 16 && (bytes & (bytes - 1)) == 0 && reinterpret_cast<uintptr_t>(p) % bytes != 0)
    fail("%s of %zu bytes at %p is not naturally aligned (%zu-byte boundary)", what, bytes, p, bytes);
}

// ------------------------------------------------------------------------------------------------
// Global memory: the driver registers every tensor; kernels may touch nothing else.
inline void register_buffer(const void* p, size_t bytes, const char* name, bool writable, bool ordered_rmw = false) {
  Buffer b{reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(p) + bytes, name, writable, {}, {}};
  if (ordered_rmw)
    b.rmw.assign(bytes, RmwShadow{});
  else if (writable)
    b.owner.assign(bytes, -1);
  ctx().buffers.push_back(std::move(b));
}

inline Buffer& find_buffer(const void* p, size_t bytes, const char* what) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (Buffer& b : ctx().buffers)
    if (a >= b.lo && a + bytes <= b.hi) return b;
  fail("global %s of %zu bytes at %p lies outside every tensor", what, bytes, p);
}

// The running CTA as (launch, block) << 11 (a thread id fills the low 11 bits).
inline int64_t cta_key() {
  Context& c = ctx();
  const int64_t block_linear =
      (static_cast<int64_t>(c.block_idx.z) * c.grid.y + c.block_idx.y) * c.grid.x + c.block_idx.x;
  return (static_cast<int64_t>(c.launch_id) << 40) | (block_linear << 11);
}

// An access of an ordered read-modify-write buffer (see the header): races with another CTA of the
// launch or with another thread of the CTA since the last barrier fail.
inline void rmw_access(Buffer& b, size_t off, size_t bytes, bool write) {
  Context& c = ctx();
  const int64_t cta = cta_key();
  const int16_t me = static_cast<int16_t>(c.cur->tid);
  const auto other_cta = [&](int64_t k) { return k != -1 && k != cta && (k >> 40) == (cta >> 40); };
  for (size_t i = off; i < off + bytes; ++i) {
    RmwShadow& s = b.rmw[i];
    const bool read_elsewhere = other_cta(s.r_cta) || s.r_shared_launch == (cta >> 40);
    if (other_cta(s.w_cta) || (write && read_elsewhere))
      fail("race: %s of %s at byte %zu, which another CTA of the launch %s", write ? "write" : "read", b.name.c_str(),
           i, other_cta(s.w_cta) ? "wrote" : "read");
    if (s.w_cta == cta && s.w_epoch == c.epoch && s.w_tid != me)
      fail("race: %s of %s at byte %zu, which thread %d wrote since the last barrier", write ? "write" : "read",
           b.name.c_str(), i, s.w_tid);
    if (write && s.r_cta == cta && s.r_epoch == c.epoch && s.r_tid != me)
      fail("race: write of %s at byte %zu, which another thread read since the last barrier", b.name.c_str(), i);
    if (write) {
      s.w_cta = cta;
      s.w_tid = me;
      s.w_epoch = c.epoch;
    } else {
      if (other_cta(s.r_cta)) s.r_shared_launch = cta >> 40;
      const bool again = s.r_cta == cta && s.r_epoch == c.epoch;
      s.r_tid = again && s.r_tid != me ? int16_t{-2} : me;
      s.r_cta = cta;
      s.r_epoch = c.epoch;
    }
  }
}

inline void global_read(const void* p, size_t bytes) {
  check_aligned(p, bytes, "global read");
  Buffer& b = find_buffer(p, bytes, "read");
  if (!b.rmw.empty()) rmw_access(b, reinterpret_cast<uintptr_t>(p) - b.lo, bytes, false);
}

inline void global_write(const void* p, size_t bytes) {
  check_aligned(p, bytes, "global write");
  Buffer& b = find_buffer(p, bytes, "write");
  if (!b.writable) fail("global write into read-only tensor %s", b.name.c_str());
  Context& c = ctx();
  const int64_t me = cta_key() | c.cur->tid;
  const size_t off = reinterpret_cast<uintptr_t>(p) - b.lo;
  if (!b.rmw.empty()) return rmw_access(b, off, bytes, true);
  for (size_t i = 0; i < bytes; ++i) {
    int64_t& o = b.owner[off + i];
    if (o != -1 && o != me)
      fail("element of %s at byte %zu written by two threads (owner %lld): outputs must have one owner", b.name.c_str(),
           off + i, static_cast<long long>(o));
    o = me;
  }
}

// ------------------------------------------------------------------------------------------------
// Shared memory shadow checks.
inline size_t smem_offset(const void* p, size_t bytes, const char* what) {
  Context& c = ctx();
  const char* a = static_cast<const char*>(p);
  if (a < c.smem.data() || a + bytes > c.smem.data() + c.smem.size())
    fail("shared %s of %zu bytes at offset %td is outside the %zu bytes of dynamic shared memory", what, bytes,
         a - c.smem.data(), c.smem.size());
  return static_cast<size_t>(a - c.smem.data());
}

inline void smem_read(const void* p, size_t bytes) {
  Context& c = ctx();
  check_aligned(p, bytes, "shared read");
  const size_t off = smem_offset(p, bytes, "read");
  const int16_t me = static_cast<int16_t>(c.cur->tid);
  for (size_t i = off; i < off + bytes; ++i) {
    SmemShadow& s = c.shadow[i];
    if (s.pending) fail("shared read at offset %zu while a cp.async into it is in flight", i);
    if (s.w_epoch < 0) fail("shared read at offset %zu of a byte never written", i);
    if (s.w_epoch == c.epoch && s.w_tid != me)
      fail("race: shared read at offset %zu of a byte thread %d wrote since the last barrier", i, s.w_tid);
    if (s.r_epoch == c.epoch && s.r_tid != me)
      s.r_tid = -2;
    else if (s.r_epoch != c.epoch)
      s.r_tid = me;
    s.r_epoch = c.epoch;
  }
}

inline void smem_check_write(size_t off, size_t bytes) {
  Context& c = ctx();
  const int16_t me = static_cast<int16_t>(c.cur->tid);
  for (size_t i = off; i < off + bytes; ++i) {
    const SmemShadow& s = c.shadow[i];
    if (s.pending) fail("shared write at offset %zu while a cp.async into it is in flight", i);
    if (s.w_epoch == c.epoch && s.w_tid != me)
      fail("race: shared write at offset %zu of a byte thread %d wrote since the last barrier", i, s.w_tid);
    if (s.r_epoch == c.epoch && s.r_tid != me)
      fail("race: shared write at offset %zu of a byte thread(s) %d read since the last barrier", i, s.r_tid);
  }
}

inline void smem_mark_written(size_t off, size_t bytes) {
  Context& c = ctx();
  for (size_t i = off; i < off + bytes; ++i) {
    c.shadow[i].w_epoch = c.epoch;
    c.shadow[i].w_tid = static_cast<int16_t>(c.cur->tid);
  }
}

inline void smem_write(void* p, size_t bytes) {
  check_aligned(p, bytes, "shared write");
  const size_t off = smem_offset(p, bytes, "write");
  smem_check_write(off, bytes);
  smem_mark_written(off, bytes);
}

// ------------------------------------------------------------------------------------------------
// Scheduling.
inline void yield_to_scheduler() {
  Context& c = ctx();
  sa_emu_switch(&c.cur->sp, c.sched_sp);
}

extern "C" inline void sa_emu_fiber_entry() {
  Context& c = ctx();
  c.body();
  Fiber* f = c.cur;
  if (!f->open_group.empty() || !f->groups.empty()) fail("thread exits with cp.async copies never waited for");
  f->state = FiberState::kDone;
  for (;;) yield_to_scheduler();
}

inline void init_fiber_stack(Fiber& f, std::vector<char>& stack) {
  uintptr_t top = reinterpret_cast<uintptr_t>(stack.data() + stack.size()) & ~static_cast<uintptr_t>(15);
  uint64_t* s = reinterpret_cast<uint64_t*>(top);
  s[-1] = 0;  // fake return address of the entry function (keeps the ABI's stack alignment)
  s[-2] = reinterpret_cast<uint64_t>(&sa_emu_fiber_entry);
  for (int r = 3; r <= 8; ++r) s[-r] = 0;  // rbp rbx r12 r13 r14 r15
  uint32_t mxcsr = 0;
  uint16_t fpcw = 0;
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(fpcw));
  s[-9] = mxcsr | (static_cast<uint64_t>(fpcw) << 32);
  f.sp = &s[-9];
}

inline void run_cta(Context& c) {
  const int n = c.block.x;
  c.smem.assign(c.smem.size(), static_cast<char>(0xFF));  // poison: NaN in every float format
  std::fill(c.shadow.begin(), c.shadow.end(), SmemShadow{});
  c.fibers.assign(n, Fiber{});
  c.warps.assign((n + 31) / 32, WarpState{});
  c.bar_arrived = 0;
  c.epoch = 0;
  std::vector<int> order(n);
  for (int t = 0; t < n; ++t) {
    c.fibers[t].tid = t;
    order[t] = t;
    init_fiber_stack(c.fibers[t], c.stacks[t]);
  }
  for (;;) {
    bool ran = false, all_done = true;
    std::shuffle(order.begin(), order.end(), c.rng);  // each round runs the ready threads in a new order
    for (const int t : order) {
      Fiber& f = c.fibers[t];
      if (f.state != FiberState::kDone) all_done = false;
      if (f.state != FiberState::kReady) continue;
      c.cur = &f;
      sa_emu_switch(&c.sched_sp, f.sp);
      c.cur = nullptr;
      ran = true;
    }
    if (all_done) return;
    if (!ran) {
      std::string st;
      for (int t = 0; t < n; ++t) {
        const FiberState s = c.fibers[t].state;
        st += (s == FiberState::kDone          ? 'D'
               : s == FiberState::kWaitBarrier ? 'B'
               : s == FiberState::kWaitWarp    ? 'W'
                                               : 'R');
      }
      fail("deadlock: threads wait at a barrier or collective others never reach (D=exited B=barrier W=warp): %s",
           st.c_str());
    }
  }
}

// Runs `body` once per thread of every CTA of the grid, CTAs one after another in a shuffled order.
// `head_dim` (0: none) labels the launch's SA_PATH counts.
inline void launch(const char* kernel, int head_dim, Dim3 grid, Dim3 block, size_t smem_bytes,
                   std::function<void()> body) {
  Context& c = ctx();
  if (block.y != 1 || block.z != 1 || block.x < 1 || block.x > 1024) fail("block must be (1..1024, 1, 1)");
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535)
    fail("grid (%d,%d,%d) out of range", grid.x, grid.y, grid.z);
  if (smem_bytes > c.max_smem)
    fail("kernel %s asks for %zu bytes of shared memory (limit %zu)", kernel, smem_bytes, c.max_smem);
  c.kernel = kernel;
  c.label = std::string(kernel) + "/" + std::to_string(head_dim);
  c.path_counts[c.label];  // a launch with no marked path still shows up
  c.launch_id++;
  c.grid = grid;
  c.block = block;
  c.body = std::move(body);
  c.smem.assign(smem_bytes, 0);
  c.shadow.assign(smem_bytes, SmemShadow{});
  if (static_cast<int>(c.stacks.size()) < block.x) c.stacks.resize(block.x);
  for (auto& s : c.stacks)
    if (s.size() < (1u << 18)) s.assign(1u << 18, 0);
  std::vector<Dim3> blocks;
  for (int z = 0; z < grid.z; ++z)
    for (int y = 0; y < grid.y; ++y)
      for (int x = 0; x < grid.x; ++x) blocks.push_back({x, y, z});
  std::shuffle(blocks.begin(), blocks.end(), c.rng);
  c.launch_paths.clear();
  for (const Dim3& b : blocks) {
    c.block_idx = b;
    run_cta(c);
  }
  for (const auto& [name, count] : c.launch_paths) c.path_counts[c.label][name] += count;
  c.kernel.clear();
}

// SA_PATH: one more visit of the marked path `name` (a string literal) in the current launch.
inline void path_hit(const char* name) { ctx().launch_paths[name]++; }

// ------------------------------------------------------------------------------------------------
// Thread identity and the CTA barrier.
inline int thread_x() { return ctx().cur->tid; }
inline Dim3 block_idx() { return ctx().block_idx; }
inline Dim3 grid_dim() { return ctx().grid; }
inline char* dynamic_smem() { return ctx().smem.data(); }

inline void cta_sync(const Site& site) {
  Context& c = ctx();
  if (c.bar_arrived == 0)
    c.bar_site = site;
  else if (!(c.bar_site == site))
    fail("__syncthreads at %s while other threads wait at %s", site.str().c_str(), c.bar_site.str().c_str());
  if (++c.bar_arrived == c.block.x) {
    c.bar_arrived = 0;
    c.epoch++;
    for (Fiber& f : c.fibers)
      if (f.state == FiberState::kWaitBarrier) f.state = FiberState::kReady;
    return;
  }
  c.cur->state = FiberState::kWaitBarrier;
  yield_to_scheduler();
}

// Every lane deposits its slot; returns the slot set all 32 deposits are in once they are.
inline const Slot* warp_collective(const Slot& mine) {
  Context& c = ctx();
  const int tid = c.cur->tid, lane = tid & 31;
  WarpState& w = c.warps[tid >> 5];
  c.collectives++;
  const int set = w.gen & 1;
  if (w.arrived == 0) {
    w.kind = mine.kind;
    w.site = mine.site;
  } else if (w.kind != mine.kind || !(w.site == mine.site)) {
    fail("warp collective (kind %d at %s) while other lanes are in (kind %d at %s)", mine.kind, mine.site.str().c_str(),
         w.kind, w.site.str().c_str());
  }
  w.slots[set][lane] = mine;
  if (++w.arrived == 32) {
    w.arrived = 0;
    w.gen++;
    for (int l = 0; l < 32; ++l) {
      Fiber& f = c.fibers[(tid & ~31) + l];
      if (f.state == FiberState::kWaitWarp) f.state = FiberState::kReady;
    }
  } else {
    c.cur->state = FiberState::kWaitWarp;
    yield_to_scheduler();
  }
  return w.slots[set];
}

enum CollectiveKind { kShfl = 1, kLdsm, kLdsmTrans, kMmaF16, kMmaBf16 };

inline float shfl_xor(float v, int mask, const Site& site) {
  Slot s;
  s.kind = kShfl;
  s.site = site;
  s.f = v;
  const Slot* all = warp_collective(s);
  return all[(ctx().cur->tid & 31) ^ mask].f;
}

inline uint16_t read_u16(const char* p) {
  smem_read(p, 2);
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane l gives the address of row (l % 8) of
// matrix (l / 8). Without .trans lane l receives, of each matrix i, the elements (row l/4, cols
// 2(l%4), 2(l%4)+1); with .trans the elements (rows 2(l%4), 2(l%4)+1, col l/4). Low half first.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr, bool trans, const Site& site) {
  Slot s;
  s.kind = trans ? kLdsmTrans : kLdsm;
  s.site = site;
  s.ptr = static_cast<const char*>(row_addr);
  smem_offset(s.ptr, 16, "ldmatrix row");
  if (reinterpret_cast<uintptr_t>(s.ptr) % 16 != 0) fail("ldmatrix row address not 16-byte aligned");
  const Slot* all = warp_collective(s);
  const int l = ctx().cur->tid & 31, g = l >> 2, t = l & 3;
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      const char* row = all[8 * i + g].ptr;
      lo = read_u16(row + 2 * (2 * t));
      hi = read_u16(row + 2 * (2 * t + 1));
    } else {
      lo = read_u16(all[8 * i + 2 * t].ptr + 2 * g);
      hi = read_u16(all[8 * i + 2 * t + 1].ptr + 2 * g);
    }
    r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
}

inline float half_bits_to_float(uint16_t bits, bool bf16) {
  if (bf16) {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
  }
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, fragments per PTX ISA 9.7.14.5.8
// (g = lane / 4, t = lane % 4):
//   A (16x16): a[i] holds two halves; element pair of register i: rows g (+8 for i = 1, 3),
//              cols 2t, 2t+1 (+8 for i = 2, 3)
//   B (16x8):  b[i]: rows (k) 2t, 2t+1 (+8 for i = 1), col (n) g
//   C/D (16x8 fp32): c[i]: row g (+8 for i >= 2), col 2t + (i & 1)
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4], bool bf16,
                      const Site& site) {
  Slot s;
  s.kind = bf16 ? kMmaBf16 : kMmaF16;
  s.site = site;
  for (int i = 0; i < 4; ++i) s.u[i] = a[i];
  s.u[4] = b[0];
  s.u[5] = b[1];
  const Slot* all = warp_collective(s);
  auto a_at = [&](int row, int k) {
    const int lane = (row % 8) * 4 + (k % 8) / 2;
    const int reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    return half_bits_to_float(static_cast<uint16_t>(all[lane].u[reg] >> (16 * (k & 1))), bf16);
  };
  auto b_at = [&](int k, int n) {
    const int lane = n * 4 + (k % 8) / 2;
    const int reg = 4 + (k >= 8 ? 1 : 0);
    return half_bits_to_float(static_cast<uint16_t>(all[lane].u[reg] >> (16 * (k & 1))), bf16);
  };
  const int l = ctx().cur->tid & 31, g = l >> 2, t = l & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc = c[i];
    for (int k = 0; k < 16; ++k) acc += a_at(row, k) * b_at(k, col);
    d[i] = acc;
  }
}

// ------------------------------------------------------------------------------------------------
// The special functions. Exact (libm) by default; in fast-math mode the MUFU approximations that
// nvcc --use_fast_math emits, at their documented worst-case error: ex2.approx.ftz.f32 within
// 2 ulp (relative 2^-22), lg2.approx.ftz.f32 within 2^-22 absolute; subnormal arguments and
// results flushed to zero. The error's sign and size (1 or 2 units) vary with the argument's
// bits, so errors do not all cancel or all add. Exact cases stay exact (the hardware reduces the
// argument to an integer part, which goes into the exponent, and a fraction interpolated from a
// table that starts at exactly 1): exp2 of an integer, log2 of a power of two.
inline float flush(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.f, x) : x; }

inline double approx_error(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  u *= 2654435761u;  // Knuth's multiplicative hash
  const double units = (u >> 31) ? 2.0 : 1.0;
  return ((u >> 30) & 1 ? units : -units) * std::ldexp(1.0, -23);
}

inline float exp2f_emu(float x) {
  if (!ctx().fast_math) return std::exp2(x);
  x = flush(x);
  const double exact = std::exp2(static_cast<double>(x));
  if (!std::isfinite(exact) || exact == 0.0 || x == std::trunc(x)) return flush(static_cast<float>(exact));
  return flush(static_cast<float>(exact * (1.0 + approx_error(x))));
}

inline float log2f_emu(float x) {
  if (!ctx().fast_math) return std::log2(x);
  x = flush(x);
  const double exact = std::log2(static_cast<double>(x));
  if (!std::isfinite(exact) || exact == std::trunc(exact)) return static_cast<float>(exact);
  return static_cast<float>(exact + approx_error(x));
}

// cp.async.cg.shared.global 16 bytes, zero-filled when !valid (src-size 0).
inline void cp_async_16(void* dst, const void* src, bool valid) {
  Context& c = ctx();
  const size_t off = smem_offset(dst, 16, "cp.async destination");
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0) fail("cp.async destination not 16-byte aligned");
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0) fail("cp.async source not 16-byte aligned");
  smem_check_write(off, 16);
  PendingCopy pc;
  pc.dst = static_cast<char*>(dst);
  if (valid) {
    global_read(src, 16);
    memcpy(pc.data, src, 16);
  } else {
    memset(pc.data, 0, 16);
  }
  for (size_t i = off; i < off + 16; ++i) c.shadow[i].pending = true;
  c.cur->open_group.push_back(pc);
}

inline void cp_async_commit() {
  Fiber* f = ctx().cur;
  f->groups.push_back(std::move(f->open_group));
  f->open_group.clear();
}

// Completes all committed groups but the newest `n`.
inline void cp_async_wait(int n) {
  Context& c = ctx();
  Fiber* f = c.cur;
  while (static_cast<int>(f->groups.size()) > n) {
    for (const PendingCopy& pc : f->groups.front()) {
      const size_t off = static_cast<size_t>(pc.dst - c.smem.data());
      memcpy(pc.dst, pc.data, 16);
      for (size_t i = off; i < off + 16; ++i) c.shadow[i].pending = false;
      smem_mark_written(off, 16);
    }
    f->groups.erase(f->groups.begin());
  }
}

}  // namespace sa_emu
