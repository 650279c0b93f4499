"""A model of the compiled GPU kernels: how fast they can be, read from their SASS, without a GPU.

    python bench/gpu_model.py                          # table: the three shapes of bench/model/shape.py
    python bench/gpu_model.py --shape B=1,N=4096,Hq=8,Hkv=8,D=64,w1=256,w2=32 --arch sm90
    python bench/gpu_model.py --all-head-dims --json bench/results/gpu-model-DATE.json   # README's records
    python bench/gpu_model.py --readme                 # rewrite README's "Speed without a GPU" table

THIS IS A MODEL, NOT A MEASUREMENT. It compiles every shipped GPU kernel ahead of time (Triton:
each config of triton_kernels/configs.py through bench/verify/kernel_report.py's compile, for
sm_80, sm_86, sm_90 and sm_100, specialised as a launch at the shape; CUDA C++: the instantiations
in the built extension's cubins for sm_80 / 86 / 90), disassembles the cubins (nvdisasm), finds
the hot loops (bench/model/sass.py, counts.py), maps their trips onto the shape
(bench/model/maps.py) and derives, per kernel and per pass (forward; backward = Delta + dq + dkv
kernels):

- tensor-core instructions by shape; MMA FLOPs issued per counted FLOP (CONTRACT §2: 4*D forward,
  14*D backward per in-window triple per query head, bench/flops.py);
- exp (MUFU.EX2) per logit, instructions per logit (thread-instructions: warp-instructions x 32),
  both per logit-tile element the kernel computes (masked or not; `logits_per_counted` says how
  many it computes per in-window triple); shared-memory bytes per MMA FLOP; global bytes per
  counted FLOP; MMA FLOPs per logit (4*D forward when nothing is duplicated); full waits per
  innermost trip; registers, shared memory, CTAs per SM;
- two ceilings per named GPU (bench/model/specs.py, with sources), counted FLOPs over a time:
  *overlapped*: the largest of the tensor-core time (MMA FLOPs issued at the achievable rate),
  the issue time (4 warp-instructions per SM-clock), the MUFU time (16 per SM-clock), the
  shared-memory time (128 B per SM-clock), the L2 time (every global request at the L2
  bandwidth) and the DRAM time (each input read and each output written once): all units busy
  at once, nothing waits;
  *serialized*: each hot loop body cut into phases at its full waits (a wgmma wait with 0
  pending, a CTA barrier, a cp.async wait for all groups, an mbarrier wait, and in mma.sync code
  the first use of an MMA result), each phase taking its own largest resource time, the phases
  added: every warp on an SM assumed to be in the same phase at once (no other CTA fills a
  wait). The bound named is the overlapped one's.
  Both are per kernel; a pass adds its kernels' times.

Assumptions (each also in README "Speed without a GPU"):
- every warp has 32 active lanes; predicated-off lanes, masked loads and bank conflicts are
  not seen (shared-memory bytes are requested bytes at 128 B/clock);
- loop bodies: each block runs once per trip except the untaken arm of a two-armed branch
  (counts.py says which arm); non-tensor-core loops inside a level run maps.py's `side` trips;
- all global requests go to L2 (L1 hits are not modelled); DRAM moves each tensor once;
- no latency: a phase takes its throughput time; launch overhead and tails beyond whole waves
  of CTAs are not modelled (wave quantisation is);
- achievable tensor-core rate: the measured 8192^3 bf16 matmul where one exists (H100, H200),
  else spec x the same fraction; mma.sync on sm_90 / sm_100 at specs.HMMA_FRACTION of it;
- tcgen05 (UTCHMMA, sm_100) instructions carry their shape in a descriptor register: their FLOPs
  are the Triton TTGIR's tc_gen5_mma shapes averaged per instruction, issued once per CTA;
- TMA loads (UTMALDG) carry their box in the tensor descriptor: their global bytes (and shared-
  memory writes) are the TTGIR's async_tma_copy_global_to_local boxes averaged per instruction,
  issued once per CTA;
- L2 bandwidth 5120 B per clock (A10G: half; the A100 whitepaper's figure; none published for Hopper
  or Blackwell); shared memory per SM, registers and CTA limits per arch (specs.ARCH_LIMITS);
- the CUDA kernels' threads per CTA are their Configs' (16 rows a warp, _cuda_threads), their
  dynamic shared memory the emulator driver's report (bench/verify/cuda_report.py);
- autotuning: per kernel the config with the highest serialized ceiling on the arch's first
  GPU is the pass's (a GPU's autotuner measures; the model guesses).
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import flops  # noqa: E402
from bench.model import counts, maps, sass, specs  # noqa: E402
from bench.model import shape as shapes  # noqa: E402

TRITON_ARCHS = ("sm80", "sm86", "sm90", "sm100")
CUDA_ARCHS = ("sm80", "sm86", "sm90")
# Kernels the registry finds that the fwd / bwd passes do not run (a separate entry point).
NOT_MODELLED = {"decode": "decode step (not a fwd / bwd pass)", "decode_combine": "decode step (not a fwd / bwd pass)"}
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BEGIN = "<!-- gpu-model:begin (generated by bench/gpu_model.py --readme from bench/results/gpu-model-*.json) -->"
END = "<!-- gpu-model:end -->"


@dataclasses.dataclass
class Kernel:
    """One compiled kernel: where it came from and its SASS."""

    backend: str
    arch: str
    kernel: str
    config: str
    tiles: dict
    warps: int
    regs: int
    smem: int | None
    fn: sass.Function
    utc_flops: float | None = None


# ---------------------------------------------------------------------------------------------
# Discovery: the Triton kernels (kernel_report's registry and configs.py) and the CUDA ones
# (cuda_report's reading of the built extension).


def _triton_package(path):
    """Import simplicial_attn.triton_kernels from `path` (a copy of triton_kernels/) instead of
    the installed one; before anything imports it."""
    import importlib.util

    path = pathlib.Path(path).resolve()
    spec = importlib.util.spec_from_file_location(
        "simplicial_attn.triton_kernels", path / "__init__.py", submodule_search_locations=[str(path)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["simplicial_attn.triton_kernels"] = module
    spec.loader.exec_module(module)


def _ttgir_utc_flops(ttgir):
    """Average FLOPs per tcgen05 MMA instruction (K = 16 each for 16-bit inputs) of the kernel's
    tc_gen5_mma ops, or None without any."""
    total = instrs = 0
    for m in re.finditer(r"ttng\.tc_gen5_mma [^\n]*?memdesc<(\d+)x(\d+)x\w+[^\n]*?memdesc<(\d+)x(\d+)x", ttgir):
        mm, kk, _, nn = (int(g) for g in m.groups())
        total += 2 * mm * nn * kk
        instrs += kk // 16
    return total / instrs if instrs else None


_ELEM_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "f8E4M3FN": 1, "f8E5M2": 1}


def _ttgir_tma_box_bytes(ttgir):
    """Average bytes of the kernel's TMA loads (async_tma_copy_global_to_local: one UTMALDG each,
    its box the destination's shape), or 0.0 without any."""
    boxes = [
        int(m.group(1)) * int(m.group(2)) * _ELEM_BYTES.get(m.group(3), 2)
        for m in re.finditer(r"ttng\.async_tma_copy_global_to_local [^\n]*?-> !ttg\.memdesc<(\d+)x(\d+)x(\w+)", ttgir)
    ]
    return sum(boxes) / len(boxes) if boxes else 0.0


