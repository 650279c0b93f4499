"""Input rules of CONTRACT §4. Each error names the argument, what was expected and what was given.

Type problems raise TypeError, value problems ValueError. Which backend can serve a dtype
or device is the registry's business (backends.py), not this module's.
"""

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 256


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def check_window(name, w):
    if w is None:
        return
    if isinstance(w, bool) or not isinstance(w, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 1 or None, got {type(w).__name__} {w!r}")
    if w < 1:
        raise ValueError(f"{name} must be an int >= 1 or None, got {w}")


def check_scale(scale):
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")


def check_flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_tensors(q, k1, k2, v1, v2):
    """Types, dtypes, devices, ranks and shapes of the five inputs; returns (B, N, Hq, Hkv, D)."""
    named = {"q": q, "k1": k1, "k2": k2, "v1": v1, "v2": v2}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"q must have dtype float16, bfloat16 or float32 (float64 on the cpu and reference backends), "
            f"got {_dtype_name(q.dtype)}"
        )
    for name, t in named.items():
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {_dtype_name(q.dtype)}, got {_dtype_name(t.dtype)}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    layouts = {"q": "[B, N, Hq, D]", "k1": "[B, N, Hkv, D]", "k2": "[B, N, Hkv, D]"}
    for name, t in named.items():
        if t.dim() != 4:
            layout = layouts.get(name, "[B, N, Hkv, D]")
            raise ValueError(f"{name} must have rank 4 {layout}, got rank {t.dim()} with shape {tuple(t.shape)}")
    B, N, Hq, D = q.shape
    Hkv = k1.shape[2]
    for name in ("k2", "v1", "v2"):
        if named[name].shape != k1.shape:
            raise ValueError(
                f"{name} must have k1's shape {tuple(k1.shape)} [B, N, Hkv, D], got {tuple(named[name].shape)}"
            )
    for axis, label in ((0, "B"), (1, "N"), (3, "D")):
        if k1.shape[axis] != q.shape[axis]:
            raise ValueError(
                f"k1, k2, v1, v2 must have q's {label} = {q.shape[axis]} (dim {axis}), got {k1.shape[axis]} "
                f"(k1 shape {tuple(k1.shape)}, q shape {tuple(q.shape)})"
            )
    if Hkv < 1 or Hq % Hkv != 0:
        raise ValueError(f"q's heads Hq = {Hq} must be a multiple of k1's heads Hkv = {Hkv}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D (q.shape[3]) must be in 1..{MAX_HEAD_DIM}, got {D}")
    return B, N, Hq, Hkv, D
