"""One small forward + backward of every CUDA C++ kernel path, for compute-sanitizer on a GPU:

    compute-sanitizer --tool memcheck  python bench/gpu_sanitize.py
    compute-sanitizer --tool racecheck python bench/gpu_sanitize.py
    compute-sanitizer --tool synccheck python bench/gpu_sanitize.py

Covers fp16 / bf16 (tensor cores) and fp32 (SIMT), head dims 64 / 128 / 256, head packing,
unaligned rows (scalar loads) and swapped key roles (w2 > w1). Small on purpose: racecheck is slow.
Exits non-zero if a result is not finite (the sanitizer's own report is the real check).
"""

import sys

import torch

import simplicial_attn  # noqa: F401  (registers torch.ops.simplicial_attn)
from simplicial_attn.problem import Problem

# (B, N, Hq, Hkv, D, w1, w2, causal)
SHAPES = [
    (1, 70, 2, 1, 64, 20, 6, True),
    (1, 40, 2, 2, 128, 8, 12, False),
    (1, 20, 1, 1, 200, 6, 4, True),
    (1, 9, 17, 1, 24, 4, 3, False),
]


def main():
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for B, N, Hq, Hkv, D, w1, w2, causal in SHAPES:
            q = torch.randn(B, N, Hq, D, device="cuda", dtype=dtype, generator=g)
            k1, k2, v1, v2 = (torch.randn(B, N, Hkv, D, device="cuda", dtype=dtype, generator=g) for _ in range(4))
            dout = torch.randn_like(q)
            prob = Problem(w1, w2, causal, D**-0.5).fused_args()
            out, lse, lse_lo = torch.ops.simplicial_attn.fused_fwd(q, k1, k2, v1, v2, *prob)
            grads = torch.ops.simplicial_attn.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, *prob)
            torch.cuda.synchronize()
            if not all(torch.isfinite(t).all() for t in (out, lse, *grads)):
                sys.exit(f"non-finite result for {dtype} {(B, N, Hq, Hkv, D, w1, w2, causal)}")
    print("gpu_sanitize: ok")


if __name__ == "__main__":
    main()