def _compile_triton(job_and_target):
    """Worker: compile one kernel_report job, return (job, regs, smem, listing, utc_flops, tma box bytes)."""
    job, target = job_and_target
    from bench.verify import kernel_report

    k, log, _ = kernel_report.compile_job(job, target)
    regs = re.search(r"Used (\d+) registers", log)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = pathlib.Path(tmp) / "k.cubin"
        cubin.write_bytes(k.asm["cubin"])
        listing = sass.disassemble(cubin)
        if regs is None:  # no ptxas log: read the cubin's resource usage
            out = subprocess.run([sass.find_tool("cuobjdump"), "--dump-resource-usage", str(cubin)],
                                 capture_output=True, text=True).stdout  # fmt: skip
            regs = re.search(r"REG:(\d+)", out)
    ttgir = k.asm.get("ttgir", "")
    return (job, int(regs.group(1)) if regs else -1, k.metadata.shared, listing, _ttgir_utc_flops(ttgir),
            _ttgir_tma_box_bytes(ttgir))  # fmt: skip


def _tiles(job):
    """The config's tiles (BLOCK_ but BLOCK_D), bwd_dkv1's column mode (HEADS) and, for the
    forward, whether its j loop is split (SPLIT_J) and whether it folds k2 / v2 into k1 / v1 (FOLD)."""
    tiles = {k: v for k, v in job["constexprs"].items() if (k.startswith("BLOCK_") and k != "BLOCK_D") or k == "HEADS"}
    if not tiles.get("BLOCK_T", 1):  # no narrow blocks
        del tiles["BLOCK_T"]
    for flag in ("SPLIT_J", "FOLD"):
        if job["constexprs"].get(flag):
            tiles[flag] = True
    return tiles


