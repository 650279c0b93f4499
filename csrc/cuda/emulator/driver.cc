// Runs the CUDA kernels of csrc/cuda on the CPU emulator (emulator.h): the same entry points
// api.cpp calls (kernels.h), the same launchers and kernel code, with every global and shared
// memory access checked. Built and driven by tests/test_cuda_emulated.py:
//
//   g++ -std=c++20 -O2 -mfma -ffp-contract=fast -DSA_EMULATE -I/usr/local/cuda/include csrc/cuda/emulator/driver.cc -o
//   emu emu [--seed S] [--fast-math] fwd|bwd|decode IN OUT emu [--seed S] selftest NAME   (a planted fault the emulator
//   must report: selftest.h) emu configs          (prints the tile configs: kernel head_dim threads smem_bytes)
//
// --seed S shuffles the order of CTAs and of threads within a CTA (default 1); --fast-math
// emulates the arithmetic of nvcc --use_fast_math (emulator.h). On success stderr ends with the
// SA_PATH counts, one line "path KERNEL HEAD_DIM NAME COUNT" per path (COUNT 0 and NAME "-" for a
// launch without marked paths), then "emulator: ok".
//
// IN:  int64 header[16] (fwd / bwd: {dtype (0 fp16, 1 bf16, 2 fp32), B, N, Hq, Hkv, D, left1, right1,
//      left2, right2, determinant, packed, num_seqs, max_seqlen}; decode: see run_decode_op), float64
//      scale, then
//      each input tensor (fwd: q k1 k2 v1 v2 [cu_seqlens]; bwd: dout q k1 k2 v1 v2 out lse lse_lo
//      [cu_seqlens]; decode: q k1_cache k2_cache v1_cache v2_cache cache_seqlens) as int64
//      {storage bytes, storage offset (elements), stride b, n, h, d} and the storage bytes.
// OUT: fwd: out (contiguous, input dtype), lse, lse_lo (float32 [B, Hq, N]);
//      bwd: dq, dk1, dk2, dv1, dv2 (contiguous, input dtype); decode: out, lse (float32 [B, Hq, Nq]).
// Outputs start as 0xFF bytes (NaN), so an element no kernel writes fails the comparison.
#ifndef SA_EMULATE
#error "build the driver with -DSA_EMULATE"
#endif

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "../bwd_bf16.cu"
#include "../bwd_fp16.cu"
#include "../decode.cu"
#include "../fp32.cu"
#include "../fwd_bf16.cu"
#include "../fwd_fp16.cu"
#include "../kernels.h"
#include "selftest.h"

