"""Every shipped Triton config executed (issue 13): each config that configs.py lists for a GPU
architecture runs through the interpreter as a single-config launch, against the float64 oracle
(out, lse and all five gradients; out and lse for decoding).

The interpreter runs no warps or pipeline stages, so configs that differ only in those are one
run. A run launches every kernel with one forced config (`config=` of fwd / bwd / decode) at a
head dim of the config's D class and an operand dtype of its table, on a case big enough that
each BLOCK size spans several tiles and every kernel meets a partial last tile. Buckets: the
trilinear tables, the head-packed extras (run head-packed at the group size that selects them
on a GPU), the determinant tables (determinant logits on a packed layout) and the decode
configs.
"""

import collections
import dataclasses
import importlib.util
import itertools

import pytest
import torch

from simplicial_attn.problem import Problem

from cases import BOUNDS, Case, bands, make_dout, make_inputs, make_packed, rel_err
from oracle import oracle_bwd, oracle_decode, oracle_fwd, oracle_varlen_bwd, oracle_varlen_fwd

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

if importlib.util.find_spec("triton") is not None:
    from simplicial_attn import triton_kernels as tk
    from simplicial_attn.triton_kernels import configs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FWD_KERNELS = ("fwd",)
BWD_KERNELS = ("bwd_dqkv2", "bwd_dkv1")
KINDS = ("trilinear", "packed-extra", "determinant", "decode")

# One case per bucket (operand table, D class, kind): N spans several tiles of the bucket's
# largest BLOCK sizes and ends in a partial one; w1 gives several j-blocks. The determinant
# tables' tiles are smaller; their case is a packing of two sequences (the determinant path
# is also the packed one in bench/verify/kernel_report.py). Decode: lengths and windows give several
# j-blocks of BLOCK_J = 64 and a wrapped ring.
Packed = collections.namedtuple("Packed", "lengths Hq Hkv D w1 w2 causal")
Decoding = collections.namedtuple("Decoding", "lengths Hq Hkv D w1 w2")  # 2 new tokens, rings of w + 1 slots
BUCKET_CASES = {
    ("16-bit", 128, "trilinear"): Case(1, 130, 1, 1, 96, 8, 3),
    ("16-bit", 128, "packed-extra"): Case(1, 7, 64, 1, 96, 3, 2),
    ("16-bit", 256, "trilinear"): Case(1, 45, 1, 1, 192, 10, 3),
    # bwd_dqkv2's head-packed 16 x 64 tile at D class 256 (not in the sequence list): 2 head blocks.
    ("16-bit", 256, "packed-extra"): Case(1, 5, 32, 1, 192, 3, 2),
    ("fp32", 128, "trilinear"): Case(1, 50, 1, 1, 96, 10, 3),
    # bwd_dqkv2's head-packed float32 tiles (fewer warps than its sequence tiles): 2 head blocks.
    ("fp32", 128, "packed-extra"): Case(1, 7, 32, 1, 96, 3, 2),
    ("fp32", 256, "packed-extra"): Case(1, 5, 32, 1, 192, 3, 2),
    ("fp32", 256, "trilinear"): Case(1, 40, 1, 1, 192, 10, 3),
    ("16-bit", 128, "determinant"): Packed((70, 9), 1, 1, 96, 8, 3, True),
    ("16-bit", 256, "determinant"): Packed((33, 5), 1, 1, 192, 6, 2, True),
    ("fp32", 128, "determinant"): Packed((40, 5), 1, 1, 96, 6, 2, True),
    ("fp32", 256, "determinant"): Packed((33, 5), 1, 1, 192, 6, 2, True),
    ("16-bit", 128, "decode"): Decoding((3, 150), 2, 1, 96, 130, 3),
    ("16-bit", 256, "decode"): Decoding((3, 150), 2, 1, 192, 130, 3),
    ("fp32", 128, "decode"): Decoding((3, 70), 2, 1, 96, 40, 3),
    ("fp32", 256, "decode"): Decoding((3, 70), 2, 1, 192, 40, 3),
}
BUCKET_DTYPES = {"16-bit": torch.float16, "fp32": torch.float32}  # float16: the interpreter rounds bfloat16 in Python


