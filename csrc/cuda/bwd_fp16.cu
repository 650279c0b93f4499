// Backward instantiations for float16 (tensor cores), head dims 64, 128, 256.
#include "kernels.h"
#include "launch_bwd.cuh"

namespace simplicial_attn::cuda {
void run_bwd_fp16(const BwdArgs& args, cudaStream_t stream) { run_bwd_tc<__half>(args, stream); }
// Defined once, here: the plan does not depend on the 16-bit type; fp32 runs the SIMT kernels.
int64_t bwd_scratch_floats(const BwdArgs& args) {
  return args.dtype == DType::kFloat ? 0 : bwd_tc_scratch_floats(args);
}
}  // namespace simplicial_attn::cuda
