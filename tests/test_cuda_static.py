"""Static checks of the compiled CUDA kernels, without a GPU.

Device-branch golden checks: every primitive of csrc/cuda/common.cuh with an inline-PTX (or
intrinsic) body, and the numerics helpers, are compiled alone for sm_80 and sm_90 with the
extension's nvcc flags (csrc/cuda/sass/primitive_probes.cuh), and each probe's SASS must hold the
instruction the primitive stands for: LDSM.16.M88.4 / LDSM.16.MT88.4, HMMA.16816.F32 per dtype,
LDGSTS with and without its zero-fill predicate, the DEPBAR wait counts, the shuffle masks, MUFU
exp2 / log2, an uncontracted logit, a NaN-keeping clamp. The emulator never compiles these
branches, so a swapped asm string fails here and nowhere else.

The extension built with CUDA (setup.py, TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0+PTX") holds one cubin per
arch; bench/verify/cuda_report.py reads them with cuobjdump. Asserted for every kernel instantiation
and arch:
  * it is there (each kernel x dtype x padded head dim the dispatch can reach);
  * no spills: zero stack and zero local memory (ptxas puts spilled registers there);
  * the fp16 / bf16 kernels use tensor cores (HMMA in the SASS) and the fp32 SIMT ones do not
    (fp32 must stay IEEE: CONTRACT bound 1e-5);
  * its counts of HMMA, LDSM (plain / .trans), BAR.SYNC, LDGSTS and DEPBAR equal the golden table
    csrc/cuda/sass/golden_counts.json (regenerate with bench/verify/cuda_report.py --write-golden once a
    change is intended; the diff is the review);
  * each `+PTX` arch of the list (default 9.0+PTX) ships its PTX, which newer GPUs JIT-compile.
Skips, with the reason, when the extension was built without CUDA or nvcc / cuobjdump is missing.
Runtime: ~10-30 s (one SASS dump of the extension) + ~5 s (the probes).
"""