@dataclasses.dataclass(frozen=True)
class Run:
    bucket: tuple
    index: int
    config: dict  # kernel name -> triton.Config

    @property
    def id(self):
        table, dc, kind = self.bucket
        tiles = "-".join(
            f"{k}:" + ",".join(f"{n[6:]}{v}" for n, v in sorted(c.kwargs.items())) for k, c in self.config.items()
        )
        return f"{table}-D{dc}-{kind}-{self.index}-{tiles}"


def _tiles(cfg):
    return tuple(sorted(cfg.kwargs.items()))


def shipped():
    """{bucket: {kernel: [configs, distinct by tile sizes]}} of every arch's lists; a bucket is
    (operand table, D class, kind). Trilinear base configs serve both tilings and run with
    sequence tiles; the extras (only in the head-packed lists) run head-packed."""
    buckets = {}

    def add(bucket, kernel, cfgs):
        seen = buckets.setdefault(bucket, {}).setdefault(kernel, [])
        for cfg in cfgs:
            if _tiles(cfg) not in {_tiles(c) for c in seen}:
                seen.append(cfg)

    for arch, dc, fp32 in itertools.product(configs.ARCHS, configs.D_CLASSES, (False, True)):
        table = "fp32" if fp32 else "16-bit"
        for kernel in configs.KERNELS:
            base = configs.configs(kernel, arch, dc, fp32, packed=False)
            add((table, dc, "trilinear"), kernel, base)
            extras = [c for c in configs.configs(kernel, arch, dc, fp32, packed=True) if c not in base]
            add((table, dc, "packed-extra"), kernel, extras)
            add((table, dc, "determinant"), kernel, configs.configs(kernel, arch, dc, fp32, det=True))
        add((table, dc, "decode"), "decode", [configs.decode_config(arch, dc, fp32)])
    return {b: {k: v for k, v in lists.items() if v} for b, lists in buckets.items() if any(lists.values())}


def runs():
    """As few runs as cover every shipped config: run r launches each kernel with its r-th
    config of the bucket; a kernel with fewer configs is left out of the run (the backward then
    not run at all; a forward left out runs with the interpreter's config, as the kernels
    without an extra do in a packed-extra bucket)."""
    out = []
    for bucket, lists in shipped().items():
        for r in range(max(len(v) for v in lists.values())):
            out.append(Run(bucket, r, {k: v[r] for k, v in lists.items() if r < len(v)}))
    return out


RUNS = runs() if importlib.util.find_spec("triton") is not None else []


def test_every_shipped_config_is_in_a_run():
    """The runs are built from configs.py itself, so a new config joins them; this pins that
    each listed config (by kernel, tile sizes, table, D class, kind) is launched by some run."""
    launched = {(r.bucket, k, _tiles(c)) for r in RUNS for k, c in r.config.items()}
    for bucket, lists in shipped().items():
        for kernel, cfgs in lists.items():
            for cfg in cfgs:
                assert (bucket, kernel, _tiles(cfg)) in launched, (bucket, kernel, cfg)
    assert set(BUCKET_CASES) == {r.bucket for r in RUNS}


def _batched(run, case, dtype, scale):
    inputs = make_inputs(case, dtype, DEVICE)
    dout = make_dout(case, dtype, DEVICE)
    prob = Problem(*bands(case.w1, case.w2, case.causal, case.N), scale)
    extra = run.bucket[2] == "packed-extra"
    fwd_cfg = {k: c for k, c in run.config.items() if k in FWD_KERNELS}
    bwd_cfg = {k: c for k, c in run.config.items() if k in BWD_KERNELS}
    out, lse, lse_lo = tk.fwd(*inputs, prob, head_packing=extra, config=fwd_cfg)
    got, ref = (out, lse), oracle_fwd(*inputs, case.w1, case.w2, case.causal, scale)
    if bwd_cfg:  # a run of forward configs only (the head-packed extras, a longer fwd list) needs no backward
        got += tk.bwd(dout, *inputs, out, lse, lse_lo, prob, head_packing=extra, config=bwd_cfg)
        ref += oracle_bwd(dout, *inputs, case.w1, case.w2, case.causal, scale)
    return got, ref


