"""Peak extra memory of one call: CUDA allocator peak on a GPU, peak RSS on a CPU.

CPU: Linux keeps the resident-set high-water mark (VmHWM) per process and resets it to the
current RSS when "5" is written to /proc/self/clear_refs; the peak of a call is then
VmHWM - VmRSS before the call. Freed memory the allocator kept can be reused without RSS
growth, so run it in a fresh process for a clean figure (tests/test_reference_memory.py does).
"""

import torch


def status_kib(field):
    """A `VmXxx:` field of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_rss_delta(fn):
    """Bytes by which the process's peak RSS during `fn()` exceeds its RSS just before."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kib("VmRSS")
    result = fn()
    peak = status_kib("VmHWM")
    del result
    return (peak - before) * 1024


def peak_cuda_delta(fn, device="cuda"):
    """Bytes by which the CUDA allocator's peak during `fn()` exceeds its allocation before."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return peak - before


def peak_memory_delta(fn, device="cpu"):
    return peak_cuda_delta(fn, device) if torch.device(device).type == "cuda" else peak_rss_delta(fn)
