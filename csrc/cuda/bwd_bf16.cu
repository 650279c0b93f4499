// Backward instantiations for bfloat16 (tensor cores), head dims 64, 128, 256.
#include "kernels.h"
#include "launch_bwd.cuh"

namespace simplicial_attn::cuda {
void run_bwd_bf16(const BwdArgs& args, cudaStream_t stream) { run_bwd_tc<__nv_bfloat16>(args, stream); }
}  // namespace simplicial_attn::cuda