namespace {

using namespace simplicial_attn::cuda;

struct Reader {
  FILE* f;
  template <class V>
  V get() {
    V v;
    if (fread(&v, sizeof(V), 1, f) != 1) sa_emu::fail("input file truncated");
    return v;
  }
};

// A buffer the kernels may touch, registered with the emulator.
struct Buffer {
  std::unique_ptr<char, decltype(&free)> data{nullptr, &free};
  size_t bytes = 0;
  Buffer(size_t n, const char* name, bool writable, bool ordered_rmw = false)
      : data(static_cast<char*>(aligned_alloc(256, (n + 255) / 256 * 256 + 256)), &free), bytes(n) {
    memset(data.get(), 0xFF, bytes);
    sa_emu::register_buffer(data.get(), bytes, name, writable, ordered_rmw);
  }
};

struct Input {
  std::unique_ptr<Buffer> buf;
  TensorRef ref;
};

Input read_tensor(Reader& r, const char* name, int elem_bytes) {
  const int64_t bytes = r.get<int64_t>(), offset = r.get<int64_t>();
  int64_t stride[4];
  for (auto& s : stride) s = r.get<int64_t>();
  if (stride[3] != 1) sa_emu::fail("%s: the kernels take a unit stride on D (api.cpp makes it so)", name);
  Input in;
  in.buf = std::make_unique<Buffer>(static_cast<size_t>(bytes), name, false);
  if (fread(in.buf->data.get(), 1, bytes, r.f) != static_cast<size_t>(bytes)) sa_emu::fail("%s truncated", name);
  in.ref = TensorRef{in.buf->data.get() + offset * elem_bytes, stride[0], stride[1], stride[2]};
  return in;
}

MutTensorRef contiguous_ref(Buffer& b, const Dims& d, int heads) {
  return MutTensorRef{b.data.get(), static_cast<int64_t>(d.N) * heads * d.D, static_cast<int64_t>(heads) * d.D, d.D};
}

void write(FILE* f, const Buffer& b) { fwrite(b.data.get(), 1, b.bytes, f); }

template <class Cfg>
void print_config(const char* kernel) {
  printf("%s %d %d %d\n", kernel, Cfg::kHeadDim, Cfg::kThreads, Cfg::kSmemBytes);
}

template <int DP>
void print_configs() {
  print_config<FwdConfig<DP>>("fwd_kernel");
  print_config<DqConfig<DP>>("dq_kernel");
  print_config<Dkv1Config<DP>>("dkv1_kernel");
  print_config<Dkv2Config<DP>>("dkv2_kernel");
  if constexpr (DP <= 128) {
    print_config<DqKv2Config<DP, true>>("dqkv2_kernel");  // head packing
    print_config<DqKv2Config<DP, false>>("dqkv2_kernel_seq");  // sequence tiles
  }
}

// fwd / bwd: header {dtype, B, N, Hq, Hkv, D, left1, right1, left2, right2, determinant, packed,
// num_seqs, max_seqlen} (the bands as api.cpp passes them: reaches below N); packed inputs end
// with cu_seqlens (int32 [num_seqs + 1]).
void run_attention_op(Reader& r, FILE* fout, const std::string& op, const int64_t (&h)[16], double scale, DType dtype,
                      int eb) {
  const Dims d{static_cast<int>(h[1]), static_cast<int>(h[2]), static_cast<int>(h[3]), static_cast<int>(h[4]),
               static_cast<int>(h[5])};
  const bool packed = h[11] != 0;
  ProblemDesc prob{Band{static_cast<int>(h[6]), static_cast<int>(h[7])},
                   Band{static_cast<int>(h[8]), static_cast<int>(h[9])},
                   static_cast<float>(scale),
                   h[10] != 0,
                   nullptr,
                   packed ? static_cast<int>(h[12]) : d.B,
                   packed ? static_cast<int>(h[13]) : d.N};
  const size_t q_elems = static_cast<size_t>(d.B) * d.N * d.Hq * d.D;
  const size_t kv_elems = static_cast<size_t>(d.B) * d.N * d.Hkv * d.D;
  const size_t stat_elems = static_cast<size_t>(d.B) * d.Hq * d.N;
  auto read_cu = [&](Input& cu) {
    if (!packed) return;
    cu = read_tensor(r, "cu_seqlens", 4);
    prob.cu_seqlens = static_cast<const int*>(cu.ref.ptr);
  };
  if (op == "fwd") {
    Input q = read_tensor(r, "q", eb), k1 = read_tensor(r, "k1", eb), k2 = read_tensor(r, "k2", eb);
    Input v1 = read_tensor(r, "v1", eb), v2 = read_tensor(r, "v2", eb), cu;
    read_cu(cu);
    Buffer out(q_elems * eb, "out", true), lse(stat_elems * 4, "lse", true), lse_lo(stat_elems * 4, "lse_lo", true);
    const FwdArgs a{dtype,
                    d,
                    prob,
                    q.ref,
                    k1.ref,
                    k2.ref,
                    v1.ref,
                    v2.ref,
                    contiguous_ref(out, d, d.Hq),
                    reinterpret_cast<float*>(lse.data.get()),
                    reinterpret_cast<float*>(lse_lo.data.get())};
    run_fwd(a, nullptr);
    for (const Buffer* b : {&out, &lse, &lse_lo}) write(fout, *b);
  } else {
    Input dout = read_tensor(r, "dout", eb), q = read_tensor(r, "q", eb), k1 = read_tensor(r, "k1", eb);
    Input k2 = read_tensor(r, "k2", eb), v1 = read_tensor(r, "v1", eb), v2 = read_tensor(r, "v2", eb);
    Input out = read_tensor(r, "out", eb), lse = read_tensor(r, "lse", 4), lse_lo = read_tensor(r, "lse_lo", 4), cu;
    read_cu(cu);
    Buffer dq(q_elems * eb, "dq", true), dk1(kv_elems * eb, "dk1", true), dk2(kv_elems * eb, "dk2", true);
    Buffer dv1(kv_elems * eb, "dv1", true), dv2(kv_elems * eb, "dv2", true), delta(stat_elems * 4, "delta", true);
    BwdArgs a{dtype,
              d,
              prob,
              dout.ref,
              q.ref,
              k1.ref,
              k2.ref,
              v1.ref,
              v2.ref,
              out.ref,
              static_cast<const float*>(lse.ref.ptr),
              static_cast<const float*>(lse_lo.ref.ptr),
              contiguous_ref(dq, d, d.Hq),
              contiguous_ref(dk1, d, d.Hkv),
              contiguous_ref(dk2, d, d.Hkv),
              contiguous_ref(dv1, d, d.Hkv),
              contiguous_ref(dv2, d, d.Hkv),
              reinterpret_cast<float*>(delta.data.get()),
              nullptr};
    // The fused backward's scratch, zeroed as api.cpp's at::zeros.
    const int64_t scratch_floats = bwd_scratch_floats(a);
    std::unique_ptr<Buffer> scratch;
    if (scratch_floats > 0) {
      // (its rows taken in turn by the threads of a CTA, barriers between: an ordered buffer)
      scratch = std::make_unique<Buffer>(static_cast<size_t>(scratch_floats) * 4, "scratch", true, true);
      memset(scratch->data.get(), 0, scratch->bytes);
      a.scratch = reinterpret_cast<float*>(scratch->data.get());
    }
    run_bwd(a, nullptr);
    for (const Buffer* b : {&dq, &dk1, &dk2, &dv1, &dv2}) write(fout, *b);
  }
}

// decode: header {dtype, B, Nq, Hq, Hkv, D, left1, left2, C1, C2, determinant} (causal bands);
// inputs q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens (int32 [B]); outputs out, lse.
void run_decode_op(Reader& r, FILE* fout, const int64_t (&h)[16], double scale, DType dtype, int eb) {
  DecodeArgs a{};
  a.dtype = dtype;
  a.B = static_cast<int>(h[1]);
  a.Nq = static_cast<int>(h[2]);
  a.Hq = static_cast<int>(h[3]);
  a.Hkv = static_cast<int>(h[4]);
  a.D = static_cast<int>(h[5]);
  a.C1 = static_cast<int>(h[8]);
  a.C2 = static_cast<int>(h[9]);
  a.prob = ProblemDesc{Band{static_cast<int>(h[6]), 0},
                       Band{static_cast<int>(h[7]), 0},
                       static_cast<float>(scale),
                       h[10] != 0,
                       nullptr,
                       a.B,
                       a.Nq};
  Input q = read_tensor(r, "q", eb), k1 = read_tensor(r, "k1_cache", eb), k2 = read_tensor(r, "k2_cache", eb);
  Input v1 = read_tensor(r, "v1_cache", eb), v2 = read_tensor(r, "v2_cache", eb);
  Input lengths = read_tensor(r, "cache_seqlens", 4);
  const size_t rows = static_cast<size_t>(a.B) * a.Nq * a.Hq;
  Buffer out(rows * a.D * eb, "out", true), lse(rows * 4, "lse", true);
  Buffer workspace(decode_workspace_floats(rows, decode_splits(a.prob.band1), a.D) * 4, "workspace", true);
  a.q = q.ref;
  a.k1 = k1.ref;
  a.k2 = k2.ref;
  a.v1 = v1.ref;
  a.v2 = v2.ref;
  a.cache_seqlens = static_cast<const int*>(lengths.ref.ptr);
  a.out = MutTensorRef{out.data.get(), static_cast<int64_t>(a.Nq) * a.Hq * a.D, static_cast<int64_t>(a.Hq) * a.D, a.D};
  a.lse = reinterpret_cast<float*>(lse.data.get());
  a.workspace = reinterpret_cast<float*>(workspace.data.get());
  run_decode(a, nullptr);
  for (const Buffer* b : {&out, &lse}) write(fout, *b);
}

void print_path_counts() {
  for (const auto& [label, paths] : sa_emu::ctx().path_counts) {
    const size_t slash = label.rfind('/');
    const std::string kernel = label.substr(0, slash), head_dim = label.substr(slash + 1);
    if (paths.empty()) fprintf(stderr, "path %s %s - 0\n", kernel.c_str(), head_dim.c_str());
    for (const auto& [name, count] : paths)
      fprintf(stderr, "path %s %s %s %lld\n", kernel.c_str(), head_dim.c_str(), name.c_str(), count);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  uint64_t seed = 1;
  bool fast_math = false;
  while (!args.empty() && args[0].rfind("--", 0) == 0) {
    if (args[0] == "--seed" && args.size() > 1) {
      seed = std::stoull(args[1]);
      args.erase(args.begin(), args.begin() + 2);
    } else if (args[0] == "--fast-math") {
      fast_math = true;
      args.erase(args.begin());
    } else {
      fprintf(stderr, "unknown option %s\n", args[0].c_str());
      return 2;
    }
  }
  sa_emu::set_seed(seed);
  sa_emu::set_fast_math(fast_math);
  if (args.size() == 1 && args[0] == "configs") {
    print_configs<64>();
    print_configs<128>();
    print_configs<256>();
    return 0;
  }
  if (args.size() == 2 && args[0] == "selftest") return run_selftest(args[1]);
  if (args.size() != 3) {
    fprintf(stderr, "usage: %s [--seed S] [--fast-math] fwd|bwd|decode IN OUT | selftest NAME | configs\n", argv[0]);
    return 2;
  }
  const std::string op = args[0];
  FILE* fin = fopen(args[1].c_str(), "rb");
  if (!fin) sa_emu::fail("cannot open %s", args[1].c_str());
  FILE* fout = fopen(args[2].c_str(), "wb");
  if (!fout) sa_emu::fail("cannot open %s", args[2].c_str());
  Reader r{fin};
  int64_t h[16];
  for (auto& v : h) v = r.get<int64_t>();
  const double scale = r.get<double>();
  const DType dtype = h[0] == 0 ? DType::kHalf : h[0] == 1 ? DType::kBFloat16 : DType::kFloat;
  const int eb = dtype == DType::kFloat ? 4 : 2;
  if (op == "decode") {
    run_decode_op(r, fout, h, scale, dtype, eb);
  } else if (op == "fwd" || op == "bwd") {
    run_attention_op(r, fout, op, h, scale, dtype, eb);
  } else {
    sa_emu::fail("unknown op %s", op.c_str());
  }
  fclose(fout);
  fclose(fin);
  print_path_counts();
  fprintf(stderr, "emulator: ok, %lld warp collectives\n", static_cast<long long>(sa_emu::ctx().collectives));
  return 0;
}
