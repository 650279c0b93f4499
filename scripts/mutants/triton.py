"""Planted bugs in the Triton kernels (triton_kernels/); see scripts/mutate.py.

Each stands for a bug a GPU would show and the interpreter must catch: the cheap ones on one
small parity case (tests/test_triton_paths.py's negative case: N = 32, D = 16, w1 = w2 = 2,
out, lse and all five gradients against the oracle), the others on the case that reaches
their path.
"""

SMALL = ["tests/test_triton_paths.py", "-k", "test_counters_see_what_a_case_does_not_reach"]
PATHS_D64 = ["tests/test_triton_paths.py", "-k", "BLOCK_D64"]

MUTANTS = [
    dict(
        name="triton-fwd-drop-u-rescale",
        path="triton_kernels/fwd.py",
        old="acc = acc * beta[:, None] + y * v2u.to(tl.float32)",
        new="acc = acc + y * v2u.to(tl.float32)",
        tests=SMALL,
        cheap=True,
        why="the forward's accumulator is not rescaled when a later offset u raises the running max",
    ),
    dict(
        name="triton-fwd-drop-j-rescale",
        path="triton_kernels/softmax.py",
        old="y = mma(p.to(dt), v1b, y * alpha[:, None], INPUT_PRECISION, UPCAST)",
        new="y = mma(p.to(dt), v1b, y, INPUT_PRECISION, UPCAST)",
        tests=PATHS_D64,
        why="the per-u partial sum is not rescaled when a later j-block raises the running max",
    ),
    dict(
        name="triton-window-mask-shift",
        path="triton_kernels/mask.py",
        old="return ok & (x >= center - L) & (x <= center + R)",
        new="return ok & (x >= center - L + 1) & (x <= center + R + 1)",
        tests=SMALL,
        cheap=True,
        why="the k1/v1 window of every fused kernel (and decoding's) shifted by one position",
    ),
    dict(
        name="triton-lse-log2",
        path="triton_kernels/softmax.py",
        old="ln_l = tl.log(l_i)",
        new="ln_l = tl.log2(l_i)",
        tests=SMALL,
        cheap=True,
        why="lse adds the log of the sum in base 2 to a max in natural units (a public kernel's unit bug)",
    ),
    dict(
        name="triton-dkv1-swap-p-and-ds",
        path="triton_kernels/bwd_dkv1.py",
        old="""                dk1 = mma(ds.to(dt), bq, dk1, INPUT_PRECISION, UPCAST)
                dv1 = mma(p.to(dt), bo, dv1, INPUT_PRECISION, UPCAST)""",
        new="""                dk1 = mma(p.to(dt), bq, dk1, INPUT_PRECISION, UPCAST)
                dv1 = mma(ds.to(dt), bo, dv1, INPUT_PRECISION, UPCAST)""",
        tests=SMALL,
        why="two operands swapped: dk1 accumulates P and dv1 accumulates dA",
    ),
    dict(
        name="triton-dkv1-k-tail-unmasked",
        path="triton_kernels/bwd_dkv1.py",
        old="k_ok = k0 + kr <= k_hi",
        new="k_ok = k0 + kr < N",
        tests=SMALL,
        cheap=True,
        why="the tail of a k-block past the window K(i) is not masked (rows inside N but outside K(i) count)",
    ),
    dict(
        name="triton-dkv2-drop-last-offset",
        path="triton_kernels/bwd_dkv2.py",
        old="t_hi = tl.minimum(L2, n - 1 - k0)",
        new="t_hi = tl.minimum(L2 - 1, n - 1 - k0)",
        tests=SMALL,
        why="dk2 / dv2 miss the queries at the far end of their k2 window (a window bound off by one)",
    ),
    dict(
        name="triton-delta-batch-stride",
        path="triton_kernels/bwd_delta.py",
        old="DOUT + b * stride_dob + h * stride_doh",
        new="DOUT + b * stride_don + h * stride_doh",
        tests=["tests/test_triton.py", "-k", "test_grid_fp32_sequence_tiles and B2-N7-Hq2-Hkv1-D16-w1_3-w2_5-causal"],
        why="the Delta preprocess offsets dout by the wrong batch stride (right at B = 1, wrong at B = 2)",
    ),
    dict(
        name="triton-block-d-capped-at-64",
        path="triton_kernels/launch.py",
        # the forward launcher's line (bwd and decode have their own)
        old="    bd = block_d(D)\n    arch = arch_of(q.device)\n    fp32 = q.dtype == torch.float32\n    det",
        new="    bd = min(block_d(D), 64)\n    arch = arch_of(q.device)\n    fp32 = q.dtype == torch.float32\n    det",
        tests=["tests/test_triton_paths.py", "-k", "BLOCK_D128"],
        why="a head-dim block fixed at 64 leaves half of a D = 96 or 128 output unwritten",
    ),
    dict(
        name="triton-query-tile-kv-head-ignored",
        path="triton_kernels/tiles.py",
        old="head_rows(K1, b, g, start, stride_k1b, stride_k1h, stride_k1n)",
        new="head_rows(K1, b, 0, start, stride_k1b, stride_k1h, stride_k1n)",
        tests=["tests/test_triton.py", "-k", "test_grid_fp32_sequence_tiles and B1-N7-Hq4-Hkv2-D40"],
        why="every query head reads kv head 0 of k1 (K/V heads ignored when Hkv > 1)",
    ),
    dict(
        name="triton-bwd-p-unclamped",
        path="triton_kernels/softmax.py",
        old="return tl.exp2(tl.where(t > 0, 0.0, t) * 1.4426950408889634)",
        new="return tl.exp2(t * 1.4426950408889634)",
        tests=["tests/test_triton_numerics.py", "-k", "inexact and float32"],
        why="the backward's P = exp(z - lse) unclamped: a recomputed logit an ulp above the forward's "
        "overflows at |logit| ~ 1e10 (issue 14)",
    ),
    dict(
        name="triton-bwd-ignores-lse-lo",
        path="triton_kernels/softmax.py",
        old="(z - per_row(lse, ROWS)) - per_row(lse_lo, ROWS)",
        new="(z - per_row(lse, ROWS))",
        tests=["tests/test_large_logits.py::test_logit_magnitude_sweep[triton-float32-2^10-+]"],
        why="the backward recomputes P from lse alone: its rounding (6e-5 at |logit| = 2^10) enters every P of a row",
    ),
    dict(
        name="triton-varlen-k1-rows-of-the-first-sequence",
        path="triton_kernels/tiles.py",
        old="head_rows(K1, b, g, start, stride_k1b, stride_k1h, stride_k1n)",
        new="head_rows(K1, b, g, 0, stride_k1b, stride_k1h, stride_k1n)",
        tests=PATHS_D64,
        why="packed sequences: fwd and bwd_dq read k1 from the packing's first rows, not their own sequence's",
    ),
    dict(
        name="triton-det-cross-sign",
        path="triton_kernels/bwd_dq.py",
        old="dq += cross(x_1, x_2, k2_1, k2_2)",
        new="dq += cross(x_2, x_1, k2_1, k2_2)",
        tests=PATHS_D64,
        why="determinant dq: the cross product x x k2 with its channels permuted the wrong way",
    ),
    dict(
        name="triton-det-chunk-shift",
        path="triton_kernels/operand.py",
        old="return tl.where(d < D, c + (d + 1) % 3 - d, 0), tl.where(d < D, c + (d + 2) % 3 - d, 0)",
        new="return tl.where(d < D, c + (d + 2) % 3 - d, 0), tl.where(d < D, c + (d + 1) % 3 - d, 0)",
        tests=PATHS_D64,
        why="determinant logits: s(d) and s(s(d)) swapped, which negates every determinant",
    ),
    dict(
        name="triton-decode-ring-slot",
        path="triton_kernels/decode.py",
        old="stride_k1n, stride_v1n, C1, d_ok,",
        new="stride_k1n, stride_v1n, C2, d_ok,",
        tests=PATHS_D64,
        why="decoding reads k1/v1 position j from slot j % C2 (the other ring's size)",
    ),
    dict(
        name="triton-decode-combine-unscaled",
        path="triton_kernels/decode.py",
        old="w = exp_shifted(m_s, finite_max(m))",
        new="w = tl.where(sp_ok, 1.0, 0.0)",
        tests=PATHS_D64,
        why="the decode combine adds the splits' partials without rescaling them to the common max",
    ),
]
