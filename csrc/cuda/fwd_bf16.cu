// Forward instantiations for bfloat16 (tensor cores), head dims 64, 128, 256.
#include "kernels.h"
#include "launch_fwd.cuh"

namespace simplicial_attn::cuda {
void run_fwd_bf16(const FwdArgs& args, cudaStream_t stream) { run_fwd_tc<__nv_bfloat16>(args, stream); }
}  // namespace simplicial_attn::cuda
