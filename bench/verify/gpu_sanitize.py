"""One small forward + backward of every CUDA C++ kernel path, for compute-sanitizer on a GPU:

    compute-sanitizer --tool memcheck  python bench/verify/gpu_sanitize.py
    compute-sanitizer --tool racecheck python bench/verify/gpu_sanitize.py
    compute-sanitizer --tool synccheck python bench/verify/gpu_sanitize.py
    python bench/verify/gpu_sanitize.py --one     # the first case only (bench/verify/gpu_check.sh's ncu stage)
    python bench/verify/gpu_sanitize.py --list    # the cases, without a GPU

Covers fp16 / bf16 (tensor cores) and fp32 (SIMT), head dims 64 / 128 / 256 with more than one
pipeline iteration at each (the shapes of tests/test_cuda_emulated.py's coverage cases), head
packing, unaligned rows (scalar loads), swapped key roles (w2 > w1), determinant logits, packed
sequences (empty and length-1 ones) and decoding against wrapped rings. Small on purpose:
racecheck is slow. Exits non-zero if a result is not finite (the sanitizer's own report is the
real check).
"""

import argparse
import itertools
import sys

import torch

# (B, N, Hq, Hkv, D, w1, w2, causal, logits)
SHAPES = [
    (1, 70, 2, 1, 64, 20, 6, True, "trilinear"),
    (1, 70, 2, 1, 120, 40, 20, True, "trilinear"),
    (1, 40, 2, 2, 128, 8, 12, False, "trilinear"),
    (1, 40, 2, 1, 248, 20, 12, True, "trilinear"),
    (1, 20, 1, 1, 200, 6, 4, True, "trilinear"),
    (1, 9, 17, 1, 24, 4, 3, False, "trilinear"),
    (1, 3, 17, 1, 196, 3, 2, False, "trilinear"),
    (1, 30, 2, 1, 96, 5, 9, True, "determinant"),
    (1, 20, 2, 1, 192, 7, 4, False, "determinant"),
]
# Packed: (lengths, Hq, Hkv, D, w1, w2, causal, logits)
PACKED = [([0, 1, 37, 9], 2, 1, 64, 12, 5, True, "trilinear"), ([5, 0, 20], 2, 2, 96, 6, 4, False, "determinant")]
# Decoding: (B, Hq, Hkv, D, w1, w2, lengths, Nq, logits); the rings hold w + Nq - 1 slots.
DECODES = [(2, 4, 2, 64, 40, 6, (3, 77), 1, "trilinear"), (1, 3, 1, 192, 20, 5, (30,), 2, "determinant")]
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _fwd_bwd(q, k1, k2, v1, v2, prob, what):
    out, lse, lse_lo = torch.ops.simplicial_attn.fused_fwd(q, k1, k2, v1, v2, *prob.fused_args())
    grads = torch.ops.simplicial_attn.fused_bwd(
        torch.randn_like(q), q, k1, k2, v1, v2, out, lse, lse_lo, *prob.fused_args()
    )
    torch.cuda.synchronize()
    if not all(torch.isfinite(t).all() for t in (out, lse, *grads)):
        sys.exit(f"non-finite result for {what}")


def run(cases):
    import simplicial_attn  # noqa: F401  (registers torch.ops.simplicial_attn)
    from simplicial_attn.problem import Problem, window_band

    g = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, dtype):
        return torch.randn(*shape, device="cuda", dtype=dtype, generator=g)

    for kind, dtype, case in cases:
        if kind == "batched":
            B, N, Hq, Hkv, D, w1, w2, causal, logits = case
            q, k1, k2, v1, v2 = [randn(B, N, h, D, dtype=dtype) for h in (Hq, Hkv, Hkv, Hkv, Hkv)]
            prob = Problem(window_band(w1, causal, N), window_band(w2, causal, N), D**-0.5, logits)
            _fwd_bwd(q, k1, k2, v1, v2, prob, (kind, dtype, case))
        elif kind == "packed":
            lengths, Hq, Hkv, D, w1, w2, causal, logits = case
            T = sum(lengths)
            q, k1, k2, v1, v2 = [randn(1, T, h, D, dtype=dtype) for h in (Hq, Hkv, Hkv, Hkv, Hkv)]
            cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device="cuda")
            bands = (window_band(w, causal, max(lengths)) for w in (w1, w2))
            prob = Problem(*bands, D**-0.5, logits, cu_seqlens=cu, max_seqlen=max(lengths))
            _fwd_bwd(q, k1, k2, v1, v2, prob, (kind, dtype, case))
        else:
            B, Hq, Hkv, D, w1, w2, lengths, nq, logits = case
            c1, c2 = w1 + nq - 1, w2 + nq - 1
            caches = [randn(B, c, Hkv, D, dtype=dtype) for c in (c1, c2, c1, c2)]
            lens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
            prob = Problem(window_band(w1, True), window_band(w2, True), D**-0.5, logits, cache_seqlens=lens)
            out, lse = torch.ops.simplicial_attn.fused_decode(
                randn(B, nq, Hq, D, dtype=dtype), *caches, *prob.decode_args()
            )
            torch.cuda.synchronize()
            if not (torch.isfinite(out).all() and torch.isfinite(lse).all()):
                sys.exit(f"non-finite result for {(kind, dtype, case)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", action="store_true", help="only the first case (fp16)")
    parser.add_argument("--list", action="store_true", help="print the cases and exit (no GPU needed)")
    args = parser.parse_args(argv)
    cases = [("batched", dtype, shape) for dtype in DTYPES for shape in SHAPES]
    cases += [("packed", dtype, p) for dtype in DTYPES for p in PACKED]
    cases += [("decode", dtype, d) for dtype in DTYPES for d in DECODES]
    if args.one:
        cases = cases[:1]
    if args.list:
        for kind, dtype, case in cases:
            print(kind, str(dtype).removeprefix("torch."), *case)
        return
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    run(cases)
    print(f"gpu_sanitize: ok ({len(cases)} cases)")


if __name__ == "__main__":
    main()
