"""Planted bugs in the C++ CPU kernels (csrc/cpu/); see scripts/mutate.py.

Each rebuilds the extension (CPU only, a few minutes on 2 cores), so none is cheap; run them
with `python scripts/mutate.py cpu-...` or all with `python scripts/mutate.py`.
"""

MUTANTS = [
    dict(
        name="cpu-fwd-exponent-fma",
        path="csrc/cpu/kernel_impl.h",
        old="const reg p = V::exp2(V::mul(V::sub(V::load(row + v * W), vm), vl2));",
        new="const reg p = V::exp2(V::fmadd(V::load(row + v * W), vl2, V::set1(-m * log2e)));",
        tests=["tests/test_cpu_numerics.py", "-k", "single_pair"],
        rebuild=True,
        why="the forward exponent as fma(z, log2 e, -m log2 e): the rounding of m log2 e enters it (NaN at 1e10)",
    ),
    dict(
        name="cpu-bwd-drops-lse-lo",
        path="csrc/cpu/kernel_impl.h",
        old="const reg z = V::sub(V::sub(V::load(srow + v * W), vlse), vlse_lo);",
        new="const reg z = V::sub(V::load(srow + v * W), V::add(vlse, V::mul(vlse_lo, V::zero())));",
        tests=["tests/test_cpu_numerics.py", "-k", "offset"],
        rebuild=True,
        why="the backward recomputes P from lse alone: its rounding enters every P of the row (1.7e-5 at 1e3)",
    ),
    dict(
        name="cpu-fwd-missing-rescale",
        path="csrc/cpu/kernel_impl.h",
        old="        row_scale<V>(w.acc, w.acc, alpha, DP);\n",
        new="",
        tests=["tests/test_cpu_kernels.py", "-k", "multi_tile"],
        rebuild=True,
        why="the online softmax forgets to rescale the output accumulator when the running max grows",
    ),
    dict(
        name="cpu-varlen-sequence-starts-one-row-early",
        path="csrc/cpu/layout.h",
        old="t.seq_.push_back({cu[s], cu[s + 1]});",
        new="t.seq_.push_back({s > 0 && cu[s] > 0 ? cu[s] - 1 : cu[s], cu[s + 1]});",
        tests=["tests/test_cpu_layouts.py", "-k", "packed_matches"],
        rebuild=True,
        why="a window shifted by one at a sequence start: every sequence but the first sees its predecessor's last row",
    ),
    dict(
        name="cpu-halo-sum-forgets-far-blocks",
        path="csrc/cpu/layout.h",
        old="last = owner + (job.band.L + sc.BQ - 1) / sc.BQ;",
        new="last = owner + 1;",
        tests=["tests/test_cpu_layouts.py", "-k", "packed_matches"],
        rebuild=True,
        why="the backward's halo sum drops the contributions of blocks two or more ahead of a row's own",
    ),
    dict(
        name="cpu-decode-combine-without-rescale",
        path="csrc/cpu/decode.cpp",
        old="const T f = std::exp(ml[2 * c] - m);",
        new="const T f = T(1);",
        tests=["tests/test_cpu_layouts.py", "-k", "decode_matches"],
        rebuild=True,
        why="flash-decoding combines the parts' sums without rescaling them to the common max",
    ),
    dict(
        name="cpu-determinant-swap-keeps-sign",
        path="csrc/cpu/attention.cpp",
        old="const double scale = p.logits == Logits::kDeterminant ? -p.scale : p.scale;",
        new="const double scale = p.scale;",
        tests=["tests/test_cpu_layouts.py", "-k", "determinant"],
        rebuild=True,
        why="swapping (k1, v1, w1) and (k2, v2, w2) when w2 > w1 without negating the determinant",
    ),
    dict(
        name="cpu-determinant-dk2-wrong-basis",
        path="csrc/cpu/kernel_impl.h",
        old="row_fma<V>(t.dk2 + row, w.qn_s, mk, DP);",
        new="row_fma<V>(t.dk2 + row, w.qn_ss, mk, DP);",
        tests=["tests/test_cpu_layouts.py", "-k", "determinant"],
        rebuild=True,
        why="dk2's cross product accumulated in the wrong permuted basis (q[s(s(d))] for q[s(d)])",
    ),
]
