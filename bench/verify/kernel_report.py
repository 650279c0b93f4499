"""Static report of every shipped Triton kernel and config, compiled ahead of time for
sm_80, sm_86, sm_90, sm_100 and sm_120 on a machine without a GPU.

    python bench/verify/kernel_report.py            # print the table
    python bench/verify/kernel_report.py --quick    # CI: sm_80/86/90, the determinant / packed variants on sm_90 only
    python bench/verify/kernel_report.py --check    # exit 1 on a spill, shared memory over the
                                             # arch's per-block limit, a main loop
                                             # without tensor-core instructions, or an
                                             # atomic instruction

One row per kernel x config x arch (x tiling for the query-tiled kernels, x operand dtype, x
variant: "base" is trilinear logits on a batched layout, "det+var" determinant logits on a
packed (cu_seqlens) layout, the two together the most registers a fused kernel needs; the
decode kernel in "base" and "det"):
registers per thread, spill bytes (ptxas), shared memory per block, PTX instructions, and the
innermost loops of the PTX that hold tensor-core instructions (mma.sync on sm_80/86/120, wgmma on
sm_90, tcgen05.mma on sm_100). The kernels are compiled as a GPU launch runs them, with the interpreter's path
counters off (COUNTS = None, COUNT_PATHS = False: triton_kernels/coverage.py); the fused kernels
are atomic-free by design, so any atom / red instruction in their PTX (a counter hook that did
not compile away, or a bug) is a problem.
Each config is compiled at the largest head dim it is shipped for (configs.D_CLASSES), the
worst case for registers and shared memory, with the H100 target's sizes (N = 16384,
Hq = 64, Hkv = 1, w1 = 512, w2 = 32, contiguous) so specialisation matches a real launch.
float16 compiles to the same code as bfloat16 but for the mma type and is not repeated;
float32 uses IEEE dots (FMA, no tensor cores), so its rows are held to spills and shared
memory only. TF32 (opt-in) is not compiled here.

After the Triton table comes the CUDA C++ one (bench/verify/cuda_report.py: cuobjdump of the built
extension's cubins): registers, stack and local memory (spills) and HMMA count per kernel
instantiation and arch; --check also fails on any stack/local memory there or a fp16/bf16
tensor-core kernel without HMMA. A build without CUDA kernels says so instead.

The compiler runs in a fresh cache directory, so every number comes from this run's ptxas.
`main` removes TRITON_INTERPRET from the environment before triton is imported; a test
process that interprets must run the report as a subprocess.
"""

import argparse
import concurrent.futures
import contextlib
import io
import os
import re
import sys
import tempfile
import time

TARGET = dict(B=2, N=16384, HQ=64, HKV=1, W1=512, W2=32)
# A decode step of the same model: one new token, caches of w1 + 1 and w2 + 1 slots.
DECODE = dict(NQ=1, C1=1024, C2=64, SPLIT_J=64, N_SPLITS=8)
PTR_F32 = {"LSE", "LSE_LO", "DELTA", "M_PART", "L_PART", "ACC_PART", "DQP", "DK2P", "DV2P"}
PTR_I32 = {"CU_SEQLENS", "CACHE_SEQLENS"}
Q_LIKE = ("stride_q", "stride_o", "stride_do", "stride_dq")
KV_LIKE = ("stride_k1", "stride_k2", "stride_v1", "stride_v2", "stride_g")
TC_RE = re.compile(r"\b(mma\.sync|wgmma\.mma_async|tcgen05\.mma)\b")
MMA_KINDS = (("wgmma", "wgmma.mma_async"), ("tcgen05", "tcgen05.mma"), ("mma", "mma.sync"))
ATOMIC_RE = re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:atom|red)\.", re.MULTILINE)
# A PTX instruction line: an opcode (optionally predicated), not a directive, label or comment.
INSTR_RE = re.compile(r"^\s+(?:@!?%p\d+\s+)?[a-z][\w.]*[\s;]", re.MULTILINE)
# The path counters of the interpreter, off as on a GPU.
NO_COUNTERS = dict(COUNTS=None, COUNT_PATHS=False)
# Compiled variants of the fused kernels: trilinear and batched, determinant and packed.
VARIANTS = {"base": dict(VARLEN=False, DET=False, CU_SEQLENS=None), "det+var": dict(VARLEN=True, DET=True)}
BLOCK_RE = re.compile(r"^(?:(\$L__BB\d+_\d+):|// %bb\.(\d+):)")