def _label(job):
    """A config's label: its tiles (BLOCK_ dropped), warps and stages ("H=64 J=32 M=128 w8 s3"), then
    "split" (SPLIT_J), "fold" (FOLD) and "tma" (k1/v1 through tensor descriptors) where the config sets them."""
    all_tiles = _tiles(job)
    tiles = " ".join(
        f"{k.removeprefix('BLOCK_')}={v}" for k, v in sorted(all_tiles.items()) if k not in ("SPLIT_J", "FOLD")
    )
    flags = "".join(f" {name}" for key, name in (("SPLIT_J", "split"), ("FOLD", "fold")) if all_tiles.get(key))
    flags += " tma" if job["constexprs"].get("TMA") else ""
    return f"{tiles} w{job['num_warps']} s{job['num_stages']}{flags}"


def triton_jobs(shape, archs, only=()):
    """kernel_report jobs of every Triton kernel and config the fwd / bwd launchers can use at
    `shape` (the tiling the launcher picks: head-packed when the group has >= 16 heads); `only`:
    "kernel" or "kernel:config substring" filters."""
    from bench.verify import kernel_report
    from simplicial_attn.triton_kernels import host

    bd = host.block_d(shape.D)
    tiling = "pack" if shape.group >= 16 else "seq"
    target = shape.kernel_report_target()
    out = []
    for arch in archs:
        found = kernel_report._jobs([arch], target, head_dims=[bd], dtypes=[shape.dtype],
                                    variants={"base": kernel_report.VARIANTS["base"]})  # fmt: skip
        for job in found:
            if job["tiling"] not in ("", tiling) or job["kernel"] in NOT_MODELLED:
                continue
            wanted = [o.partition(":") for o in only]
            if only and not any(job["kernel"] == k and c in _label(job) for k, _, c in wanted):
                continue
            out.append(job)
    return out


def _compile_key(job, target):
    """What a compile of `job` at `target` depends on: the job and the launch's specialisation
    (which ints are 1, which are divisible by 16), so shapes that specialise alike share one."""
    from bench.verify import kernel_report

    fn = kernel_report._kernels()[job["kernel_fn"]]
    sig, consts, attrs = kernel_report._signature(fn, job["dtype"], job["bd"], job["constexprs"], target)
    return repr((job["kernel"], job["cc"], job["num_warps"], job["num_stages"], sorted(job["constexprs"].items()),
                 sorted(sig.items()), sorted(consts.items()), sorted(attrs.items())))  # fmt: skip


_COMPILED = {}  # _compile_key -> (job, regs, smem, listing, utc_flops, tma box bytes)


def triton_kernels(shape, archs, jobs=2, only=()):
    """Kernel records of the Triton configs of `triton_jobs`, compiled (`jobs` at once; a compile
    a shape shares with an earlier one is reused)."""
    target = shape.kernel_report_target()
    todo = triton_jobs(shape, archs, only)
    keys = [_compile_key(job, target) for job in todo]
    fresh = {k: (job, target) for k, job in zip(keys, todo, strict=True) if k not in _COMPILED}
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for key, out in zip(fresh, pool.map(_compile_triton, fresh.values()), strict=True):
            _COMPILED[key] = out
    records = []
    for key, job in zip(keys, todo, strict=True):
        _, regs, smem, listing, utc, box = _COMPILED[key]
        name, instrs = next(iter(sass.parse_functions(listing).items()))
        fn = sass.Function(name, instrs, tma_bytes=box / job["num_warps"])
        records.append(Kernel("triton", job["arch"], job["kernel"], _label(job), _tiles(job), job["num_warps"],
                              regs, smem, fn, utc_flops=utc))  # fmt: skip
    return records


def _extract_cubins(binary, dest):
    """cuobjdump -xelf: the cubins of a fat binary into `dest`; their paths."""
    tool = sass.find_tool("cuobjdump")
    if tool is None:
        raise FileNotFoundError("cuobjdump not found (set CUDA_HOME, or install triton which ships one)")
    subprocess.run([tool, "-xelf", "all", str(binary)], cwd=dest, check=True, capture_output=True)
    return sorted(pathlib.Path(dest).glob("*.cubin"))