import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_report_module():
    spec = importlib.util.spec_from_file_location("cuda_report", ROOT / "bench" / "verify" / "cuda_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cuda_report = _load_report_module()

# ------------------------------------------------------------------------------------------------
# Device-branch golden checks: one probe kernel per primitive (csrc/cuda/sass/primitive_probes.cuh).

PROBES = ROOT / "csrc" / "cuda" / "sass" / "primitive_probes.cuh"
PROBE_ARCHS = ("sm_80", "sm_90")
NVCC_FLAGS = ("-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr", "-std=c++17")  # setup.py's
# probe -> [(pattern, count)]: exactly `count` instructions of the probe match `pattern` (a regex
# on the instruction text: opcode, then operands).
PROBE_EXPECT = {
    "probe_ldmatrix": [(r"LDSM\.16\.M88\.4 ", 1), (r"LDSM\.16\.MT88", 0)],
    "probe_ldmatrix_trans": [(r"LDSM\.16\.MT88\.4 ", 1), (r"LDSM\.16\.M88\.", 0)],
    "probe_mma_fp16": [(r"HMMA\.16816\.F32 ", 1), (r"HMMA\.", 1)],
    "probe_mma_bf16": [(r"HMMA\.16816\.F32\.BF16 ", 1), (r"HMMA\.", 1)],
    "probe_cp_async": [
        # cache-global (.cg: BYPASS) 16-byte copies; the zero-filling one carries its predicate
        (r"LDGSTS\.E\.BYPASS\.128 \[R\d+\], [^,]*\[R\d+\.64\], !?P\d+$", 1),
        (r"LDGSTS\.E\.BYPASS\.128 \[R\d+\+0x200\], [^,]*\[R\d+\.64\+0x200\]$", 1),
        (r"LDGSTS\.", 2),
        (r"LDGDEPBAR$", 2),
        (r"DEPBAR\.LE SB0, 0x1$", 1),
        (r"DEPBAR\.LE SB0, 0x0$", 1),
        (r"BAR\.SYNC", 2),
    ],
    "probe_quad_sum": [(rf"SHFL\.BFLY PT, R\d+, R\d+, {m}, 0x1f$", 1) for m in ("0x1", "0x2")] + [(r"SHFL\.", 2)],
    "probe_quad_max": [(rf"SHFL\.BFLY PT, R\d+, R\d+, {m}, 0x1f$", 1) for m in ("0x1", "0x2")]
    + [(r"SHFL\.", 2), (r"FMNMX", 2)],
    "probe_warp_sum": [(rf"SHFL\.BFLY PT, R\d+, R\d+, {m}, 0x1f$", 1) for m in ("0x10", "0x8", "0x4", "0x2", "0x1")]
    + [(r"SHFL\.", 5)],
    "probe_cta_sync": [(r"BAR\.SYNC(\.DEFER_BLOCKING)? 0x0$", 1)],
    "probe_exp2": [(r"MUFU\.EX2 ", 1)],
    "probe_log2": [(r"MUFU\.LG2 ", 1)],
    "probe_logit": [(r"FMUL", 1), (r"FADD", 1), (r"FFMA", 0)],
    "probe_prob_from_lse": [(r"FMNMX\.NAN |FSEL ", 1), (r"FMNMX(\.FTZ)? ", 0), (r"MUFU\.EX2 ", 1)],
    "probe_warp_all": [(r"VOTE\.ALL ", 1), (r"VOTE\.", 1)],
    "probe_warp_any": [(r"VOTE\.ANY ", 1), (r"VOTE\.", 1)],
    # one HMUL2 (or HFMA2 with a -0 addend) per pair, no round trip through fp32
    "probe_mul_pairs_fp16": [(r"(HMUL2|HFMA2(\.MMA)?) R\d+, R\d+, R\d+(, -RZ)?$", 1), (r"FMUL|F2FP", 0)],
    "probe_mul_pairs_bf16": [(r"HFMA2(\.MMA)?\.BF16_V2 R\d+, R\d+, R\d+, -RZ", 1), (r"FMUL|F2FP", 0)],
}


def _nvcc():
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return next(
        (p for p in (os.path.join(cuda_home, "bin", "nvcc"), shutil.which("nvcc")) if p and os.path.isfile(p)), None
    )


def compile_probes(arch, out_dir, source=PROBES):
    """{probe name: [instruction, ...]} of `source` compiled for `arch` (e.g. "sm_80")."""
    cubin = pathlib.Path(out_dir) / f"probes_{arch}.cubin"
    cmd = [_nvcc(), "-x", "cu", *NVCC_FLAGS, f"-arch={arch}", "-cubin", f"-I{ROOT / 'csrc' / 'cuda'}", "-o", str(cubin)]
    done = subprocess.run([*cmd, str(source)], capture_output=True, text=True)
    assert done.returncode == 0, f"nvcc failed on {source} for {arch}:\n{done.stderr}"
    listing = subprocess.run([cuda_report.find_cuobjdump(), "-sass", str(cubin)], check=True, capture_output=True)
    return {func: ins for (_, func), ins in cuda_report.parse_sass(listing.stdout.decode()).items()}


@pytest.fixture(scope="module")
def probe_sass(tmp_path_factory):
    if _nvcc() is None:
        pytest.skip("nvcc not found (set CUDA_HOME)")
    if cuda_report.find_cuobjdump() is None:
        pytest.skip("cuobjdump not found (set CUDA_HOME, or install triton, which ships one)")
    out = tmp_path_factory.mktemp("probes")
    return {arch: compile_probes(arch, out) for arch in PROBE_ARCHS}


def test_every_probe_has_expectations(probe_sass):
    for arch, probes in probe_sass.items():
        assert set(probes) == set(PROBE_EXPECT), f"{arch}: probes {sorted(probes)} vs expected {sorted(PROBE_EXPECT)}"


@pytest.mark.parametrize("arch", PROBE_ARCHS)
@pytest.mark.parametrize("probe", PROBE_EXPECT)
def test_primitive_compiles_to_its_instruction(probe_sass, arch, probe):
    instructions = probe_sass[arch][probe]
    wrong = []
    for pattern, count in PROBE_EXPECT[probe]:
        found = [ins for ins in instructions if re.match(pattern, ins)]
        if len(found) != count:
            wrong.append(f"{pattern!r}: {len(found)} instead of {count} ({found})")
    assert not wrong, f"{probe} on {arch}:\n" + "\n".join(wrong) + "\nSASS:\n" + "\n".join(instructions)


def _skip_reason():
    from simplicial_attn.backends import extension

    info = extension.build_info()
    if not info.get("extension"):
        return f"simplicial_attn._C is not built ({info.get('import_error')})"
    if not info.get("with_cuda"):
        return "simplicial_attn._C was built without CUDA sources (CPU-only build)"
    if cuda_report.find_cuobjdump() is None:
        return "cuobjdump not found (set CUDA_HOME, or install triton, which ships one)"
    return None


@pytest.fixture(scope="module")
def table():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    return cuda_report.rows(with_smem=False)


@pytest.fixture(scope="module")
def archs():
    from simplicial_attn.backends import extension

    listed = extension.build_info()["cuda_archs"].replace(" ", ";").split(";")
    return sorted({"sm_" + a.replace(".", "").removesuffix("+PTX") for a in listed if a})


def test_every_instantiation_is_built(table, archs):
    have = {(r["arch"], r["kernel"], r["variant"], r["dtype"], r["head_dim"]) for r in table}
    want = set()
    for arch in archs:
        for hd in cuda_report.HEAD_DIMS:
            want |= {(arch, k, "", dt, hd) for k in cuda_report.TENSOR_CORE_KERNELS for dt in ("fp16", "bf16")}
            want |= {(arch, k, "det", dt, hd) for k in cuda_report.VARIANT_KERNELS for dt in ("fp16", "bf16")}
            if hd in cuda_report.ONE_ROW_HEAD_DIMS:
                want |= {(arch, k, "one_row", dt, hd) for k in cuda_report.ONE_ROW_KERNELS for dt in ("fp16", "bf16")}
                fused = cuda_report.FUSED_KERNELS
                want |= {(arch, k, v, dt, hd) for k in fused for v in ("", "seq") for dt in ("fp16", "bf16")}
            want |= {(arch, k, "", "fp32", hd) for k in cuda_report.SIMT_KERNELS}
            want |= {(arch, k, "", dt, hd) for k in cuda_report.DECODE_KERNELS for dt in ("fp16", "bf16", "fp32")}
        want |= {(arch, "delta_kernel", "", dt, None) for dt in ("fp16", "bf16", "fp32")}
        want |= {(arch, k, "", dt, None) for k in cuda_report.REDUCE_KERNELS for dt in ("fp16", "bf16")}
    missing = sorted(want - have, key=str)
    assert not missing, f"kernel instantiations missing from the build: {missing}"


def test_no_spills_no_local_memory(table):
    bad = [r for r in table if r["stack"] or r["local"]]
    assert not bad, "kernels with stack / local memory (register spills):\n" + cuda_report.markdown(bad)


def test_tensor_cores_in_fp16_bf16_kernels(table):
    tc = [r for r in table if r["kernel"] in cuda_report.TENSOR_CORE_KERNELS + cuda_report.FUSED_KERNELS]
    assert tc
    without = [r for r in tc if r["hmma"] == 0]
    assert not without, "tensor-core kernels without HMMA:\n" + cuda_report.markdown(without)


def test_fp32_kernels_stay_ieee(table):
    """The fp32 SIMT kernels and the decode kernels (fp32 math for every dtype) use no tensor cores."""
    simt = [r for r in table if r["kernel"] in cuda_report.SIMT_KERNELS + cuda_report.DECODE_KERNELS]
    assert simt
    with_mma = [r for r in simt if r["hmma"]]
    assert not with_mma, "fp32 kernels with tensor-core instructions:\n" + cuda_report.markdown(with_mma)


def test_sass_counts_match_golden(table):
    """HMMA, LDSM (plain / .trans), BAR.SYNC, LDGSTS and DEPBAR counts per kernel, arch, dtype and
    head dim, as in csrc/cuda/sass/golden_counts.json."""
    from simplicial_attn.backends import extension

    golden = json.loads(cuda_report.GOLDEN.read_text())
    built_with = extension.build_info()["cuda_version"]
    if built_with != golden["cuda_version"]:
        pytest.skip(f"the golden counts are for CUDA {golden['cuda_version']}; this build used CUDA {built_with}")
    diff = cuda_report.golden_diff(table, golden)
    assert not diff, (
        "SASS instruction counts differ from csrc/cuda/sass/golden_counts.json (if intended: "
        "python bench/verify/cuda_report.py --write-golden, and review the diff):\n" + "\n".join(diff)
    )


def test_ptx_archs_ship_ptx(table):
    from simplicial_attn.backends import extension

    listed = extension.build_info()["cuda_archs"].replace(" ", ";").split(";")
    want = {"sm_" + a.removesuffix("+PTX").replace(".", "") for a in listed if a.endswith("+PTX")}
    if not want:
        pytest.skip(f"this build's TORCH_CUDA_ARCH_LIST ({';'.join(listed)}) has no +PTX entry")
    listing = subprocess.run(
        [cuda_report.find_cuobjdump(), "-lptx", str(cuda_report.extension_path())],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    missing = sorted(a for a in want if f".{a}.ptx" not in listing)
    assert not missing, f"no PTX for {missing} in the extension; cuobjdump -lptx printed:\n{listing}"
