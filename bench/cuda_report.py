"""Static report of the CUDA C++ kernels in the built extension: per kernel instantiation and arch,
registers, stack / local memory (spills), tensor-core instruction count, dynamic shared memory.

No GPU needed: it reads the cubins inside simplicial_attn/_C*.so with `cuobjdump`
(--dump-resource-usage and -sass). tests/test_cuda_static.py asserts on the same rows.

    python bench/cuda_report.py            # markdown table of the installed extension
    python bench/cuda_report.py PATH.so    # another build

`rows()` returns the table as dicts so a combined report (bench/kernel_report.py) can merge it.
Shared memory is dynamic, so cuobjdump cannot see it; the column comes from the kernel configs,
printed by the emulator driver (`emu configs`, see tests/cuda_emulator.py) when it can be built.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

# Kernels of csrc/cuda, by mangled name fragment: `name` as in the source, tensor-core or SIMT.
_FUNC_RE = re.compile(r"_ZN15simplicial_attn4cuda\d+(?P<name>\w+?_kernel)I(?P<targs>\w*)")
_DTYPES = {"6__half": "fp16", "13__nv_bfloat16": "bf16", "f": "fp32"}
TENSOR_CORE_KERNELS = ("fwd_kernel", "dq_kernel", "dkv1_kernel", "dkv2_kernel")
SIMT_KERNELS = ("fwd_simt_kernel", "dq_simt_kernel", "dkv_simt_kernel")
HEAD_DIMS = (64, 128, 256)


def find_cuobjdump():
    """cuobjdump from CUDA_HOME, PATH, or the copy triton ships; None if there is none."""
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidates = [os.path.join(cuda_home, "bin", "cuobjdump"), shutil.which("cuobjdump")]
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def extension_path():
    """Path of the installed simplicial_attn._C shared library, or None."""
    import importlib.util

    spec = importlib.util.find_spec("simplicial_attn._C")
    return pathlib.Path(spec.origin) if spec and spec.origin else None


def parse_function(mangled):
    """(kernel, dtype, head_dim) of a mangled simplicial_attn::cuda kernel name, or None."""
    m = _FUNC_RE.search(mangled)
    if not m:
        return None
    targs = m.group("targs")
    dtype = next((d for prefix, d in _DTYPES.items() if targs.startswith(prefix)), "fp32")
    hd = re.search(r"ILi(\d+)E", targs)
    return m.group("name"), dtype, int(hd.group(1)) if hd else None


def _cuobjdump(tool, binary, *args):
    """cuobjdump's output; empty for a binary without device code (a CPU-only build), for which
    cuobjdump exits 255 instead of printing nothing."""
    done = subprocess.run([tool, *args, str(binary)], capture_output=True, text=True)
    if done.returncode != 0 and "does not contain device code" in done.stdout + done.stderr:
        return ""
    done.check_returncode()
    return done.stdout


def resource_usage(tool, binary):
    """{(arch, mangled): {"REG": .., "STACK": .., "SHARED": .., "LOCAL": ..}} from --dump-resource-usage."""
    out, arch, func = {}, None, None
    for line in _cuobjdump(tool, binary, "--dump-resource-usage").splitlines():
        line = line.strip()
        if line.startswith("arch = "):
            arch = line.split("=")[1].strip()
        elif line.startswith("Function "):
            func = line[len("Function ") :].rstrip(":")
        elif line.startswith("REG:") and func:
            out[(arch, func)] = {
                k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line) if k in ("REG", "STACK", "SHARED", "LOCAL")
            }
            func = None
    return out


def mma_counts(tool, binary):
    """{(arch, mangled): number of HMMA instructions} from the SASS."""
    counts, arch, func = {}, None, None
    for line in _cuobjdump(tool, binary, "-sass").splitlines():
        s = line.strip()
        if s.startswith("arch = "):
            arch = s.split("=")[1].strip()
        elif s.startswith("Function : "):
            func = s[len("Function : ") :]
            counts[(arch, func)] = 0
        elif func and "HMMA" in s:
            counts[(arch, func)] += 1
    return counts


def smem_bytes():
    """{(kernel, head_dim): dynamic shared memory bytes} from the emulator driver, {} if it cannot run."""
    tests = pathlib.Path(__file__).resolve().parents[1] / "tests"
    sys.path.insert(0, str(tests))
    try:
        import cuda_emulator

        if cuda_emulator.unavailable_reason():
            return {}
        return cuda_emulator.configs()
    except (ImportError, subprocess.CalledProcessError, OSError):
        return {}
    finally:
        sys.path.remove(str(tests))


def rows(binary=None, with_smem=True):
    """One dict per (arch, kernel instantiation) of simplicial_attn::cuda in `binary` (default: the
    installed extension): arch, kernel, dtype, head_dim, regs, stack, local, hmma, smem."""
    tool = find_cuobjdump()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found (set CUDA_HOME, or install triton which ships one)")
    binary = binary or extension_path()
    if binary is None:
        raise FileNotFoundError("simplicial_attn._C is not built")
    usage, mma = resource_usage(tool, binary), mma_counts(tool, binary)
    smem = smem_bytes() if with_smem else {}
    table = []
    for (arch, func), res in sorted(usage.items()):
        parsed = parse_function(func)
        if parsed is None:
            continue
        kernel, dtype, head_dim = parsed
        table.append(
            {
                "arch": arch,
                "kernel": kernel,
                "dtype": dtype,
                "head_dim": head_dim,
                "regs": res.get("REG", 0),
                "stack": res.get("STACK", 0),
                "local": res.get("LOCAL", 0),
                "hmma": mma.get((arch, func), 0),
                "smem": smem.get((kernel, head_dim)),
            }
        )
    return table


def markdown(table):
    cols = ["arch", "kernel", "dtype", "head_dim", "regs", "stack", "local", "hmma", "smem"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv):
    table = rows(pathlib.Path(argv[1]) if len(argv) > 1 else None)
    print(markdown(table))
    spills = [r for r in table if r["stack"] or r["local"]]
    print(f"\n{len(table)} kernel instantiations, {len(spills)} with stack/local memory (spills)")


if __name__ == "__main__":
    main(sys.argv)
