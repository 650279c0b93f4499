"""Build simplicial-attn and its C++/CUDA extension ``simplicial_attn._C``.

Build knobs (environment variables, one meaning each):
  SIMPLICIAL_ATTN_FORCE_CUDA=1   build the CUDA sources even if torch.cuda sees no GPU
  SIMPLICIAL_ATTN_SKIP_CUDA=1    never build CUDA sources (CPU kernels only)
  TORCH_CUDA_ARCH_LIST           CUDA archs, default "8.0;8.6;9.0+PTX" (PTX: newer GPUs JIT it)
  MAX_JOBS                       parallel compile jobs (ninja)
  CUDA_HOME                      CUDA toolkit, default /usr/local/cuda when it exists

CUDA sources are built when a CUDA toolkit and a CUDA build of torch are present (or when
forced); otherwise the package installs with CPU kernels only and the Triton and reference
backends still work.
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;8.6;9.0+PTX"


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _want_cuda():
    if _flag("SIMPLICIAL_ATTN_SKIP_CUDA"):
        return False
    import torch

    if torch.version.cuda is None:
        if _flag("SIMPLICIAL_ATTN_FORCE_CUDA"):
            sys.exit("SIMPLICIAL_ATTN_FORCE_CUDA=1 but this torch is a CPU-only build (torch.version.cuda is None)")
        return False
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    from torch.utils.cpp_extension import CUDA_HOME

    has_nvcc = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    if not has_nvcc:
        if _flag("SIMPLICIAL_ATTN_FORCE_CUDA"):
            sys.exit("SIMPLICIAL_ATTN_FORCE_CUDA=1 but no nvcc was found (set CUDA_HOME)")
        return False
    return True


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda = _want_cuda()
    # No -std flag: torch.utils.cpp_extension adds the standard its headers need (C++20 for torch >= 2.13).
    cxx = ["-O3", "-fopenmp"] if sys.platform != "darwin" else ["-O3"]
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/**/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    if not with_cuda:
        return [
            CppExtension(
                "simplicial_attn._C",
                sources,
                include_dirs=include_dirs,
                extra_compile_args={"cxx": cxx},
                extra_link_args=["-fopenmp"] if sys.platform != "darwin" else [],
            )
        ], False
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    macros = ["-DSIMPLICIAL_ATTN_WITH_CUDA", f'-DSIMPLICIAL_ATTN_CUDA_ARCHS="{archs}"']
    nvcc = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr", *macros]
    return [
        CUDAExtension(
            "simplicial_attn._C",
            sources + _sources("csrc/cuda/**/*.cu") + _sources("csrc/cuda/**/*.cpp"),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + macros, "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
        )
    ], True


def main():
    from torch.utils.cpp_extension import BuildExtension

    ext_modules, with_cuda = _extensions()
    print(f"simplicial-attn: building {'CPU + CUDA' if with_cuda else 'CPU-only'} extension", flush=True)
    setup(
        packages=[
            "simplicial_attn",
            "simplicial_attn.analysis",
            "simplicial_attn.backends",
            "simplicial_attn.hf",
            "simplicial_attn.nn",
            "simplicial_attn.ops",
            "simplicial_attn.parallel",
            "simplicial_attn.parallel.titan",
            "simplicial_attn.triton_kernels",
        ],
        package_dir={"simplicial_attn": "python/simplicial_attn", "simplicial_attn.triton_kernels": "triton_kernels"},
        package_data={"simplicial_attn.parallel.titan": ["*.toml"]},
        ext_modules=ext_modules,
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