def _kernels():
    from simplicial_attn.triton_kernels.bwd_delta import _delta_kernel
    from simplicial_attn.triton_kernels.bwd_dkv1 import _two_simplicial_bwd_dkv1_kernel
    from simplicial_attn.triton_kernels.bwd_dqkv2 import _reduce_dkv2_kernel, _two_simplicial_bwd_dqkv2_kernel
    from simplicial_attn.triton_kernels.decode import _decode_combine_kernel, _decode_split_kernel
    from simplicial_attn.triton_kernels.fwd import _two_simplicial_fwd_kernel

    return {
        "fwd": _two_simplicial_fwd_kernel,
        "bwd_dqkv2": _two_simplicial_bwd_dqkv2_kernel,
        "bwd_reduce2": _reduce_dkv2_kernel,
        "bwd_dkv1": _two_simplicial_bwd_dkv1_kernel,
        "bwd_delta": _delta_kernel,
        "decode": _decode_split_kernel,
        "decode_combine": _decode_combine_kernel,
    }


def _int_args(bd, target=TARGET):
    n, hq, hkv = target["N"], target["HQ"], target["HKV"]
    q = dict(zip("bnhd", (n * hq * bd, hq * bd, bd, 1), strict=True))
    kv = dict(zip("bnhd", (n * hkv * bd, hkv * bd, bd, 1), strict=True))
    ints = dict(N=n, GROUP=hq // hkv, D=bd, L1=target["W1"] - 1, R1=0, L2=target["W2"] - 1, R2=0)
    ints.update(stride_lb=hq * n, stride_lh=n, HQ=hq, **DECODE)
    # bwd_dqkv2's scratch (launch.dqkv2_scratch_shape) and spans at the target: S = w2 - 1, 2 layers.
    rows, cols = target["B"] * n, hkv
    ints.update(stride_sl=rows * cols * bd, stride_sb=n * cols * bd, stride_sn=cols * bd, ROWS=rows, N_HBLK=1)
    ints.update(SPAN=target["W2"] - 1, LAYERS=2)
    return ints, q, kv


def _signature(fn, dtype, bd, constexprs, target=TARGET):
    """(signature, constexprs, attrs) as a launch with the `target` sizes (default: the H100
    target's) would specialise them: ints equal to 1 become constants, ints and pointers
    divisible by 16 get that hint (not the kernel's do_not_specialize arguments)."""
    ints, q, kv = _int_args(bd, target)
    plain = set(getattr(fn, "do_not_specialize", ()) or ())
    sig, consts, attrs = {}, {}, {}
    # A constexpr the job leaves out takes its default (NEG_SCALE, ...), as a launch that omits it
    # would; never the pointer the fallthrough below would make of it.
    defaults = {p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}
    for idx, name in enumerate(fn.arg_names):
        if name in constexprs or name in defaults:
            sig[name], consts[name] = "constexpr", constexprs.get(name, defaults.get(name))
            continue
        if name in ints:
            value = ints[name]
        elif name.startswith(Q_LIKE):
            value = q[name[-1]]
        elif name.startswith(KV_LIKE):
            value = kv[name[-1]]
        elif name in ("scale", "scale_log2"):
            sig[name] = "fp32"
            continue
        else:  # a pointer
            sig[name] = "*fp32" if name in PTR_F32 else "*i32" if name in PTR_I32 else f"*{dtype}"
            attrs[(idx,)] = [["tt.divisibility", 16]]
            continue
        if name in plain:
            sig[name] = "i32"
        elif value == 1:
            sig[name], consts[name] = "constexpr", 1
        else:
            sig[name] = "i32"
            if value % 16 == 0:
                attrs[(idx,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def _innermost_loops(ptx):
    """[(loop header, holds tensor-core instructions)] for the innermost loops of the PTX.

    LLVM's verbose assembly marks each basic block: "=>This Inner Loop Header: Depth=d" on
    the header of a loop without subloops, "in Loop: Header=BBx_y" on the other blocks of the
    loop that most tightly contains them. A loop's body is its header plus those blocks.
    """
    blocks, name, text = {}, None, []
    for line in ptx.splitlines():
        m = BLOCK_RE.match(line)
        if m:
            if name is not None:
                blocks[name] = "\n".join(text)
            name, text = m.group(1) or f"bb.{m.group(2)}", []
        text.append(line)
    if name is not None:
        blocks[name] = "\n".join(text)
    headers = [n for n, t in blocks.items() if "This Inner Loop Header" in t[:400]]
    loops = []
    for h in headers:
        tag = "Header=" + h.removeprefix("$L__")
        body = [t for n, t in blocks.items() if n == h or tag + " " in t[:400]]
        loops.append((h, any(TC_RE.search(t) for t in body)))
    return loops


def compile_job(job, target=TARGET):
    """(compiled kernel, ptxas log, seconds) of one job of `_jobs`, specialised as a launch at the
    `target` sizes would be. Needs TRITON_INTERPRET unset before triton is imported (see main),
    and TRITON_DUMP_PTXAS_LOG=1 for the log."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _kernels()[job["kernel_fn"]]
    sig, consts, attrs = _signature(fn, job["dtype"], job["bd"], job["constexprs"], target)
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):
        k = triton.compile(
            ASTSource(fn, sig, consts, attrs),
            target=GPUTarget("cuda", job["cc"], 32),
            options=dict(num_warps=job["num_warps"], num_stages=job["num_stages"], maxnreg=job["maxnreg"]),
        )
    return k, log.getvalue(), time.perf_counter() - t0


def _compile(job):
    k, text, seconds = compile_job(job)
    regs = re.search(r"Used (\d+) registers", text)
    spill_st = re.search(r"(\d+) bytes spill stores", text)
    spill_ld = re.search(r"(\d+) bytes spill loads", text)
    ptx = k.asm["ptx"]
    loops = _innermost_loops(ptx)
    return dict(
        job,
        regs=int(regs.group(1)) if regs else -1,
        spill=(int(spill_st.group(1)) if spill_st else -1) + (int(spill_ld.group(1)) if spill_ld else 0),
        smem=k.metadata.shared,
        loops=len(loops),
        tc_loops=sum(tc for _, tc in loops),
        mma=next((name for name, op in MMA_KINDS if op in ptx), "fma"),
        instrs=len(INSTR_RE.findall(ptx)),
        atomics=len(ATOMIC_RE.findall(ptx)),
        seconds=seconds,
    )


def target_arch(arch):
    """(compute capability, configs.py arch class whose lists a launch there uses) of an arch name
    of configs.ARCHS (sm80, sm86, sm90, sm100, sm120)."""
    from simplicial_attn.triton_kernels import configs

    if arch in configs.CAPABILITY:
        major, minor = configs.CAPABILITY[arch]
        return major * 10 + minor, configs.arch_class((major, minor))
    raise ValueError(f"unknown arch {arch!r}")


def _jobs(archs, target=TARGET, head_dims=None, dtypes=("bf16", "fp32"), variants=None):
    """One job (kernel, config, arch, tiling, variant, dtype, padded head dim) per compile; by
    default every shipped config at each D class bound, tilings as the `target` shape's group
    gives them, both operand tables and every variant."""
    from simplicial_attn.triton_kernels import configs
    from simplicial_attn.triton_kernels.launch import DELTA_BLOCK_N, REDUCE_BLOCK_R

    variants = VARIANTS if variants is None else variants

    def job(arch, kernel, tiling, variant, dtype, dc, cfg, constexprs):
        return dict(
            arch=arch, cc=target_arch(arch)[0], kernel=kernel,
            kernel_fn=kernel, tiling=tiling, variant=variant, dtype=dtype, bd=dc, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages, maxnreg=cfg.maxnreg,
            tiles=" ".join(f"{k}={v}" for k, v in sorted(cfg.kwargs.items())),
            constexprs={**_flags(kernel), **cfg.kwargs, **constexprs},
        )  # fmt: skip

    jobs = []
    for arch in archs:
        cls = target_arch(arch)[1]
        for dc in head_dims or configs.D_CLASSES:
            for dtype in dtypes:
                fp32 = dtype == "fp32"
                precision = dict(INPUT_PRECISION="ieee", UPCAST=False, BLOCK_D=dc, **NO_COUNTERS)
                for variant, flags in variants.items():
                    for kernel in configs.KERNELS:
                        tilings = {"": (False, 1)}
                        if kernel in ("fwd", "bwd_dqkv2"):
                            tilings = {"seq": (False, 1), "pack": (True, target["HQ"] // target["HKV"])}
                        if kernel == "bwd_dkv1" and not flags["DET"] and dc <= 128:  # POSITIONS / HEADS lists
                            tilings = {"seq": (False, 1), "pack": (True, 1)}
                        for tiling, (packed, heads) in tilings.items():
                            for cfg in configs.configs(kernel, cls, dc, fp32=fp32, packed=packed, det=flags["DET"]):
                                if kernel == "bwd_dkv1":  # its columns, as host.column_mode gives them
                                    group = pow2(target["HQ"] // target["HKV"])
                                    block_h = min(group, cfg.kwargs["BLOCK_C"]) if packed else 1
                                    late = cfg.kwargs.get("X_WHERE_USED", False)  # a constexpr with a default
                                    extra = {"HEADS": packed, "BLOCK_H": block_h, "X_WHERE_USED": late}
                                else:
                                    extra = {"BLOCK_H": min(heads, cfg.kwargs["BLOCK_M"])} if tiling else {}
                                jobs.append(job(arch, kernel, tiling, variant, dtype, dc, cfg,
                                                {**precision, **flags, **extra}))  # fmt: skip
                    cfg = configs.decode_config(cls, dc, fp32)
                    jobs.append(job(arch, "decode", "", variant.split("+")[0], dtype, dc, cfg,
                                    {**precision, "DET": flags["DET"]}))  # fmt: skip
                plain = dict(BLOCK_D=dc, **NO_COUNTERS)
                delta = triton_config(dict(BLOCK_N=DELTA_BLOCK_N), 4)
                jobs.append(job(arch, "bwd_delta", "", "base", dtype, dc, delta, plain))
                reduce = triton_config(dict(BLOCK_R=REDUCE_BLOCK_R), 4)
                jobs.append(job(arch, "bwd_reduce2", "", "base", dtype, dc, reduce, plain))
                combine = triton_config(dict(BLOCK_S=16), 4)
                jobs.append(job(arch, "decode_combine", "", "base", dtype, dc, combine, plain))
    return jobs


def _flags(kernel):
    """The flags a config of `kernel` may leave out, as a launch at the contiguous target sets them."""
    if kernel == "fwd":
        return _fwd_flags()
    if kernel == "bwd_dqkv2":
        # launch.py: q / dout, k1 / v1 and the scratch rows aligned, so configs with TMA, KV1_TMA or
        # PART_TMA read (write) them through descriptors
        flags = {"TMA": False, "KV1_TMA": False, "PART_TMA": False}
        return {**flags, "Q_ALIGNED": True, "KV_ALIGNED": True, "PART_ALIGNED": True}
    return {}


def _fwd_flags():
    """The forward's flags a config may leave out (SPLIT_J, BLOCK_T, TMA, FOLD: off) and KV_ALIGNED, which
    launch.py sets for the contiguous target tensors (a config with TMA reads k1/v1 through tensor
    descriptors)."""
    return {"SPLIT_J": False, "BLOCK_T": 0, "TMA": False, "FOLD": False, "KV_ALIGNED": True}


def pow2(x):
    """The smallest power of two >= x (triton.next_power_of_2)."""
    return 1 << max(0, x - 1).bit_length()


def triton_config(tiles, num_warps):
    import triton

    return triton.Config(tiles, num_warps=num_warps, num_stages=1)


def spill_allowed(row, budget, seq_budget=None):
    """Spill bytes accepted for `row`: configs.DET_SPILL_BUDGET's, for determinant variants at
    D class 256; configs.SEQ_SPILL_BUDGET's (`seq_budget`), for sequence tiles at D class 256 or
    with determinant logits; 0 anywhere else."""
    det = row.get("variant", "").startswith("det")
    allowed = budget.get(row["kernel"], 0) if det and row["bd"] == 256 else 0
    if row.get("tiling") == "seq" and (det or row["bd"] == 256):
        allowed = max(allowed, (seq_budget or {}).get(row["kernel"], 0))
    return allowed


def _problems(row, smem_limit, spill_budget=None, seq_budget=None):
    out = []
    if row["spill"] < 0:
        out.append("no ptxas log")
    elif row["spill"] > spill_allowed(row, spill_budget or {}, seq_budget):
        out.append(f"spills {row['spill']} B")
    if row["smem"] > smem_limit[row["arch"]]:
        out.append(f"smem {row['smem']} > {smem_limit[row['arch']]}")
    needs_tc = row["dtype"] != "fp32" and row["kernel"] not in ("bwd_delta", "bwd_reduce2", "decode_combine")
    if needs_tc and (row["loops"] == 0 or row["tc_loops"] < row["loops"]):
        out.append("main loop without tensor cores")
    if row["atomics"]:
        out.append(f"{row['atomics']} atomic instructions")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 on spills, smem over limit, loops without MMA")
    parser.add_argument(
        "--arch", help="comma-separated subset of sm80,sm86,sm90,sm100,sm120 (default: all; --quick: sm80,sm86,sm90)"
    )
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel compiles")
    parser.add_argument("--kernels", default="", help="comma-separated kernel names to compile (default: all)")
    parser.add_argument("--variants", default="", help="comma-separated variants (base, det+var, det) (default: all)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the determinant / packed variants on sm_90 only, sm_100 / sm_120 left out (CI; ~half the compiles)",
    )
    args = parser.parse_args(argv)

    # Before triton is imported (here and in the forked workers): compile, do not interpret,
    # and have ptxas print its register and spill counts.
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    from simplicial_attn.triton_kernels import configs

    default = "sm80,sm86,sm90" if args.quick else ",".join(configs.ARCHS)
    archs = [a for a in (args.arch or default).split(",") if a]
    unknown = [a for a in archs if a not in configs.ARCHS]
    if unknown:
        parser.error(f"--arch must name archs among {', '.join(configs.ARCHS)}; got {', '.join(unknown)}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="simplicial-kernel-report-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        jobs = [
            j
            for j in _jobs(archs)
            if (not args.kernels or j["kernel"] in args.kernels.split(","))
            and (not args.variants or j["variant"] in args.variants.split(","))
            and (not args.quick or j["variant"] == "base" or j["arch"] == "sm90")
        ]
        with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            rows = list(pool.map(_compile, jobs))

    head = f"{'arch':5} {'kernel':14} {'tiling':5} {'var':7} {'dtype':5} {'D':>3} {'tiles':22} {'w':>2} {'st':>2} "
    head += f"{'regs':>4} {'spill':>5} {'smem':>7} {'instrs':>6} {'mma loops':>11}  problems"
    print(head)
    print("-" * len(head))
    failures = 0
    for r in rows:
        problems = _problems(r, configs.SMEM_LIMIT, configs.DET_SPILL_BUDGET, configs.SEQ_SPILL_BUDGET)
        failures += bool(problems)
        if not problems and r["spill"] > 0:
            allowed = spill_allowed(r, configs.DET_SPILL_BUDGET, configs.SEQ_SPILL_BUDGET)
            problems = [f"ok: spill within configs.DET_SPILL_BUDGET / SEQ_SPILL_BUDGET ({allowed} B)"]
        tc = f"{r['tc_loops']}/{r['loops']} {r['mma']}"
        print(
            f"{r['arch']:5} {r['kernel']:14} {r['tiling']:5} {r['variant']:7} {r['dtype']:5} {r['bd']:>3} "
            f"{r['tiles']:22} "
            f"{r['num_warps']:>2} {r['num_stages']:>2} {r['regs']:>4} {r['spill']:>5} {r['smem']:>7} "
            f"{r['instrs']:>6} {tc:>11}  " + ("; ".join(problems) or "ok")
        )
    elapsed = time.perf_counter() - t0
    print(
        f"\n{len(rows)} compiles in {elapsed:.1f} s; {failures} with problems. Shared memory limits per block: "
        + ", ".join(f"{a} {v // 1024} KiB" for a, v in configs.SMEM_LIMIT.items())
        + ". 'mma loops': innermost PTX loops holding mma.sync/wgmma, of all innermost loops."
    )
    failures += cuda_section()
    return 1 if args.check and failures else 0


def cuda_section():
    """The CUDA C++ kernels of the built extension (bench/verify/cuda_report.py): one row per kernel
    instantiation and arch. Returns the number of rows with problems (stack or local memory,
    or a tensor-core kernel without HMMA)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from bench.verify import cuda_report

    try:
        table = cuda_report.rows(with_smem=False)
    except FileNotFoundError as exc:
        print(f"\nCUDA C++ kernels: not reported ({exc})")
        return 0
    if not table:
        print("\nCUDA C++ kernels: none in this build of simplicial_attn._C (built without CUDA)")
        return 0
    head = f"{'arch':6} {'kernel':16} {'dtype':5} {'D':>4} {'regs':>4} {'stack':>5} {'local':>5} {'HMMA':>5}"
    print(f"\n{head}  problems")
    failures = 0
    for r in table:
        problems = []
        if r["stack"] or r["local"]:
            problems.append("stack/local memory (spills)")
        if r["kernel"] in cuda_report.TENSOR_CORE_KERNELS and r["dtype"] != "fp32" and not r["hmma"]:
            problems.append("tensor-core kernel without HMMA")
        failures += bool(problems)
        print(
            f"{r['arch']:6} {r['kernel']:16} {r['dtype']:5} {str(r['head_dim'] or '-'):>4} {r['regs']:>4} "
            f"{r['stack']:>5} {r['local']:>5} {r['hmma']:>5}  " + ("; ".join(problems) or "ok")
        )
    print(f"{len(table)} CUDA C++ kernel instantiations; {failures} with problems (from cuobjdump of the built .so)")
    return failures


if __name__ == "__main__":
    sys.exit(main())
