"""The main job: run 2-simplicial attention on the best available device and check it.

Computes forward and backward with backend="auto" (a GPU backend on CUDA, the C++ kernel on
CPU), checks both against the reference backend in float64, and prints the errors and a
timing line with TFLOP/s under the CONTRACT §2 FLOP convention.
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import simplicial_attn as sa  # noqa: E402
from bench.flops import CONVENTION, attention_flops  # noqa: E402
from simplicial_attn import backends  # noqa: E402


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        B, N, Hq, Hkv, D, w1, w2, dtype = 2, 4096, 16, 2, 128, 512, 32, torch.bfloat16
    else:
        B, N, Hq, Hkv, D, w1, w2, dtype = 1, 512, 8, 2, 64, 128, 32, torch.float32
    name = backends.select("auto", device, dtype)
    print(f"simplicial-attn demo on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'})")
    print(f"  B={B} N={N} Hq={Hq} Hkv={Hkv} D={D} w1={w1} w2={w2} causal dtype={str(dtype)[6:]} backend={name}")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, N, Hq, D, generator=g).to(device, dtype).requires_grad_()
    kv = [torch.randn(B, N, Hkv, D, generator=g).to(device, dtype).requires_grad_() for _ in range(4)]
    dout = torch.randn(B, N, Hq, D, generator=g).to(device, dtype)

    def step():
        out = sa.two_simplicial_attention(q, *kv, w1=w1, w2=w2)
        grads = torch.autograd.grad(out, [q, *kv], dout)
        return out, grads

    step()  # warm-up (Triton compiles its kernels at first use)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out, grads = step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    leaves = [t.detach().double().requires_grad_() for t in (q, *kv)]
    ref = sa.two_simplicial_attention(*leaves, w1=w1, w2=w2, backend="reference")
    ref_grads = torch.autograd.grad(ref, leaves, dout.double())
    errors = [rel_err(out, ref)] + [rel_err(a, b) for a, b in zip(grads, ref_grads, strict=True)]
    names = ["out", "dq", "dk1", "dk2", "dv1", "dv2"]
    print(
        "  relative error vs float64 reference: "
        + ", ".join(f"{n} {e:.1e}" for n, e in zip(names, errors, strict=True))
    )
    flops = attention_flops(B, N, Hq, D, w1, w2, mode="fwdbwd")
    print(f"  fwd+bwd {seconds * 1e3:.1f} ms = {flops / seconds / 1e12:.3f} TFLOP/s ({CONVENTION})")
    bound = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}[dtype]
    if device == "cuda" and dtype == torch.float32 and os.environ.get("SIMPLICIAL_ATTN_ALLOW_TF32") == "1":
        bound = 2e-3
    worst = max(errors)
    print(f"  {'PASS' if worst <= bound else 'FAIL'}: worst error {worst:.1e} (bound {bound:g}, CONTRACT §5)")
    return 0 if worst <= bound else 1


if __name__ == "__main__":
    sys.exit(main())
