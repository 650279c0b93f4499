"""Configure and build CMakeLists.txt against the running Python's torch (libtorch users' path).

    python scripts/build_cmake.py [BUILD_DIR] [--cuda]

Fills in what a CUDA build of torch needs from CMake on a machine with the toolkit at
/usr/local/cuda and torch from pip: the toolkit root,
CUDACXX, TORCH_CUDA_ARCH_LIST and, for pip wheels, the nvrtc library inside site-packages.
Prints the path of the built library last.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cmake_executable():
    # pip's cmake (>= 4) sits next to this Python; torch >= 2.14 needs its CUDA20 support.
    local = os.path.join(os.path.dirname(sys.executable), "cmake")
    return local if os.path.exists(local) else shutil.which("cmake")


def configure_args(build_dir, cuda):
    args = ["-S", ROOT, "-B", build_dir, f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    if shutil.which("ninja") or os.path.exists(os.path.join(os.path.dirname(sys.executable), "ninja")):
        args += ["-G", "Ninja"]
    if torch.version.cuda is not None:
        cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
        args += [f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}", f"-DCUDAToolkit_ROOT={cuda_home}"]
        site = os.path.dirname(os.path.dirname(torch.__file__))
        nvrtc = sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "lib", "libnvrtc.so*")))
        if nvrtc:
            args.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc[0]}")
    args.append(f"-DSIMPLICIAL_ATTN_WITH_CUDA={'ON' if cuda else 'OFF'}")
    return args


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("build_dir", nargs="?", default=os.path.join(ROOT, "build-cmake"))
    parser.add_argument("--cuda", action="store_true", help="also build csrc/cuda (needs a CUDA build of torch)")
    opts = parser.parse_args()
    cmake = cmake_executable()
    if cmake is None:
        sys.exit("cmake not found (pip install 'cmake>=4')")
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("CUDACXX", os.path.join(env.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))
    env.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;8.6;9.0+PTX")
    subprocess.run([cmake, *configure_args(opts.build_dir, opts.cuda)], check=True, env=env)
    jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 2))
    subprocess.run([cmake, "--build", opts.build_dir, "-j", jobs], check=True, env=env)
    print(os.path.join(opts.build_dir, "libsimplicial_attn.so"))


if __name__ == "__main__":
    main()
