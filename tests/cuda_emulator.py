"""Runs the CUDA C++ kernels of csrc/cuda on the CPU emulator (csrc/cuda/emulator/).

The emulator executes the kernels' own code (same launchers, same index arithmetic, same
fragment layouts) with each CTA's threads as fibers, and fails loudly on an out-of-bounds or
misaligned access, a shared-memory race or uninitialised read, a barrier or warp collective not
every thread reaches from the same call site, or an output element written by two threads.
`build()` compiles the driver once per source state (cached by a hash of csrc/cuda under the
system temp dir); `fused_fwd` / `fused_bwd` / `fused_decode` mirror the backends' fwd / bwd /
decode (simplicial_attn/backends/__init__.py), with a Problem (window bands, scale, logits,
packed layout, cache lengths).

Every run shuffles the order of CTAs and threads with a seed derived from the call (and from
SIMPLICIAL_ATTN_EMU_SEED, default 1); a failure names it. `fast_math=True` emulates nvcc
--use_fast_math (flush-to-zero, MUFU exp2/log2 at their worst-case error), the GPU build's flags.

Coverage: each run reports the SA_PATH counts of its launches. `record_run(name, fn, *args)`
runs a test's emulator calls (and its checks) and keeps the paths they visited under `name`,
per state of the sources and test files, so tests/test_cuda_paths.py can add up the paths of
every run whichever process (pytest-xdist worker, earlier session) ran it.
"""

import collections
import fcntl
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

from simplicial_attn.problem import Problem, window_band

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUDA_SRC = ROOT / "csrc" / "cuda"
CUDA_INCLUDE = pathlib.Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}
_RECORDING = []  # the path lines of the record_run calls in progress (innermost last)


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
DRIVER_UNITS = ("fwd_fp16.cu", "fwd_bf16.cu", "bwd_fp16.cu", "bwd_bf16.cu", "fp32.cu", "decode.cu")


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


def compile_once(exe, cmd):
    """Runs the compiler command `cmd` (its output option last, without the path) to make `exe`,
    unless it exists; returns exe. Safe when several processes (pytest-xdist workers) want the same
    exe at once: the first to take its lock compiles to a private file renamed into place (nobody
    ever runs a partial binary), the others wait on the lock and find exe built."""
    exe = pathlib.Path(exe)
    if exe.exists():
        return exe
    with open(exe.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not exe.exists():  # another process may have built it while this one waited
            tmp = exe.with_suffix(f".tmp{os.getpid()}")
            try:
                subprocess.run([*cmd, str(tmp)], check=True, capture_output=True, text=True)
                os.replace(tmp, exe)  # atomic: exe is either absent or complete
            finally:
                tmp.unlink(missing_ok=True)
    return exe


@functools.cache
def build():
    """Path of the compiled driver (compiled at most once per source state, ~25 s on 2 cores)."""
    out_dir = pathlib.Path(tempfile.gettempdir()) / "simplicial_attn_emulator"
    out_dir.mkdir(exist_ok=True)
    cmd = ["g++", "-std=c++20", *COMPILE_FLAGS, "-DSA_EMULATE", f"-I{CUDA_INCLUDE}"]
    cmd += [str(CUDA_SRC / "emulator" / "driver.cc"), "-o"]
    return compile_once(out_dir / f"emu-{_source_hash()}", cmd)


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


def _parse_paths(lines):
    """{(kernel, padded head dim, path name): visits} of the driver's "path ..." lines; a kernel that
    ran without visiting a marked path has its (kernel, head dim, "-") key at 0."""
    counts = collections.Counter()
    for line in lines:
        if line.startswith("path "):
            _, kernel, head_dim, rest = line.split(" ", 3)
            name, count = rest.rsplit(" ", 1)
            counts[(kernel, int(head_dim), name)] += int(count)
    return counts


def _record_paths(stderr):
    lines = [line for line in stderr.splitlines() if line.startswith("path ")]
    for recording in _RECORDING:
        recording.extend(lines)


def _records_dir():
    """Where record_run keeps the paths of each run: one folder per state of the kernel sources and
    of the test files that define the runs."""
    h = hashlib.sha256(_source_hash().encode())
    for p in sorted(ROOT.glob("tests/test_cuda_emulated*.py")) + [ROOT / "tests" / "cases.py", pathlib.Path(__file__)]:
        h.update(p.read_bytes())
    records = pathlib.Path(tempfile.gettempdir()) / "simplicial_attn_emulator" / f"paths-{h.hexdigest()[:16]}"
    records.mkdir(parents=True, exist_ok=True)
    return records


def record_run(name, fn, *args):
    """Runs fn(*args) (a test's emulator calls and its checks) and keeps the SA_PATH counts of its
    emulator calls under `name`; returns them. Nothing is kept when fn raises."""
    lines = []
    _RECORDING.append(lines)
    try:
        fn(*args)
    finally:
        _RECORDING.remove(lines)
    path = _records_dir() / f"{name}.paths"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text("\n".join(lines))
    tmp.rename(path)
    return _parse_paths(lines)


def recorded_paths(name):
    """The SA_PATH counts record_run kept for `name` (in any process, for these sources), or None."""
    path = _records_dir() / f"{name}.paths"
    return _parse_paths(path.read_text().splitlines()) if path.exists() else None


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


def _header(q, k1, prob):
    B, N, Hq, D = q.shape
    packed = prob.cu_seqlens is not None
    num_seqs = prob.cu_seqlens.numel() - 1 if packed else B
    det = int(prob.logits == "determinant")
    bands = (*prob.band1.clipped(N), *prob.band2.clipped(N))  # as csrc/cuda/api.cpp's problem_desc
    return [DTYPE_CODE[q.dtype], B, N, Hq, k1.shape[2], D, *bands, det, int(packed), num_seqs] + [
        prob.max_seqlen if packed else N,
    ]


def _cu(prob):
    return [] if prob.cu_seqlens is None else [prob.cu_seqlens.to(torch.int32).contiguous()]


def fused_fwd(q, k1, k2, v1, v2, prob, *, fast_math=False):
    """(out, lse, lse_lo) from the emulated CUDA forward: the backends' fwd (prob: a Problem with
    window bands; CPU tensors; packed layout q [1, T, Hq, D] with prob.cu_seqlens)."""
    B, N, Hq, D = q.shape
    outs = [((B, N, Hq, D), q.dtype), ((B, Hq, N), torch.float32), ((B, Hq, N), torch.float32)]
    tensors = [q, k1, k2, v1, v2, *_cu(prob)]
    return tuple(_run("fwd", _header(q, k1, prob), prob.scale, tensors, outs, fast_math))


def fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob, *, fast_math=False):
    """(dq, dk1, dk2, dv1, dv2) from the emulated CUDA backward: the backends' bwd."""
    outs = [(q.shape, q.dtype)] + [(k1.shape, q.dtype)] * 4
    tensors = [dout, q, k1, k2, v1, v2, out, lse.contiguous(), lse_lo.contiguous(), *_cu(prob)]
    return tuple(_run("bwd", _header(q, k1, prob), prob.scale, tensors, outs, fast_math))