def cuda_kernels(shape, archs, binary=None):
    """Kernel records of the CUDA C++ instantiations the fwd / bwd passes launch at `shape`, from
    the built extension (or `binary`); [] and a reason when there is none."""
    from bench.verify import cuda_report

    binary = binary or cuda_report.extension_path()
    if binary is None:
        return [], "simplicial_attn._C is not built"
    tool = cuda_report.find_cuobjdump()
    usage = cuda_report.resource_usage(tool, binary)
    if not usage:
        return [], "this build of simplicial_attn._C has no CUDA kernels"
    smem = cuda_report.smem_bytes()
    head_dim = next((h for h in cuda_report.HEAD_DIMS if h >= shape.D), None)
    wanted = set(maps.PASSES["cuda"]["fwd"] + maps.PASSES["cuda"]["bwd"]) | set(maps.MAPS["cuda"])
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        cubins = [pathlib.Path(binary)] if str(binary).endswith(".cubin") else _extract_cubins(binary, tmp)
        for cubin in cubins:
            listing = sass.disassemble(cubin)
            arch = "sm" + re.search(r"\.target\s+sm_(\d+)", listing).group(1)
            if arch not in archs:
                continue
            for name, instrs in sass.parse_functions(listing).items():
                parsed = cuda_report.parse_function(name)
                if parsed is None:
                    continue
                kernel, dtype, hd, variant = parsed
                if dtype != shape.dtype or (hd is not None and hd != head_dim):
                    continue
                if variant != maps.cuda_variant(kernel, shape, head_dim):
                    continue
                if kernel not in wanted and kernel not in cuda_report.TENSOR_CORE_KERNELS:
                    continue  # SIMT (fp32), decode and scores kernels: not in the fwd / bwd passes
                res = usage.get((f"sm_{arch[2:]}", name)) or usage.get((None, name), {})
                smem_bytes = smem.get(cuda_report.smem_key(kernel, variant, hd)) if hd else 0
                records.append(Kernel("cuda", arch, kernel, f"D{head_dim}" if hd else "-", {"DP": head_dim},
                                      _cuda_threads(kernel, head_dim) // 32, res.get("REG", -1),
                                      smem_bytes, sass.Function(name, instrs)))  # fmt: skip
    return records, ""


def _cuda_threads(kernel, dp):
    """Threads per CTA of a CUDA kernel (its Config's kWarps: 16 rows per warp)."""
    rows = {
        "fwd_kernel": 64 if dp <= 128 else 32,
        "dq_kernel": 64 if dp <= 64 else 32 if dp <= 128 else 16,
        "dkv1_kernel": 64 if dp <= 128 else 32,
        "dkv2_kernel": 64 if dp <= 64 else 32 if dp <= 128 else 16,
        "dqkv2_kernel": 32,
    }
    # Dkv*Config::kColWarps, DqKv2Config::kColWarps
    col_warps = 2 if (kernel in ("dkv1_kernel", "dkv2_kernel") and dp == 128) or kernel == "dqkv2_kernel" else 1
    if kernel in ("delta_kernel", "dkv2_reduce_kernel"):
        return 32 * 4  # kDeltaWarps, kReduceThreads
    return 32 * rows.get(kernel, 64) // 16 * col_warps


# ---------------------------------------------------------------------------------------------
# The model.


