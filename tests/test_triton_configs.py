"""Every shipped Triton config executed (issue 13): each config that configs.py lists for a GPU
architecture runs through the interpreter as a single-config launch, against the float64 oracle
(out, lse and all five gradients).

The interpreter runs no warps or pipeline stages, so configs that differ only in those are one
run. A run launches every kernel with one forced config (`config=` of fwd / bwd) at a head dim of
the config's D class and an operand dtype of its table, on a case big enough that each BLOCK
size spans several tiles and every kernel meets a partial last tile. The head-packed extras run
head-packed at the group size that selects them on a GPU.
"""

import dataclasses
import importlib.util
import itertools

import pytest
import torch

from simplicial_attn._windows import kernel_window
from simplicial_attn.problem import Problem

from cases import BOUNDS, Case, make_dout, make_inputs, rel_err
from oracle import oracle_bwd, oracle_fwd

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

if importlib.util.find_spec("triton") is not None:
    from simplicial_attn import triton_kernels as tk
    from simplicial_attn.triton_kernels import configs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OUTPUTS = ("out", "lse", "dq", "dk1", "dk2", "dv1", "dv2")
FWD_KERNELS = ("fwd",)
BWD_KERNELS = ("bwd_dq", "bwd_dkv1", "bwd_dkv2")

# One case per bucket (operand table, D class, head-packed extra): N spans several tiles of
# the bucket's largest BLOCK sizes and ends in a partial one; w1 gives several j-blocks.
BUCKET_CASES = {
    ("16-bit", 128, False): Case(1, 130, 1, 1, 96, 8, 3),
    ("16-bit", 128, True): Case(1, 7, 64, 1, 96, 3, 2),
    ("16-bit", 256, False): Case(1, 45, 1, 1, 192, 10, 3),
    ("fp32", 128, False): Case(1, 50, 1, 1, 96, 10, 3),
    ("fp32", 256, False): Case(1, 40, 1, 1, 192, 10, 3),
}
BUCKET_DTYPES = {"16-bit": (torch.bfloat16, torch.float16), "fp32": (torch.float32, torch.float32)}


@dataclasses.dataclass(frozen=True)
class Run:
    bucket: tuple
    index: int
    config: dict  # kernel name -> triton.Config

    @property
    def id(self):
        table, dc, extra = self.bucket
        tiles = "-".join(
            f"{k}:" + ",".join(f"{n[6:]}{v}" for n, v in sorted(c.kwargs.items())) for k, c in self.config.items()
        )
        return f"{table}-D{dc}{'-packed' if extra else ''}-{self.index}-{tiles}"


def _tiles(cfg):
    return tuple(sorted(cfg.kwargs.items()))


def shipped():
    """{bucket: {kernel: [configs, distinct by tile sizes]}} of every arch's lists; a bucket is
    (operand table, D class, head-packed extra). Base configs serve both tilings and are run
    with sequence tiles; the extras (only in the packed lists) run head-packed."""
    buckets = {}
    for arch, dc, fp32, kernel in itertools.product(configs.ARCHS, configs.D_CLASSES, (False, True), configs.KERNELS):
        base = configs.configs(kernel, arch, dc, fp32, packed=False)
        extras = [c for c in configs.configs(kernel, arch, dc, fp32, packed=True) if c not in base]
        for extra, cfgs in ((False, base), (True, extras)):
            lists = buckets.setdefault(("fp32" if fp32 else "16-bit", dc, extra), {})
            seen = lists.setdefault(kernel, [])
            for cfg in cfgs:
                if _tiles(cfg) not in {_tiles(c) for c in seen}:
                    seen.append(cfg)
    return {b: {k: v for k, v in lists.items() if v} for b, lists in buckets.items() if any(lists.values())}


def runs():
    """As few runs as cover every shipped config: run r launches each kernel with its r-th
    config of the bucket (a kernel with fewer takes its first; a packed-extra bucket launches
    the kernels without an extra with their interpreter config)."""
    out = []
    for bucket, lists in shipped().items():
        for r in range(max(len(v) for v in lists.values())):
            out.append(Run(bucket, r, {k: v[r] if r < len(v) else v[0] for k, v in lists.items()}))
    return out


RUNS = runs() if importlib.util.find_spec("triton") is not None else []


def test_every_shipped_config_is_in_a_run():
    """The runs are built from configs.py itself, so a new config joins them; this pins that
    each listed config (by kernel, tile sizes, table, D class) is launched by some run."""
    launched = {(r.bucket, k, _tiles(c)) for r in RUNS for k, c in r.config.items()}
    for bucket, lists in shipped().items():
        for kernel, cfgs in lists.items():
            for cfg in cfgs:
                assert (bucket, kernel, _tiles(cfg)) in launched, (bucket, kernel, cfg)
    assert set(BUCKET_CASES) == {r.bucket for r in RUNS}


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.id)
def test_shipped_config_matches_the_oracle(run, poison):
    table, dc, extra = run.bucket
    case = BUCKET_CASES[run.bucket]
    dtype = BUCKET_DTYPES[table][dc == 256]
    assert dc // 2 < case.D <= dc
    inputs = make_inputs(case, dtype, DEVICE)
    dout = make_dout(case, dtype, DEVICE)
    w1, w2 = kernel_window(case.w1, case.N, case.causal), kernel_window(case.w2, case.N, case.causal)
    scale = case.D**-0.5
    prob = Problem(w1, w2, case.causal, scale)
    fwd_cfg = {k: c for k, c in run.config.items() if k in FWD_KERNELS}
    bwd_cfg = {k: c for k, c in run.config.items() if k in BWD_KERNELS}
    out, lse, lse_lo = tk.fwd(*inputs, prob, head_packing=extra, config=fwd_cfg)
    got = (out, lse)
    ref = oracle_fwd(*inputs, case.w1, case.w2, case.causal, scale)
    if bwd_cfg:  # a bucket of forward configs only (the head-packed extras) needs no backward
        got += tk.bwd(dout, *inputs, out, lse, lse_lo, prob, head_packing=extra, config=bwd_cfg)
        ref += oracle_bwd(dout, *inputs, case.w1, case.w2, case.causal, scale)
    errs = {n: rel_err(x, r) for n, x, r in zip(OUTPUTS, got, ref, strict=False)}
    assert all(v <= BOUNDS[dtype] for v in errs.values()), (case.id, dtype, errs)


def test_a_forced_config_naming_an_unknown_kernel_is_refused():
    inputs = make_inputs(Case(1, 3, 1, 1, 16, 2, 2), torch.float32, DEVICE)
    cfg = configs.configs("fwd", configs.INTERP, 16)[0]
    prob = Problem(2, 2, True, 0.25)
    with pytest.raises(ValueError, match=r"config names kernels \['bwd_dq'\]; this launcher runs fwd"):
        tk.fwd(*inputs, prob, config={"bwd_dq": cfg})
    with pytest.raises(TypeError, match="config values must be triton.Config"):
        tk.fwd(*inputs, prob, config={"fwd": {"BLOCK_M": 16}})