def fused_decode(q, k1_cache, k2_cache, v1_cache, v2_cache, prob, *, fast_math=False):
    """(out, lse) from the emulated CUDA decode kernels: the backends' decode (CONTRACT §7)."""
    B, Nq, Hq, D = q.shape
    header = [DTYPE_CODE[q.dtype], B, Nq, Hq, k1_cache.shape[2], D, prob.band1.left, prob.band2.left]
    header += [k1_cache.shape[1], k2_cache.shape[1], int(prob.logits == "determinant")]
    tensors = [q, k1_cache, k2_cache, v1_cache, v2_cache, prob.cache_seqlens.to(torch.int32).contiguous()]
    outs = [((B, Nq, Hq, D), q.dtype), ((B, Hq, Nq), torch.float32)]
    return tuple(_run("decode", header, prob.scale, tensors, outs, fast_math))


# The forms tests/test_non_finite.py calls (integer windows as arguments, no lse_lo): the backward
# recomputes P from lse alone (lse_lo = 0), which is exact enough at the O(1) logits it uses.
def _problem(w1, w2, causal, scale):
    return Problem(window_band(w1, causal), window_band(w2, causal), scale)


def fwd(q, k1, k2, v1, v2, w1, w2, causal, scale):
    """(out, lse) of fused_fwd for a batched trilinear problem."""
    out, lse, _ = fused_fwd(q, k1, k2, v1, v2, _problem(w1, w2, causal, scale))
    return out, lse


def bwd(dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, scale):
    """fused_bwd for a batched trilinear problem, with lse_lo = 0."""
    return fused_bwd(dout, q, k1, k2, v1, v2, out, lse, torch.zeros_like(lse), _problem(w1, w2, causal, scale))


def selftest(name, *options):
    """Runs `emu [options] selftest NAME` (csrc/cuda/emulator/selftest.h): the CompletedProcess."""
    return subprocess.run([str(build()), *options, "selftest", name], capture_output=True, text=True)