def occupancy(k):
    """CTAs per SM from warps, registers (allocated per warp in units of 256) and shared memory."""
    lim = specs.ARCH_LIMITS[k.arch]
    fits = [lim["ctas"], lim["warps"] // max(1, k.warps)]
    if k.regs > 0:
        per_warp = math.ceil(k.regs * 32 / 256) * 256
        fits.append(lim["regs"] // (per_warp * k.warps))
    if k.smem is not None:
        fits.append(lim["smem"] // (k.smem + lim["smem_reserved"]))
    return max(0, min(fits))


def _resource_seconds(p, trips, warps, gpu, arch):
    """Seconds of each resource on the GPU for a Phase's per-warp counts run `trips` times by every
    one of `warps` warps (a tcgen05 MMA, issued once per CTA, `trips` times)."""
    clk = gpu.clock_ghz * 1e9
    tensor = 0.0
    for kind, f in p.mma_flops.items():
        rate = gpu.achievable_tflops * 1e12 * (specs.HMMA_FRACTION[arch] if kind == "HMMA" else 1.0)
        tensor += f * trips * (1 if kind == "UTCHMMA" else warps) / rate
    n = trips * warps
    return {
        "tensor": tensor,
        "issue": p.instrs * n / (specs.ISSUE_PER_CLK * gpu.sms * clk),
        "mufu": p.mufu * 32 * n / (specs.MUFU_PER_CLK * gpu.sms * clk),
        "smem": p.smem * n / (specs.SMEM_BYTES_PER_CLK * gpu.sms * clk),
        "l2": p.glob * n / (gpu.l2_tbs * 1e12),
    }


def model_kernel(k, shape, counted):
    """The record of one kernel at `shape` (`counted`: its pass's CONTRACT §2 FLOPs)."""
    rec = dict(backend=k.backend, arch=k.arch, kernel=k.kernel, config=k.config, dtype=shape.dtype,
               head_dim=shape.D, shape=shape.label(), warps=k.warps, regs=k.regs, smem=k.smem,
               ctas_per_sm=occupancy(k), status="ok")  # fmt: skip
    mapper = maps.MAPS[k.backend].get(k.kernel)
    if mapper is None:
        rec["status"] = f"no iteration map for {k.kernel} (bench/model/maps.py)"
        return rec, None
    trips = mapper(shape, k.tiles) if k.backend == "triton" else mapper(shape, k.tiles["DP"], k.arch)
    return evaluate(k, trips, counted, rec)


def evaluate(k, trips, counted, rec=None):
    """(record, work) of a compiled kernel whose loops run `trips` (maps.Trips) for `counted` FLOPs;
    work is None (and the record says why) when the SASS nest and the map disagree. Also the entry
    point for kernels outside the project (the calibration against published figures)."""
    rec = rec if rec is not None else dict(kernel=k.kernel, config=k.config, arch=k.arch, status="ok")
    nest = counts.analyse(k.fn, k.utc_flops, trips.side, trips.siblings)
    if nest.structure or len(nest.regions) - 1 != len(trips.levels):
        rec["status"] = (
            f"loop structure not understood: {nest.structure or ''} SASS nest depth {len(nest.regions) - 1}, "
            f"map depth {len(trips.levels)}"
        ).replace(":  ", ": ")
        return rec, None
    level_trips = [trips.ctas, *trips.levels]
    total = counts.Phase()
    ex2 = 0.0
    for reg, t in zip(nest.regions, level_trips, strict=True):
        total.add(reg.total(), t * k.warps)
        ex2 += reg.ex2 * t * k.warps
    utc = total.mma_flops.pop("UTCHMMA", 0.0) / k.warps  # issued once per CTA, not per warp
    if utc:
        total.mma_flops["UTCHMMA"] = utc
    mma = sum(total.mma_flops.values())
    logits = trips.total_logits() if trips.logit is not None else 0
    inner = nest.regions[-1]
    rec.update(
        mma_issued_per_counted=mma / counted,
        exp_per_logit=ex2 * 32 / logits if logits else None,
        instr_per_logit=total.instrs * 32 / logits if logits else None,
        smem_bytes_per_mma_flop=total.smem / mma if mma else None,
        global_bytes_per_flop=total.glob / counted,
        mma_flops_per_logit=mma / logits if logits else None,
        mma_shapes={s: round(n, 2) for s, n in inner.shapes.items()},
        waits_per_iter={w: round(n, 2) for w, n in inner.waits.items()},
        ctas=trips.ctas,
        iterations=trips.levels,
        side_loops={str(lv): n for lv, n in nest.side_loops.items() if n},
    )
    work = dict(nest=nest, trips=trips, level_trips=level_trips, total=total, logits=logits, ex2=ex2, mma=mma)
    return rec, work


def kernel_seconds(k, work, gpu):
    """(overlapped seconds, serialized seconds, {resource: seconds}) of a kernel on a GPU."""
    res = dict.fromkeys(counts.RESOURCES, 0.0)
    serial = 0.0
    for reg, t in zip(work["nest"].regions, work["level_trips"], strict=True):
        for p in reg.phases:
            r = _resource_seconds(p, t, k.warps, gpu, k.arch)
            serial += max(r.values())
            for name, v in r.items():
                res[name] += v
    res["dram"] = work["trips"].dram / (gpu.dram_tbs * 1e12)
    occ = occupancy(k)
    waves = 1.0
    if occ:
        slots = gpu.sms * occ
        waves = math.ceil(work["trips"].ctas / slots) * slots / work["trips"].ctas
    res = {r: s * waves for r, s in res.items()}
    return max(res.values()), max(serial * waves, res["dram"]), res


def model(records, shape):
    """Per-kernel records and per-pass records (the pass's chosen config of each kernel)."""
    out = []
    for backend in ("triton", "cuda"):
        for arch in sorted({k.arch for k in records if k.backend == backend}, key=lambda a: int(a[2:])):
            gpus = specs.gpus_for(arch)
            dp = next((h for h in (64, 128, 256) if h >= shape.D), 256)
            for pass_ in maps.PASSES[backend]:
                names = maps.pass_kernels(backend, pass_, shape, dp)
                counted = flops.attention_flops(shape.B, shape.N, shape.Hq, shape.D, shape.w1, shape.w2,
                                                shape.causal, pass_)  # fmt: skip
                chosen, missing = [], []
                for name in names:
                    best = None
                    for k in (k for k in records if k.backend == backend and k.arch == arch and k.kernel == name):
                        rec, work = model_kernel(k, shape, counted)
                        rec["pass"] = pass_
                        if work:
                            _ceilings(rec, [(k, work)], gpus, counted)
                            score = rec["ceiling_tflops"][gpus[0].name]["serialized"] if gpus else 0
                            if best is None or score > best[0]:
                                best = (score, k, work, rec)
                        out.append(rec)
                    if best is None:
                        missing.append(name)
                    else:
                        chosen.append(best)
                if missing:
                    status = f"pass not modelled: no usable row for {', '.join(missing)}"
                    out.append({"backend": backend, "arch": arch, "kernel": "+".join(names), "config": "-",
                                "pass": pass_, "status": status, "dtype": shape.dtype, "head_dim": shape.D,
                                "shape": shape.label(), "scope": "pass"})  # fmt: skip
                    continue
                out.append(_pass_record(backend, arch, pass_, chosen, gpus, counted, shape))
            in_passes = {n for pass_ in maps.PASSES[backend] for n in maps.pass_kernels(backend, pass_, shape, dp)}
            for k in records:
                if (k.backend, k.arch) == (backend, arch) and k.kernel not in in_passes:
                    rec, _ = model_kernel(k, shape, 1.0)
                    if rec["status"] == "ok":
                        rec["status"] = f"not in a pass (bench/model/maps.py PASSES): {k.kernel}"
                    out.append(dict(rec, **{"pass": "-"}))
    return out


def _ceilings(rec, parts, gpus, counted):
    """ceiling_tflops ({GPU: {overlapped, serialized}}: `counted` FLOPs over the parts' summed
    times; for a kernel row, its pass's FLOPs over this kernel's time alone), bound, ms and the
    seconds per resource."""
    rec["ceiling_tflops"], rec["bound"], rec["seconds"], rec["ms"] = {}, {}, {}, {}
    for gpu in gpus:
        ovl = ser = 0.0
        res_sum = {}
        for k, work in parts:
            o, s, res = kernel_seconds(k, work, gpu)
            ovl, ser = ovl + o, ser + s
            for r, v in res.items():
                res_sum[r] = res_sum.get(r, 0.0) + v
        rec["ceiling_tflops"][gpu.name] = {"overlapped": counted / ovl / 1e12, "serialized": counted / ser / 1e12}
        rec["bound"][gpu.name] = max(res_sum, key=res_sum.get)
        rec["ms"][gpu.name] = {"overlapped": ovl * 1e3, "serialized": ser * 1e3}
        rec["seconds"][gpu.name] = {r: v for r, v in res_sum.items()}


def _pass_record(backend, arch, pass_, chosen, gpus, counted, shape):
    parts = [(k, work) for _, k, work, _ in chosen]
    mma = sum(w["mma"] for _, w in parts)
    logits = sum(w["logits"] for _, w in parts)
    ex2 = sum(w["ex2"] for _, w in parts)
    instrs = sum(w["total"].instrs for _, w in parts)
    smem = sum(w["total"].smem for _, w in parts)
    glob = sum(w["total"].glob for _, w in parts)
    triples = counted / ((flops.FWD_PER_TRIPLE if pass_ == "fwd" else flops.BWD_PER_TRIPLE) * shape.D)
    rec = dict(
        backend=backend, arch=arch, kernel="+".join(k.kernel for k, _ in parts),
        config="; ".join(f"{k.kernel}: {k.config}" for k, _ in parts), dtype=shape.dtype, head_dim=shape.D,
        shape=shape.label(), status="ok", mma_issued_per_counted=mma / counted,
        exp_per_logit=ex2 * 32 / logits if logits else None, instr_per_logit=instrs * 32 / logits if logits else None,
        smem_bytes_per_mma_flop=smem / mma if mma else None, global_bytes_per_flop=glob / counted,
        logits_per_counted=logits / triples, mma_flops_per_logit=mma / logits if logits else None,
        regs={k.kernel: k.regs for k, _ in parts},
        smem={k.kernel: k.smem for k, _ in parts}, ctas_per_sm={k.kernel: occupancy(k) for k, _ in parts},
        counted_flops=counted,
    )  # fmt: skip
    rec["pass"] = pass_
    rec["scope"] = "pass"
    _ceilings(rec, parts, gpus, counted)
    return rec


# ---------------------------------------------------------------------------------------------
# Output.


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def table(recs):
    lines = []
    head = (
        f"{'arch':5} {'backend':6} {'pass':4} {'kernel':34} {'config':28} {'MMA/cnt':>7} {'exp/lg':>6} "
        f"{'ins/lg':>6} {'smB/MF':>6} {'glB/F':>6} {'regs':>4} {'occ':>3}  overlapped/serialized (bound)"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for r in recs:
        if r.get("status") != "ok":
            lines.append(f"{r['arch']:5} {r['backend']:6} {r['pass']:4} {r['kernel'][:34]:34} {r['config'][:28]:28} "
                         f"{r['status']}")  # fmt: skip
            continue
        regs = r["regs"] if isinstance(r["regs"], int) else max(r["regs"].values())
        occ = r["ctas_per_sm"] if not isinstance(r["ctas_per_sm"], dict) else min(r["ctas_per_sm"].values())
        if r.get("scope") == "pass":
            ceil = "  ".join(f"{g} {c['overlapped']:.0f}/{c['serialized']:.0f} TFLOP/s ({r['bound'][g]})"
                             for g, c in r["ceiling_tflops"].items())  # fmt: skip
        else:
            ceil = "  ".join(f"{g} {c['overlapped']:.2f}/{c['serialized']:.2f} ms ({r['bound'][g]})"
                             for g, c in r["ms"].items())  # fmt: skip
        name = ("= " if r.get("scope") == "pass" else "") + r["kernel"]
        lines.append(
            f"{r['arch']:5} {r['backend']:6} {r['pass']:4} {name[:34]:34} {r['config'][:28]:28} "
            f"{_f(r['mma_issued_per_counted']):>7} {_f(r['exp_per_logit']):>6} {_f(r['instr_per_logit'], '{:.1f}'):>6} "
            f"{_f(r['smem_bytes_per_mma_flop'], '{:.3f}'):>6} {_f(r['global_bytes_per_flop'], '{:.3f}'):>6} "
            f"{regs:>4} {_f(occ, '{}'):>3}  {ceil}"
        )
    return "\n".join(lines)


def run(shape_list, archs, backends, jobs=2, cuda_binary=None, only=()):
    """Records for every shape (each record carries its shape label)."""
    out = []
    for shape in shape_list:
        records = []
        if "triton" in backends:
            records += triton_kernels(shape, [a for a in archs if a in TRITON_ARCHS], jobs, only)
        if "cuda" in backends:
            found, reason = cuda_kernels(shape, [a for a in archs if a in CUDA_ARCHS], cuda_binary)
            records += found
            if reason:
                out.append(dict(backend="cuda", arch="-", kernel="-", config="-", dtype=shape.dtype, head_dim=shape.D,
                                shape=shape.label(), status=f"not modelled: {reason}", **{"pass": "-"}))  # fmt: skip
        out += model(records, shape)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", help="B=..,N=..,Hq=..,Hkv=..,D=..,w1=..,w2=..[,centred][,fp16]")
    p.add_argument("--arch", default=",".join(TRITON_ARCHS), help="comma-separated subset of sm80,sm86,sm90,sm100")
    p.add_argument("--backend", default="triton,cuda", help="comma-separated subset of triton,cuda")
    p.add_argument("--json", help="write the records here")
    p.add_argument("--passes-only", action="store_true", help="print only the per-pass rows")
    p.add_argument("--readme", action="store_true", help="rewrite README's table from the newest results JSON")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel Triton compiles")
    p.add_argument("--triton-kernels", help="model a copy of triton_kernels/ at this path instead (planted waste)")
    p.add_argument("--cuda-binary", help="read the CUDA cubins of this .so / fatbinary instead of the built one")
    p.add_argument("--only", action="append", default=[], help="Triton KERNEL or KERNEL:CONFIG-SUBSTRING only")
    p.add_argument("--all-head-dims", action="store_true", help="also the target shape at D = 64 and D = 256")
    args = p.parse_args(argv)
    if args.readme:
        changed = update_readme()
        print("README.md speed-without-a-GPU section " + ("updated" if changed else "already up to date"))
        return 0
    # Compile, never interpret; ptxas prints registers (here and in the forked workers).
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    if args.triton_kernels:
        _triton_package(args.triton_kernels)
    try:
        shape_list = [shapes.parse(s) for s in args.shape] if args.shape else list(shapes.DEFAULT_SHAPES)
        shape_list += list(shapes.HEAD_DIM_SHAPES) if args.all_head_dims else []
    except ValueError as exc:
        p.error(str(exc))
    archs = [a for a in args.arch.split(",") if a]
    bad = [a for a in archs if a not in TRITON_ARCHS]
    if bad:
        p.error(f"--arch must name archs among {', '.join(TRITON_ARCHS)}; got {', '.join(bad)}")
    with tempfile.TemporaryDirectory(prefix="simplicial-gpu-model-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        recs = run(shape_list, archs, args.backend.split(","), args.jobs, args.cuda_binary, args.only)
    shown = [r for r in recs if r.get("scope") == "pass" or not args.passes_only]
    for label in dict.fromkeys(r["shape"] for r in shown):
        print(f"\n{label}  (a model, not a measurement: bench/gpu_model.py)")
        print(table([r for r in shown if r["shape"] == label]))
    if args.json:
        note = "a model of the compiled kernels, not a measurement"
        doc = dict(date=datetime.date.today().isoformat(), generator="bench/gpu_model.py", note=note,
                   gpus=_gpu_table(), records=recs)  # fmt: skip
        pathlib.Path(args.json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _gpu_table():
    return {
        g.name: dict(
            dataclasses.asdict(g), achievable_tflops=g.achievable_tflops, achievable_source=g.achievable_source
        )
        for g in specs.GPUS.values()
    }


# ---------------------------------------------------------------------------------------------
# README section.


def latest_results():
    files = sorted(RESULTS.glob("gpu-model-*.json"))
    return json.loads(files[-1].read_text()) if files else None


def readme_section(doc=None):
    doc = doc if doc is not None else latest_results()
    parts = [BEGIN, ""]
    if doc is None:
        parts += ["No model results yet (`python bench/gpu_model.py --json bench/results/gpu-model-DATE.json`).", ""]
    else:
        parts += readme_table(doc)
    parts.append(END)
    return "\n".join(parts)


def readme_table(doc):
    lines = [f"Model of {doc['date']} (`{doc['generator']}`; a model, not a measurement). Per pass, the config "
             "the model picks for each kernel; ceilings in TFLOP/s of CONTRACT §2 FLOPs, overlapped / serialized, "
             "and the resource that binds the overlapped one.", ""]  # fmt: skip
    measured = measured_figures()
    for label in dict.fromkeys(r["shape"] for r in doc["records"]):
        lines += [f"**{label}**", ""]
        cols = ["backend", "arch", "pass", "MMA issued / counted", "exp / logit", "instr / logit",
                "smem B / MMA FLOP", "ceilings (GPU: overlapped / serialized, bound)", "measured",
                "configs (the model's pick)"]  # fmt: skip
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in doc["records"]:
            if r["shape"] != label or r.get("scope") != "pass":
                continue
            if r["status"] != "ok":
                lines.append(f"| {r['backend']} | {r['arch']} | {r['pass']} | {r['status']} |" + " |" * (len(cols) - 4))
                continue
            ceil = "; ".join(
                f"{g}: {c['overlapped']:.0f} / {c['serialized']:.0f}, {r['bound'][g]}"
                for g, c in r["ceiling_tflops"].items()
            )
            meas = measured.get((r["backend"], r["pass"], label))
            cells = [r["backend"], r["arch"], r["pass"], _f(r["mma_issued_per_counted"]), _f(r["exp_per_logit"]),
                     _f(r["instr_per_logit"], "{:.1f}"), _f(r["smem_bytes_per_mma_flop"], "{:.3f}"), ceil,
                     meas or "-", r["config"]]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def measured_figures():
    """{(backend, pass, shape label): "X TFLOP/s on GPU"} from bench/run.py results measured on a GPU."""
    out = {}
    for path in sorted(RESULTS.glob("*.json")):
        if path.name.startswith("gpu-model-"):
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            doc = json.loads(path.read_text())
            device = doc.get("environment", {}).get("device_name", "")
            if not device or "cpu" in device.lower():
                continue
            for row in doc.get("rows", []):
                if row.get("provider") not in ("triton", "cuda") or "tflops" not in row:
                    continue
                dtype = {"bfloat16": "bf16", "float16": "fp16"}.get(row["dtype"])
                if dtype is None:
                    continue
                s = shapes.Shape(row["B"], row["N"], row["Hq"], row["Hkv"], row["D"], row["w1"], row["w2"],
                                 row.get("causal", True), dtype)  # fmt: skip
                out[(row["provider"], row["mode"], s.label())] = f"{row['tflops']:.0f} TFLOP/s on {device}"
    return out


def update_readme(readme=README):
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no gpu-model markers ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + readme_section() + tail
    readme.write_text(new)
    return new != text


if __name__ == "__main__":
    sys.exit(main())
