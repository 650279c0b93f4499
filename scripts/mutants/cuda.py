"""Planted bugs in the CUDA C++ kernels (csrc/cuda/); see scripts/mutate.py.

Each one must be caught without a GPU: the device-branch ones (inline PTX the emulator never
compiles) by the SASS probes of tests/test_cuda_static.py (~5 s of nvcc), the others by the
emulator (tests/test_cuda_emulated.py, tests/test_cuda_large_logits.py, tests/test_non_finite.py;
~25 s to rebuild the emulator for the mutated source, then the selection). `cheap` marks the ones
CI runs (tests/test_mutants.py): the probe mutants and one emulator mutant, ~60 s together.
"""

EMU = "tests/test_cuda_emulated.py"
PROBES = ["tests/test_cuda_static.py", "-k", "primitive_compiles"]
# The cp.async pipeline with several iterations at head dim 64 (N = 97, windows 40 / 20), one dtype.
PIPELINE_64 = [EMU, "-k", "match_oracle and N97 and float16"]
SMALL_FP16 = [EMU, "-k", "match_oracle and B2-N7-Hq2-Hkv1-D16-w1_3-w2_5-causal-float16"]

MUTANTS = [
    # ---- device branches (common.cuh inline PTX): the SASS probes
    dict(
        name="cuda-ldmatrix-trans-swapped",
        path="csrc/cuda/common.cuh",
        old='    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\\n"',
        new='    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\\n"',
        tests=PROBES,
        cheap=True,
        why="the .trans ldmatrix asm string replaced by the plain one (SASS LDSM.16.M88.4 where MT88 belongs)",
    ),
    dict(
        name="cuda-ldmatrix-plain-swapped",
        path="csrc/cuda/common.cuh",
        old='    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\\n"',
        new='    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\\n"',
        tests=PROBES,
        cheap=True,
        why="the plain ldmatrix asm string replaced by the .trans one",
    ),
    dict(
        name="cuda-mma-bf16-as-fp16",
        path="csrc/cuda/common.cuh",
        old='"mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32',
        new='"mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32',
        tests=PROBES,
        why="bf16 operands fed to an fp16 mma (HMMA.16816.F32 without .BF16)",
    ),
    dict(
        name="cuda-cp-async-never-zero-fills",
        path="csrc/cuda/common.cuh",
        old="const int src_bytes = valid ? 16 : 0;",
        new="const int src_bytes = 16;",
        tests=PROBES,
        cheap=True,
        why="cp.async always copies 16 bytes: rows past the tensor read whatever any_row holds instead of zeros",
    ),
    dict(
        name="cuda-clamp-drops-nan",
        path="csrc/cuda/numerics.cuh",
        old="return fast_exp2((t > 0.f ? 0.f : t) * kLog2e);",
        new="return fast_exp2(fminf(t, 0.f) * kLog2e);",
        tests=PROBES,
        why="the backward's clamp as fminf: a NaN logit becomes P = 1 (SASS FMNMX without .NAN)",
    ),
    # ---- kernel code: the emulator
    dict(
        name="cuda-fwd-drop-end-barrier",
        path="csrc/cuda/fwd_kernel.cuh",
        old="    cta_sync();  // B2: every warp is done with this stage and (if the chunk ends) the region\n",
        new="",
        tests=PIPELINE_64,
        cheap=True,
        why="the forward's end-of-iteration barrier dropped: the next prefetch overwrites a stage still being read",
    ),
    dict(
        name="cuda-dq-drop-end-barrier",
        path="csrc/cuda/bwd_dq_kernel.cuh",
        old="    cta_sync();  // B2\n",
        new="",
        tests=PIPELINE_64,
        why="dq's end-of-iteration barrier dropped",
    ),
    dict(
        name="cuda-dkv2-drop-end-barrier",
        path="csrc/cuda/bwd_dkv2_kernel.cuh",
        old="    cta_sync();  // B2: every warp is done with this stage and (if the chunk ends) the region\n",
        new="",
        tests=PIPELINE_64,
        why="dk2/dv2's end-of-iteration barrier dropped",
    ),
    dict(
        name="cuda-dkv1-drop-product-barrier",
        path="csrc/cuda/bwd_dkv1_kernel.cuh",
        old="          cta_sync();  // [P]: the products are visible\n",
        new="",
        tests=SMALL_FP16,
        why="dk1/dv1 read the shared products before every thread has written them",
    ),
    dict(
        name="cuda-fwd-cp-async-wait-raised",
        path="csrc/cuda/fwd_kernel.cuh",
        old="      cp_async_wait<1>();  // all groups but the prefetch just issued are complete",
        new="      cp_async_wait<2>();  // all groups but the prefetch just issued are complete",
        tests=PIPELINE_64,
        why="the forward waits for one cp.async group too few: this iteration's stage may still be in flight",
    ),
    dict(
        name="cuda-dkv2-cp-async-wait-raised",
        path="csrc/cuda/bwd_dkv2_kernel.cuh",
        old="      cp_async_wait<1>();\n",
        new="      cp_async_wait<2>();\n",
        tests=PIPELINE_64,
        why="dk2/dv2 wait for one cp.async group too few",
    ),
    dict(
        name="cuda-fragment-registers-swapped",
        path="csrc/cuda/tile.cuh",
        old="  a[1] = Elem<T>::pack(lo[2], lo[3]);\n  a[2] = Elem<T>::pack(hi[0], hi[1]);",
        new="  a[1] = Elem<T>::pack(hi[0], hi[1]);\n  a[2] = Elem<T>::pack(lo[2], lo[3]);",
        # needs rows 8-15 and columns 8-15 of a P tile in the window (N = 7 leaves them zero)
        tests=[EMU, "-k", "match_oracle and N33 and float16"],
        why="two registers of the A fragment built from C fragments exchanged (P and dA enter the mma misplaced)",
    ),
    dict(
        name="cuda-fwd-window-mask-shifted",
        path="csrc/cuda/fwd_kernel.cuh",
        old="(ok[h] && j >= jmin[h] && j <= jmax[h]) ? logit(",
        new="(ok[h] && j > jmin[h] && j <= jmax[h]) ? logit(",
        tests=SMALL_FP16,
        why="the forward's k1 window loses its first position (a mask shifted by one)",
    ),
    dict(
        name="cuda-dkv1-window-mask-shifted",
        path="csrc/cuda/bwd_dkv1_kernel.cuh",
        old="const bool in = j < N && qi <= i_hi && j >= qi - L1 && j <= qi + R1 && k >= 0 && k < N;",
        new="const bool in = j < N && qi <= i_hi && j > qi - L1 && j <= qi + R1 && k >= 0 && k < N;",
        tests=SMALL_FP16,
        why="dk1/dv1 drop the queries whose window starts at j",
    ),
    dict(
        name="cuda-simt-window-mask-shifted",
        path="csrc/cuda/simt_kernels.cuh",
        old="const int jlo = imax(0, i - p.band1.left), jhi",
        new="const int jlo = imax(0, i - p.band1.left + 1), jhi",
        count=2,
        tests=[EMU, "-k", "match_oracle and B2-N7-Hq2-Hkv1-D16-w1_3-w2_5-causal-float32"],
        why="the fp32 SIMT forward and dq lose the first position of the k1 window",
    ),
    dict(
        name="cuda-simt-dk2-roles-not-swapped",
        path="csrc/cuda/launch_simt.cuh",
        old="  std::swap(p.band1, p.band2);\n",
        new="",
        tests=[EMU, "-k", "match_oracle and B2-N7-Hq2-Hkv1-D16-w1_3-w2_5-causal-float32"],
        why="dk2/dv2 computed with the windows of dk1/dv1 (w1 != w2)",
    ),
    dict(
        name="cuda-dkv2-ignores-query-heads",
        path="csrc/cuda/bwd_dkv2_kernel.cuh",
        old="const int h = g * p.group + s.hh, base",
        new="const int h = g * p.group, base",
        tests=[EMU, "-k", "match_oracle and B2-N17-Hq8-Hkv1-D64-w1_1-w2_4-causal-float16"],
        why="GQA: dk2/dv2 sum the first query head of the group `group` times instead of every head",
    ),
    dict(
        name="cuda-fwd-output-columns-not-split",
        path="csrc/cuda/fwd_kernel.cuh",
        old="const int N = p.N, D = p.D, col0 = block_z() * DO;",
        new="const int N = p.N, D = p.D, col0 = 0;",
        tests=[EMU, "-k", "match_oracle and D200 and float16"],
        why="D = 256: both column halves write columns 0..127 and nobody writes 128..255",
    ),
    dict(
        name="cuda-exponent-fused-with-the-max",
        path="csrc/cuda/numerics.cuh",
        old="SA_DEV float exp_shifted(float z, float m) { return fast_exp2((z - m) * kLog2e); }",
        new="SA_DEV float exp_shifted(float z, float m) { return fast_exp2(z * kLog2e - m * kLog2e); }",
        tests=["tests/test_cuda_large_logits.py", "-k", "single_pair"],
        why="exp2(fma(z, log2e, -m * log2e)): the rounding of m * log2e goes into the exponent (issue 14)",
    ),
    dict(
        name="cuda-logit-contracted-into-the-subtraction",
        path="csrc/cuda/numerics.cuh",
        old="SA_DEV float logit(float s, float scale) { return mul_rn(s, scale); }",
        new="SA_DEV float logit(float s, float scale) { return s * scale; }",
        tests=["tests/test_cuda_large_logits.py", "-k", "single_pair"],
        why="the logit left to fma contraction: the backward sees exp2 of the product's rounding error",
    ),
]
