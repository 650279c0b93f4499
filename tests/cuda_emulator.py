"""Runs the CUDA C++ kernels of csrc/cuda on the CPU emulator (csrc/cuda/emulator/).

The emulator executes the kernels' own code (same launchers, same index arithmetic, same
fragment layouts) with each CTA's threads as fibers, and fails loudly on an out-of-bounds or
misaligned access, a shared-memory race or uninitialised read, a barrier or warp collective not
every thread reaches from the same call site, or an output element written by two threads.
`build()` compiles the driver once per source state (cached by a hash of csrc/cuda under the
system temp dir); `fwd` / `bwd` mirror the kernel-level interface of the backends.

Every run shuffles the order of CTAs and threads with a seed derived from the call (and from
SIMPLICIAL_ATTN_EMU_SEED, default 1); a failure names it. `fast_math=True` emulates nvcc
--use_fast_math (flush-to-zero, MUFU exp2/log2 at their worst-case error), the GPU build's flags.
Each run adds the SA_PATH counts the driver reports to PATH_COUNTS.
"""

import collections
import functools
import hashlib
import os
import pathlib
import shutil
import struct
import subprocess
import tempfile
import zlib

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUDA_SRC = ROOT / "csrc" / "cuda"
CUDA_INCLUDE = pathlib.Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}
# {(kernel, padded head dim, path name): visits} over every run of this process; a kernel that
# ran without any marked path visited has its (kernel, head dim, "-") key at 0.
PATH_COUNTS = collections.Counter()


def unavailable_reason():
    """Why the emulator cannot be built here (None when it can)."""
    if shutil.which("g++") is None:
        return "g++ is not installed"
    if not (CUDA_INCLUDE / "cuda_fp16.h").exists():
        return f"no CUDA headers at {CUDA_INCLUDE} (set CUDA_HOME)"
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return f"the emulator's fiber switch is x86-64 assembly; this machine is {platform.machine()}"
    return None


# The translation units the driver includes; every header of csrc/cuda counts too.
DRIVER_UNITS = ("fwd_fp16.cu", "fwd_bf16.cu", "bwd_fp16.cu", "bwd_bf16.cu", "fp32.cu")


# nvcc contracts a * b + c into one fma wherever it can (-fmad=true, its default): so does the
# emulator, so a kernel that relies on an uncontracted product fails here as on the GPU.
COMPILE_FLAGS = ("-O2", "-mfma", "-ffp-contract=fast")


def _source_hash():
    h = hashlib.sha256(" ".join(COMPILE_FLAGS).encode())
    for p in sorted(CUDA_SRC.rglob("*")):
        if p.parent.name == "sass":  # the SASS probes (tests/test_cuda_static.py) are not in the driver
            continue
        if p.is_file() and (p.suffix in (".h", ".cuh", ".cc") or p.name in DRIVER_UNITS):
            h.update(str(p.relative_to(CUDA_SRC)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def build():
    """Path of the compiled driver (compiled at most once per source state, ~25 s on 2 cores)."""
    out_dir = pathlib.Path(tempfile.gettempdir()) / "simplicial_attn_emulator"
    out_dir.mkdir(exist_ok=True)
    exe = out_dir / f"emu-{_source_hash()}"
    if not exe.exists():
        tmp = exe.with_suffix(f".tmp{os.getpid()}")
        cmd = ["g++", "-std=c++20", *COMPILE_FLAGS, "-DSA_EMULATE", f"-I{CUDA_INCLUDE}"]
        cmd += [str(CUDA_SRC / "emulator" / "driver.cc"), "-o", str(tmp)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        tmp.rename(exe)
    return exe


def configs():
    """{(kernel, head_dim): dynamic shared memory bytes} of the tensor-core kernels' tile configs."""
    out = subprocess.run([str(build()), "configs"], check=True, capture_output=True, text=True).stdout
    table = {}
    for line in out.splitlines():
        kernel, head_dim, _threads, smem = line.split()
        table[(kernel, int(head_dim))] = int(smem)
    return table


def _write_tensor(f, t):
    storage = t.untyped_storage()
    raw = torch.empty(0, dtype=torch.uint8).set_(storage)
    strides = list(t.stride()) + [1] * (4 - t.dim())  # lse [B, Hq, N] is contiguous: its strides go unused
    f.write(struct.pack("<6q", raw.numel(), t.storage_offset(), *strides))
    f.write(raw.numpy().tobytes())


def _options(header, scale, fast_math):
    """Driver options: the shuffle seed (from the call, so each case runs its own order) and fast-math."""
    base = int(os.environ.get("SIMPLICIAL_ATTN_EMU_SEED", "1"))
    seed = zlib.crc32(struct.pack(f"<{len(header)}qd", *header, scale), base) or 1
    return ["--seed", str(seed)] + (["--fast-math"] if fast_math else [])


def _record_paths(stderr):
    for line in stderr.splitlines():
        if line.startswith("path "):
            _, kernel, head_dim, rest = line.split(" ", 3)
            name, count = rest.rsplit(" ", 1)
            PATH_COUNTS[(kernel, int(head_dim), name)] += int(count)


def _run(op, header, scale, tensors, outputs, fast_math=False):
    """Runs the driver; returns the output tensors read back (shapes and dtypes from `outputs`)."""
    with tempfile.TemporaryDirectory() as d:
        fin, fout = pathlib.Path(d) / "in.bin", pathlib.Path(d) / "out.bin"
        with open(fin, "wb") as f:
            f.write(struct.pack("<16q", *header, *([0] * (16 - len(header)))))
            f.write(struct.pack("<d", scale))
            for t in tensors:
                _write_tensor(f, t)
        cmd = [str(build()), *_options(header, scale, fast_math), op, str(fin), str(fout)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"emulated {op} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
        _record_paths(proc.stderr)
        data = fout.read_bytes()
    results, pos = [], 0
    for shape, dtype in outputs:
        n = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
        results.append(torch.frombuffer(bytearray(data[pos : pos + n]), dtype=dtype).view(shape).clone())
        pos += n
    assert pos == len(data), "driver output size mismatch"
    return results


def _header(q, k1, w1, w2, causal):
    B, N, Hq, D = q.shape
    return [DTYPE_CODE[q.dtype], B, N, Hq, k1.shape[2], D, w1, w2, int(causal)]


def fwd(q, k1, k2, v1, v2, w1, w2, causal, scale, *, fast_math=False):
    """(out, lse) from the emulated CUDA forward. Windows are kernel windows (ints), CPU tensors."""
    B, N, Hq, D = q.shape
    outs = [((B, N, Hq, D), q.dtype), ((B, Hq, N), torch.float32)]
    return tuple(_run("fwd", _header(q, k1, w1, w2, causal), scale, [q, k1, k2, v1, v2], outs, fast_math))


def bwd(dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, scale, *, fast_math=False):
    """(dq, dk1, dk2, dv1, dv2) from the emulated CUDA backward."""
    outs = [(q.shape, q.dtype)] + [(k1.shape, q.dtype)] * 4
    tensors = [dout, q, k1, k2, v1, v2, out, lse.contiguous()]
    return tuple(_run("bwd", _header(q, k1, w1, w2, causal), scale, tensors, outs, fast_math))


def selftest(name, *options):
    """Runs `emu [options] selftest NAME` (csrc/cuda/emulator/selftest.h): the CompletedProcess."""
    return subprocess.run([str(build()), *options, "selftest", name], capture_output=True, text=True)
