"""Static report of the CUDA C++ kernels in the built extension: per kernel instantiation and arch,
registers, stack / local memory (spills), SASS instruction counts (tensor-core HMMA, ldmatrix plain
and transposed, barriers, cp.async LDGSTS and its DEPBAR waits), dynamic shared memory.

No GPU needed: it reads the cubins inside simplicial_attn/_C*.so with `cuobjdump`
(--dump-resource-usage and -sass). tests/test_cuda_static.py asserts on the same rows, and compares
the instruction counts with the golden table csrc/cuda/sass/golden_counts.json, so a change in what
a kernel compiles to (a barrier dropped, ldmatrix .trans swapped, ...) shows up as a failing test
and, once intended, as a reviewed diff of that file.

    python bench/verify/cuda_report.py                   # markdown table of the installed extension
    python bench/verify/cuda_report.py PATH.so           # another build
    python bench/verify/cuda_report.py --write-golden    # regenerate the golden counts from this build

`rows()` returns the table as dicts so a combined report (bench/verify/kernel_report.py) can merge it.
Shared memory is dynamic, so cuobjdump cannot see it; the column comes from the kernel configs,
printed by the emulator driver (`emu configs`, see tests/cuda_emulator.py) when it can be built.
"""

import argparse
import json
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
# The fused dq + dk2 + dv2 pass (head dims 64 and 128 only: ONE_ROW_HEAD_DIMS) and its reduce
# (no tensor cores, no head-dim template argument). The pass's config has a bool (DqKv2Config's
# kOneRow): head packing is variant "", sequence tiles variant "seq" (smem: the emulator driver's
# "dqkv2_kernel_seq").
FUSED_KERNELS = ("dqkv2_kernel",)
REDUCE_KERNELS = ("dkv2_reduce_kernel",)
SIMT_KERNELS = ("fwd_simt_kernel", "dq_simt_kernel", "dkv_simt_kernel")
DECODE_KERNELS = ("decode_split_kernel", "decode_combine_kernel")  # every dtype, fp32 math on CUDA cores
# Kernels instantiated per logit form (a bool template argument): variant "det" for the determinant.
VARIANT_KERNELS = ("fwd_kernel", "dq_kernel", "dkv2_kernel")
# The forward's held form (head dims <= 128) has an instantiation for >= 16 heads packed per
# position (its second bool, kOneRow): variant "one_row".
ONE_ROW_KERNELS = ("fwd_kernel",)
ONE_ROW_HEAD_DIMS = (64, 128)
HEAD_DIMS = (64, 128, 256)
ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "csrc" / "cuda" / "sass" / "golden_counts.json"
# SASS instruction counts per kernel: column -> the opcode pattern it counts (at an instruction's
# start, after the optional predicate).
SASS_COUNTS = {
    "hmma": r"HMMA\.",
    "ldsm": r"LDSM\.16\.M88\.",
    "ldsm_t": r"LDSM\.16\.MT88\.",
    "bar": r"BAR\.SYNC",
    "ldgsts": r"LDGSTS\.",
    "depbar": r"DEPBAR\.",
}
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?(?P<ins>[A-Z][A-Z0-9_.]*[^;]*);")


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
    """(kernel, dtype, head_dim, variant) of a mangled simplicial_attn::cuda kernel name, or None;
    variant is "det" for the determinant instantiation of a VARIANT_KERNELS kernel (its first bool
    template argument), "one_row" for the head-packed one of a ONE_ROW_KERNELS kernel (its second),
    "seq" for the sequence-tile one of a FUSED_KERNELS kernel (its config's bool false), else ""."""
    m = _FUNC_RE.search(mangled)
    if not m:
        return None
    targs = m.group("targs")
    dtype = next((d for prefix, d in _DTYPES.items() if targs.startswith(prefix)), "fp32")
    hd = re.search(r"ILi(\d+)E", targs)
    flags = re.findall(r"Lb([01])E", targs)
    name = m.group("name")
    if name in FUSED_KERNELS:
        variant = "" if flags[:1] == ["1"] else "seq"
    else:
        variant = "det" if flags[:1] == ["1"] else "one_row" if flags[1:2] == ["1"] else ""
    return name, dtype, int(hd.group(1)) if hd else None, variant


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


def parse_sass(text):
    """{(arch, function): [instruction, ...]} of a cuobjdump -sass listing, in program order; an
    instruction is its opcode and operands ("LDSM.16.MT88.4 R4, [R0]"), without a predicate."""
    functions, arch, func = {}, None, None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("arch = "):
            arch = s.split("=")[1].strip()
        elif s.startswith("Function : "):
            func = s[len("Function : ") :]
            functions[(arch, func)] = []
        elif func and (m := _INSTRUCTION.match(line)):
            functions[(arch, func)].append(m.group("ins").strip())
    return functions


