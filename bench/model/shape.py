"""The problem shape the model maps loop iterations onto, and its window bands."""

import dataclasses
import re

DTYPES = ("bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class Shape:
    B: int
    N: int
    Hq: int
    Hkv: int
    D: int
    w1: int
    w2: int
    causal: bool = True
    dtype: str = "bf16"

    @property
    def group(self):
        return self.Hq // self.Hkv

    def band(self, w):
        """(left, right) reach of a window of width w (CONTRACT: causal w -> (w - 1, 0), centred w ->
        (w // 2, w - 1 - w // 2)), clipped to the sequence."""
        left, right = (w - 1, 0) if self.causal else (w // 2, w - 1 - w // 2)
        return min(left, self.N - 1), min(right, self.N - 1)

    @property
    def bands(self):
        """(L1, R1, L2, R2)."""
        return (*self.band(self.w1), *self.band(self.w2))

    def label(self):
        c = "" if self.causal else " centred"
        return f"B={self.B} N={self.N} Hq={self.Hq} Hkv={self.Hkv} D={self.D} w1={self.w1} w2={self.w2} {self.dtype}{c}"

    def kernel_report_target(self):
        """The sizes bench/verify/kernel_report.py specialises a compile for."""
        return dict(B=self.B, N=self.N, HQ=self.Hq, HKV=self.Hkv, W1=self.w1, W2=self.w2)


# The target shape; the shape bench/verify/gpu_check.sh measures on a lent GPU (its
# bench stage, N = 8192 to fit its time budget); one without GQA.
TARGET = Shape(B=2, N=16384, Hq=64, Hkv=1, D=128, w1=512, w2=32)
GPU_CHECK = Shape(B=2, N=8192, Hq=64, Hkv=1, D=128, w1=512, w2=32)
NO_GQA = Shape(B=2, N=8192, Hq=16, Hkv=16, D=128, w1=512, w2=32)
DEFAULT_SHAPES = (TARGET, GPU_CHECK, NO_GQA)
# The target shape at the other padded head dims, so every Triton D class and every CUDA head-dim
# instantiation gets a row (--all-head-dims; the committed results use it).
HEAD_DIM_SHAPES = tuple(dataclasses.replace(TARGET, D=d) for d in (64, 256))


def parse(text):
    """A Shape from "B=2,N=16384,Hq=64,Hkv=1,D=128,w1=512,w2=32[,centred][,fp16]" (missing keys take
    the target shape's values)."""
    fields = dataclasses.asdict(TARGET)
    for part in filter(None, re.split(r"[,\s]+", text)):
        if part in ("centred", "centered"):
            fields["causal"] = False
        elif part in DTYPES:
            fields["dtype"] = part
        else:
            key, sep, value = part.partition("=")
            if not sep or key not in fields or key in ("causal", "dtype"):
                raise ValueError(
                    f"--shape: cannot read {part!r} (keys: B, N, Hq, Hkv, D, w1, w2; flags: centred, fp16)"
                )
            fields[key] = int(value)
    shape = Shape(**fields)
    if shape.Hq % shape.Hkv:
        raise ValueError(f"--shape: Hq ({shape.Hq}) must be a multiple of Hkv ({shape.Hkv})")
    return shape
