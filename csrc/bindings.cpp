// The Python module `simplicial_attn._C`: importing it registers the kernels (the
// TORCH_LIBRARY blocks in the other translation units) and exposes build_info(), so a
// user can tell which kernels and CUDA archs this build holds.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>
#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#else
#include <torch/version.h>
#endif
#ifdef SIMPLICIAL_ATTN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include <string>
#include <vector>

#include "cpu/cpu_info.h"
#include "cpu/fma_peak.h"

namespace {

// The simplicial_attn ops that have a kernel for `key`, asked of the dispatcher so the list
// can never disagree with what is registered.
std::vector<std::string> registered_kernels(c10::DispatchKey key) {
  std::vector<std::string> names;
  for (const auto& op : c10::Dispatcher::singleton().getAllOpNames()) {
    if (op.name.rfind("simplicial_attn::", 0) != 0) continue;
    auto handle = c10::Dispatcher::singleton().findOp(op);
    if (handle && handle->hasKernelForDispatchKey(key)) names.push_back(op.name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

pybind11::dict build_info() {
  pybind11::dict info;
  info["cpu_kernels"] = registered_kernels(c10::DispatchKey::CPU);
  info["cuda_kernels"] = registered_kernels(c10::DispatchKey::CUDA);
  // The instruction set the CPU kernels picked on this machine (SIMPLICIAL_ATTN_CPU_ISA caps it).
  info["cpu_isa"] = std::string(simplicial_attn::cpu::float_kernel_isa());
#ifdef SIMPLICIAL_ATTN_WITH_CUDA
  info["with_cuda"] = true;
  info["cuda_archs"] = std::string(SIMPLICIAL_ATTN_CUDA_ARCHS);
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
#else
  info["with_cuda"] = false;
  info["cuda_archs"] = std::string();
  info["cuda_version"] = pybind11::none();
#endif
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                          std::to_string(TORCH_VERSION_PATCH);
  return info;
}

pybind11::dict cpu_fma_peak(const std::string& dtype, double seconds, int64_t repeats, int64_t iters) {
  TORCH_CHECK(dtype == "float32" || dtype == "float64", "cpu_fma_peak: dtype must be 'float32' or 'float64', got '",
              dtype, "'");
  TORCH_CHECK(seconds > 0 && repeats >= 1, "cpu_fma_peak: need seconds > 0 and repeats >= 1, got ", seconds, " and ",
              repeats);
  const auto p = simplicial_attn::cpu::fma_peak(dtype == "float64", seconds, repeats, iters);
  pybind11::dict r;
  r["dtype"] = dtype;
  r["gflops"] = p.gflops;
  r["flops"] = p.flops;
  r["seconds"] = p.seconds;
  r["threads"] = p.threads;
  r["lanes"] = p.lanes;
  r["chains"] = p.chains;
  r["isa"] = std::string(p.isa);
  return r;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "simplicial-attn compiled kernels (registered as torch.ops.simplicial_attn.*)";
  m.def("build_info", &build_info, "What this build of the extension holds");
  m.def("cpu_fma_peak", &cpu_fma_peak, pybind11::arg("dtype") = "float32", pybind11::arg("seconds") = 0.05,
        pybind11::arg("repeats") = 5, pybind11::arg("iters") = 0,
        "This CPU's vector-FMA peak in GFLOP/s (all intra-op threads, best of `repeats` runs of ~`seconds`, or "
        "of `iters` iterations per thread when given)");
}
