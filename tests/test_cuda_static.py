"""Static checks of the compiled CUDA kernels, without a GPU.

The extension built with CUDA (setup.py, TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0+PTX") holds one cubin per
arch; bench/cuda_report.py reads them with cuobjdump. Asserted for every kernel instantiation
and arch:
  * it is there (each kernel x dtype x padded head dim the dispatch can reach);
  * no spills: zero stack and zero local memory (ptxas puts spilled registers there);
  * the fp16 / bf16 kernels use tensor cores (HMMA in the SASS) and the fp32 SIMT ones do not
    (fp32 must stay IEEE: CONTRACT bound 1e-5);
  * each `+PTX` arch of the list (default 9.0+PTX) ships its PTX, which newer GPUs JIT-compile.
Skips, with the reason, when the extension was built without CUDA or cuobjdump is missing.
Runtime: ~10-30 s (one SASS dump of the extension).
"""

import importlib.util
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_report_module():
    spec = importlib.util.spec_from_file_location("cuda_report", ROOT / "bench" / "cuda_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cuda_report = _load_report_module()


def _skip_reason():
    from simplicial_attn import _ext

    info = _ext.build_info()
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
    from simplicial_attn import _ext

    listed = _ext.build_info()["cuda_archs"].replace(" ", ";").split(";")
    return sorted({"sm_" + a.replace(".", "").removesuffix("+PTX") for a in listed if a})


def test_every_instantiation_is_built(table, archs):
    have = {(r["arch"], r["kernel"], r["dtype"], r["head_dim"]) for r in table}
    want = set()
    for arch in archs:
        for hd in cuda_report.HEAD_DIMS:
            want |= {(arch, k, dt, hd) for k in cuda_report.TENSOR_CORE_KERNELS for dt in ("fp16", "bf16")}
            want |= {(arch, k, "fp32", hd) for k in cuda_report.SIMT_KERNELS}
        want |= {(arch, "delta_kernel", dt, None) for dt in ("fp16", "bf16", "fp32")}
    missing = sorted(want - have, key=str)
    assert not missing, f"kernel instantiations missing from the build: {missing}"


def test_no_spills_no_local_memory(table):
    bad = [r for r in table if r["stack"] or r["local"]]
    assert not bad, "kernels with stack / local memory (register spills):\n" + cuda_report.markdown(bad)


def test_tensor_cores_in_fp16_bf16_kernels(table):
    tc = [r for r in table if r["kernel"] in cuda_report.TENSOR_CORE_KERNELS]
    assert tc
    without = [r for r in tc if r["hmma"] == 0]
    assert not without, "tensor-core kernels without HMMA:\n" + cuda_report.markdown(without)


def test_fp32_kernels_stay_ieee(table):
    simt = [r for r in table if r["kernel"] in cuda_report.SIMT_KERNELS]
    assert simt
    with_mma = [r for r in simt if r["hmma"]]
    assert not with_mma, "fp32 kernels with tensor-core instructions:\n" + cuda_report.markdown(with_mma)


def test_ptx_archs_ship_ptx(table):
    from simplicial_attn import _ext

    listed = _ext.build_info()["cuda_archs"].replace(" ", ";").split(";")
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
