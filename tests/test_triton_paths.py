"""Coverage you can see (issue 13): the interpreter counts the code paths each Triton kernel ran
(triton_kernels/paths.py), and every path of every fused kernel must run at padded head dims
64, 128 and 256: second trips of every loop, zero-filled tails past N and past D, the last
partial tile, head packing and its masked heads, GQA, both window modes.

Three cases per head dim reach them all with the interpreter's config (BLOCK_M = BLOCK_J = 32,
BLOCK_K = 16 in bwd_dkv1); each is also checked against the float64 oracle, so the counted
paths computed the right thing. D = 48, 96, 192 pad to 64, 128, 256 (a D tail at each).
"""

import importlib.util

import pytest
import torch

from simplicial_attn.problem import Problem

from cases import BOUNDS, Case, make_dout, make_inputs, rel_err
from oracle import oracle_bwd, oracle_fwd

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

if importlib.util.find_spec("triton") is not None:
    from simplicial_attn import triton_kernels as tk
    from simplicial_attn.triton_kernels import paths

INTERPRETING = importlib.util.find_spec("triton") is not None and tk.is_interpreting()
HEAD_DIMS = {64: 48, 128: 96, 256: 192}


def path_cases(d):
    """(case, head_packing) pairs that together take every path at head dim d."""
    return [
        # causal; 3 heads of a kv head packed into 4-row head blocks (one masked) x 8 positions,
        # N = 13 ends in a partial tile; the first tile's k = i - u falls before position 0.
        (Case(1, 13, 3, 1, d, 3, 2), True),
        # centred; GQA over sequence tiles; w1 = 5 makes each tile's j range 36 > BLOCK_J.
        (Case(1, 40, 2, 1, d, 5, 3, causal=False), False),
        # w2 = 18 > BLOCK_K: bwd_dkv1 walks two k-blocks per query, the second a tail.
        (Case(1, 20, 1, 1, d, 1, 18), False),
    ]


def _run_and_check(case, head_packing):
    inputs = make_inputs(case, torch.float32, "cpu")
    dout = make_dout(case, torch.float32, "cpu")
    scale = case.D**-0.5
    prob = Problem(case.w1, case.w2, case.causal, scale)
    out, lse, lse_lo = tk.fwd(*inputs, prob, head_packing=head_packing)
    got = (out, lse, *tk.bwd(dout, *inputs, out, lse, lse_lo, prob, head_packing=head_packing))
    ref = oracle_fwd(*inputs, case.w1, case.w2, case.causal, scale)
    ref += oracle_bwd(dout, *inputs, case.w1, case.w2, case.causal, scale)
    errs = [rel_err(x, r) for x, r in zip(got, ref, strict=True)]
    assert all(e <= BOUNDS[torch.float32] for e in errs), (case.id, errs)


@pytest.mark.skipif(not INTERPRETING, reason="path counters exist only in the interpreter (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("block_d", list(HEAD_DIMS), ids=lambda b: f"BLOCK_D{b}")
def test_every_path_of_every_kernel_runs(block_d, poison):
    with paths.recording() as table:
        for case, head_packing in path_cases(HEAD_DIMS[block_d]):
            _run_and_check(case, head_packing)
    never = {}
    for kernel in paths.kernels():
        counts = table.get((kernel, block_d), {})
        missing = [name for name in paths.names(kernel) if counts.get(name, 0) == 0]
        if missing:
            never[kernel] = missing
    assert not never, f"paths never run at BLOCK_D={block_d}: {never} (counts: {table})"


@pytest.mark.skipif(not INTERPRETING, reason="path counters exist only in the interpreter (TRITON_INTERPRET=1)")
def test_counters_see_what_a_case_does_not_reach(poison):
    """The counters are not vacuous: one whole query tile of one head, causal, D a power of
    two, the j window inside one block: no second j trip, no tail, no packing."""
    with paths.recording() as table:
        _run_and_check(Case(1, 32, 1, 1, 16, 2, 2), False)
    fwd = table[("fwd", 16)]
    assert fwd["causal"] > 0 and fwd["u_repeat"] > 0 and fwd["k_outside"] > 0
    for name in ("d_tail", "gqa", "centred", "last_tile", "head_packed", "head_tail", "j_repeat", "j_past_n"):
        assert fwd[name] == 0, (name, fwd)
    assert paths.buffer("fwd", torch.empty(0)) is None  # outside recording(): nothing counted
