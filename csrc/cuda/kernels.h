// Entry points of the CUDA kernels, one per dtype, defined in fwd_*.cu, bwd_*.cu and fp32.cu (so
// the instantiations compile in parallel), and the dtype dispatch api.cpp and the emulator's
// driver share. Nothing here synchronises with the host: each call only enqueues kernels on
// `stream`.
#pragma once

#include <cuda_runtime_api.h>

#include "params.h"

namespace simplicial_attn::cuda {

void run_fwd_fp16(const FwdArgs& args, cudaStream_t stream);
void run_fwd_bf16(const FwdArgs& args, cudaStream_t stream);
void run_fwd_fp32(const FwdArgs& args, cudaStream_t stream);
void run_bwd_fp16(const BwdArgs& args, cudaStream_t stream);
void run_bwd_bf16(const BwdArgs& args, cudaStream_t stream);
void run_bwd_fp32(const BwdArgs& args, cudaStream_t stream);
void run_decode(const DecodeArgs& args, cudaStream_t stream);  // every dtype (decode.cu)
// The zeroed float32 scratch run_bwd needs for `args` (BwdArgs::scratch), in elements: the fused
// dq + dk2 + dv2 pass's partial sums (launch_bwd.cuh plan_dqkv2); 0 when the call needs none.
int64_t bwd_scratch_floats(const BwdArgs& args);  // bwd_fp16.cu

inline void run_fwd(const FwdArgs& args, cudaStream_t stream) {
  switch (args.dtype) {
    case DType::kHalf:
      return run_fwd_fp16(args, stream);
    case DType::kBFloat16:
      return run_fwd_bf16(args, stream);
    case DType::kFloat:
      return run_fwd_fp32(args, stream);
  }
}

inline void run_bwd(const BwdArgs& args, cudaStream_t stream) {
  switch (args.dtype) {
    case DType::kHalf:
      return run_bwd_fp16(args, stream);
    case DType::kBFloat16:
      return run_bwd_bf16(args, stream);
    case DType::kFloat:
      return run_bwd_fp32(args, stream);
  }
}

}  // namespace simplicial_attn::cuda
