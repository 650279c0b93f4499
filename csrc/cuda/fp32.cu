// float32 forward and backward: CUDA-core (SIMT) kernels, head dims 64, 128, 256.
#include "kernels.h"
#include "launch_simt.cuh"

namespace simplicial_attn::cuda {
void run_fwd_fp32(const FwdArgs& args, cudaStream_t stream) { run_fwd_simt(args, stream); }
void run_bwd_fp32(const BwdArgs& args, cudaStream_t stream) { run_bwd_simt(args, stream); }
}  // namespace simplicial_attn::cuda
