// Decode instantiations (decode_kernel.cuh): float16, bfloat16 and float32 inputs, head dims 64,
// 128, 256 (SIMT kernels: small and quick to build, so one file).
#include "kernels.h"
#include "launch_decode.cuh"

namespace simplicial_attn::cuda {
void run_decode(const DecodeArgs& args, cudaStream_t stream) {
  switch (args.dtype) {
    case DType::kHalf:
      return run_decode_t<__half>(args, stream);
    case DType::kBFloat16:
      return run_decode_t<__nv_bfloat16>(args, stream);
    case DType::kFloat:
      return run_decode_t<float>(args, stream);
  }
}
}  // namespace simplicial_attn::cuda
