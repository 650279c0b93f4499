"""Where a benchmark ran: device, versions, and the device's matmul rate in the same run."""

import platform
import re
import subprocess

import torch

from bench import timing


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver_version():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def describe(device):
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import simplicial_attn as sa

    env = {
        "device": device,
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "build_info": sa.build_info(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            sms=props.multi_processor_count,
            driver=_driver_version(),
        )
    else:
        env["device_name"] = f"cpu-{env['cpu_model']}-{env['threads']}threads"
    return env


def slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def matmul_peak(device, dtype, size=None, repeats=5):
    """The device's dense matmul rate in `dtype` (TFLOP/s, best of `repeats`), measured now."""
    size = size or (8192 if device == "cuda" else 2048)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    times = timing.time_fn(lambda: torch.mm(a, b), device=device, warmup=2, repeats=repeats)
    best = min(times)
    return {"tflops": 2 * size**3 / best / 1e12, "size": size, "seconds": best, "method": "torch.mm, best of repeats"}