def count_opcodes(instructions):
    """{column: count} of SASS_COUNTS over one function's instructions."""
    return {col: sum(1 for ins in instructions if re.match(pat, ins)) for col, pat in SASS_COUNTS.items()}


def sass_counts(tool, binary):
    """{(arch, mangled): {column: count}} from the SASS of `binary`."""
    return {key: count_opcodes(ops) for key, ops in parse_sass(_cuobjdump(tool, binary, "-sass")).items()}


def smem_bytes():
    """{(kernel, head_dim): dynamic shared memory bytes} from the emulator driver, {} if it cannot run."""
    tests = ROOT / "tests"
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


def smem_key(kernel, variant, head_dim):
    """The key of an instantiation in smem_bytes (the emulator driver's config names)."""
    return (f"{kernel}_seq" if variant == "seq" else kernel, head_dim)


def rows(binary=None, with_smem=True):
    """One dict per (arch, kernel instantiation) of simplicial_attn::cuda in `binary` (default: the
    installed extension): arch, kernel, dtype, head_dim, regs, stack, local, the SASS_COUNTS
    columns (hmma, ldsm, ...), smem."""
    tool = find_cuobjdump()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found (set CUDA_HOME, or install triton which ships one)")
    binary = binary or extension_path()
    if binary is None:
        raise FileNotFoundError("simplicial_attn._C is not built")
    usage, counts = resource_usage(tool, binary), sass_counts(tool, binary)
    smem = smem_bytes() if with_smem else {}
    table = []
    for (arch, func), res in sorted(usage.items()):
        parsed = parse_function(func)
        if parsed is None:
            continue
        kernel, dtype, head_dim, variant = parsed
        table.append(
            {
                "arch": arch,
                "kernel": kernel,
                "variant": variant,
                "dtype": dtype,
                "head_dim": head_dim,
                "regs": res.get("REG", 0),
                "stack": res.get("STACK", 0),
                "local": res.get("LOCAL", 0),
                **counts.get((arch, func), dict.fromkeys(SASS_COUNTS, 0)),
                "smem": smem.get(smem_key(kernel, variant, head_dim)),
            }
        )
    return table


def row_key(r):
    """The golden table's key of a row: arch/kernel[:variant]/dtype/head_dim."""
    kernel = f"{r['kernel']}:{r['variant']}" if r["variant"] else r["kernel"]
    return f"{r['arch']}/{kernel}/{r['dtype']}/{r['head_dim'] or '-'}"


def golden_table(table, cuda_version):
    """The golden counts of `table` (see GOLDEN), as written to the JSON file."""
    counts = {row_key(r): {c: r[c] for c in SASS_COUNTS} for r in sorted(table, key=row_key)}
    return {"cuda_version": cuda_version, "counts": counts}


def golden_diff(table, golden):
    """Lines describing every difference between `table`'s counts and the golden ones (empty: equal),
    over the archs `table` was built for (a GPU machine builds sm_90 only)."""
    archs = {r["arch"] for r in table}
    want = {k: v for k, v in golden["counts"].items() if k.split("/")[0] in archs}
    have = golden_table(table, golden["cuda_version"])["counts"]
    lines = [f"{k}: missing from this build" for k in sorted(want.keys() - have.keys())]
    lines += [f"{k}: not in the golden table" for k in sorted(have.keys() - want.keys())]
    for k in sorted(want.keys() & have.keys()):
        changed = [f"{c} {want[k][c]} -> {have[k][c]}" for c in SASS_COUNTS if want[k].get(c) != have[k][c]]
        if changed:
            lines.append(f"{k}: " + ", ".join(changed))
    return lines


def markdown(table):
    cols = ["arch", "kernel", "variant", "dtype", "head_dim", "regs", "stack", "local", *SASS_COUNTS, "smem"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv):
    parser = argparse.ArgumentParser(description="Static report of the CUDA C++ kernels (no GPU needed).")
    parser.add_argument("binary", nargs="?", type=pathlib.Path, help="the extension .so (default: the installed one)")
    parser.add_argument("--write-golden", action="store_true", help=f"write the SASS counts to {GOLDEN}")
    args = parser.parse_args(argv)
    table = rows(args.binary)
    print(markdown(table))
    spills = [r for r in table if r["stack"] or r["local"]]
    print(f"\n{len(table)} kernel instantiations, {len(spills)} with stack/local memory (spills)")
    if args.write_golden:
        from simplicial_attn.backends import extension

        GOLDEN.write_text(json.dumps(golden_table(table, extension.build_info()["cuda_version"]), indent=1) + "\n")
        print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main(sys.argv[1:])