def _packed_determinant(run, case, dtype, scale):
    (q, k1, k2, v1, v2), cu = make_packed(case.lengths, case.Hq, case.Hkv, case.D, dtype, DEVICE)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    prob = Problem(*bands(case.w1, case.w2, case.causal), scale, "determinant", cu, max(case.lengths))
    packed = [t[None] for t in (q, k1, k2, v1, v2)]
    fwd_cfg = {k: c for k, c in run.config.items() if k in FWD_KERNELS}
    bwd_cfg = {k: c for k, c in run.config.items() if k in BWD_KERNELS}
    out, lse, lse_lo = tk.fwd(*packed, prob, config=fwd_cfg)
    ref = oracle_varlen_fwd(q, k1, k2, v1, v2, cu, case.w1, case.w2, case.causal, scale, "determinant")
    if not bwd_cfg:  # a run of forward configs only
        return (out[0], lse[0]), ref
    grads = tk.bwd(dout[None], *packed, out, lse, lse_lo, prob, config=bwd_cfg)
    ref += oracle_varlen_bwd(dout, q, k1, k2, v1, v2, cu, case.w1, case.w2, case.causal, scale, "determinant")
    return (out[0], lse[0], *(g[0] for g in grads)), ref


def _decode(run, case, dtype, scale):
    nq, lengths, B = 2, torch.tensor(case.lengths, dtype=torch.int32), len(case.lengths)
    g = torch.Generator().manual_seed(2)
    full = [torch.randn(B, max(case.lengths) + nq, h, case.D, generator=g) for h in (case.Hq,) + (case.Hkv,) * 4]
    rings = []
    for x, c in zip(full[1:], (case.w1 + nq - 1, case.w2 + nq - 1) * 2, strict=True):
        ring = torch.randn(B, c, case.Hkv, case.D, generator=g)
        for b, length in enumerate(case.lengths):
            positions = list(range(max(0, length + nq - c), length + nq))
            ring[b, [p % c for p in positions]] = x[b, positions]
        rings.append(ring.to(DEVICE, dtype))
    q = torch.stack([full[0][b, n : n + nq] for b, n in enumerate(case.lengths)]).to(DEVICE, dtype)
    full = [t.to(dtype) for t in full]  # the oracle sees the values the kernel sees
    prob = Problem(*bands(case.w1, case.w2, True), scale, cache_seqlens=lengths.to(DEVICE))
    out, lse = tk.decode(q, *rings, prob, config=run.config)
    return (out, lse), oracle_decode(*full, lengths, nq, case.w1, case.w2, scale)


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.id)
def test_shipped_config_matches_the_oracle(run, poison):
    table, dc, kind = run.bucket
    case = BUCKET_CASES[run.bucket]
    dtype = BUCKET_DTYPES[table]
    assert dc // 2 < case.D <= dc
    launch = {"determinant": _packed_determinant, "decode": _decode}.get(kind, _batched)
    got, ref = launch(run, case, dtype, case.D**-0.5)
    errs = [rel_err(x, r) for x, r in zip(got, ref, strict=True)]
    assert all(v <= BOUNDS[dtype] for v in errs), (run.bucket, case, dtype, errs)


def test_a_forced_config_naming_an_unknown_kernel_is_refused():
    inputs = make_inputs(Case(1, 3, 1, 1, 16, 2, 2), torch.float32, DEVICE)
    cfg = configs.configs("fwd", configs.INTERP, 16)[0]
    prob = Problem(*bands(2, 2, True), 0.25)
    with pytest.raises(ValueError, match=r"config names kernels \['bwd_dqkv2'\]; this launcher runs fwd"):
        tk.fwd(*inputs, prob, config={"bwd_dqkv2": cfg})
    with pytest.raises(TypeError, match="config values must be triton.Config"):
        tk.fwd(*inputs, prob, config={"fwd": {"BLOCK_M": 16}})
