"""One small forward + backward of every CUDA C++ kernel path, for compute-sanitizer on a GPU:

    compute-sanitizer --tool memcheck  python bench/gpu_sanitize.py
    compute-sanitizer --tool racecheck python bench/gpu_sanitize.py
    compute-sanitizer --tool synccheck python bench/gpu_sanitize.py
    python bench/gpu_sanitize.py --one     # the first case only (bench/gpu_check.sh's ncu stage)
    python bench/gpu_sanitize.py --list    # the cases, without a GPU

Covers fp16 / bf16 (tensor cores) and fp32 (SIMT), head dims 64 / 128 / 256 with more than one
pipeline iteration at each (the shapes of tests/test_cuda_emulated.py's coverage cases), head
packing, unaligned rows (scalar loads) and swapped key roles (w2 > w1). Small on purpose:
racecheck is slow. Exits non-zero if a result is not finite (the sanitizer's own report is the
real check).
"""

import argparse
import sys

import torch

# (B, N, Hq, Hkv, D, w1, w2, causal)
SHAPES = [
    (1, 70, 2, 1, 64, 20, 6, True),
    (1, 70, 2, 1, 120, 40, 20, True),
    (1, 40, 2, 2, 128, 8, 12, False),
    (1, 40, 2, 1, 248, 20, 12, True),
    (1, 20, 1, 1, 200, 6, 4, True),
    (1, 9, 17, 1, 24, 4, 3, False),
    (1, 3, 17, 1, 196, 3, 2, False),
]
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def run(cases):
    import simplicial_attn  # noqa: F401  (registers torch.ops.simplicial_attn)
    from simplicial_attn.problem import Problem

    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype, (B, N, Hq, Hkv, D, w1, w2, causal) in cases:
        q = torch.randn(B, N, Hq, D, device="cuda", dtype=dtype, generator=g)
        k1, k2, v1, v2 = (torch.randn(B, N, Hkv, D, device="cuda", dtype=dtype, generator=g) for _ in range(4))
        dout = torch.randn_like(q)
        prob = Problem(w1, w2, causal, D**-0.5).fused_args()
        out, lse, lse_lo = torch.ops.simplicial_attn.fused_fwd(q, k1, k2, v1, v2, *prob)
        grads = torch.ops.simplicial_attn.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, *prob)
        torch.cuda.synchronize()
        if not all(torch.isfinite(t).all() for t in (out, lse, *grads)):
            sys.exit(f"non-finite result for {dtype} {(B, N, Hq, Hkv, D, w1, w2, causal)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", action="store_true", help="only the first case (fp16)")
    parser.add_argument("--list", action="store_true", help="print the cases and exit (no GPU needed)")
    args = parser.parse_args(argv)
    cases = [(dtype, shape) for dtype in DTYPES for shape in SHAPES]
    if args.one:
        cases = cases[:1]
    if args.list:
        for dtype, shape in cases:
            print(str(dtype).removeprefix("torch."), *shape)
        return
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    run(cases)
    print(f"gpu_sanitize: ok ({len(cases)} cases)")


if __name__ == "__main__":
    main()
