"""Coverage you can see (issue 13): the interpreter counts the code paths each Triton kernel ran
(triton_kernels/coverage.py), and every path of every kernel must run at padded head dims 64, 128
and 256: second trips of every loop, zero-filled tails past a sequence's end and past D, the
last partial tile, head packing and its masked heads, GQA, both window modes, packed
sequences (one ending inside a tile, one at a tile edge, an empty one, tiles past the end),
determinant logits, and in decoding several splits (one empty), wrapped rings, tokens before
position 0 and the combine of the splits.

Six calls per head dim reach them all (two of them forward only: interior j-blocks) with the
interpreter's configs (BLOCK_M = BLOCK_J = 32, BLOCK_C = 16 in bwd_dkv1; decode BLOCK_M = 16,
BLOCK_J = 32); each is also checked against the float64 oracle, so the counted paths computed
the right thing. D = 48, 96, 192 pad to 64, 128, 256 (a D tail at each; multiples of 3 for the
determinant).
"""

import importlib.util

import pytest
import torch

from simplicial_attn.problem import Problem

from cases import BOUNDS, Case, bands, make_dout, make_inputs, make_packed, rel_err
from oracle import oracle_bwd, oracle_decode, oracle_fwd, oracle_varlen_bwd, oracle_varlen_fwd

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

if importlib.util.find_spec("triton") is not None:
    from simplicial_attn import triton_kernels as tk
    from simplicial_attn.triton_kernels import coverage

INTERPRETING = importlib.util.find_spec("triton") is not None and tk.is_interpreting()
HEAD_DIMS = {64: 48, 128: 96, 256: 192}
F32 = BOUNDS[torch.float32]
# Packed: a sequence of 33 (a full tile whose centred j range, 33, exceeds BLOCK_J, and a partial
# one), an empty one, one of exactly 32 (ends at a tile edge; its second tile lies past its end).
PACKING = (33, 0, 32)


def batched_cases(d):
    """(case, head_packing) pairs that take the batched trilinear paths at head dim d."""
    return [
        # causal; 3 heads of a kv head packed into 4-row head blocks (one masked) x 8 positions,
        # N = 13 ends in a partial tile; the first tile's k = i - u falls before position 0.
        (Case(1, 13, 3, 1, d, 3, 2), True),
        # w2 = 18 > BLOCK_C: bwd_dkv1 walks two k-blocks per query, the second a tail; unpacked
        # (head_packing=False: one head per column block), its 2 heads are two head blocks.
        (Case(1, 20, 2, 1, d, 1, 18), False),
    ]


def _check_batched(case, head_packing):
    inputs = make_inputs(case, torch.float32, "cpu")
    dout = make_dout(case, torch.float32, "cpu")
    scale = case.D**-0.5
    prob = Problem(*bands(case.w1, case.w2, case.causal), scale)
    out, lse, lse_lo = tk.fwd(*inputs, prob, head_packing=head_packing)
    got = (out, lse, *tk.bwd(dout, *inputs, out, lse, lse_lo, prob, head_packing=head_packing))
    ref = oracle_fwd(*inputs, case.w1, case.w2, case.causal, scale)
    ref += oracle_bwd(dout, *inputs, case.w1, case.w2, case.causal, scale)
    errs = [rel_err(x, r) for x, r in zip(got, ref, strict=True)]
    assert all(e <= F32 for e in errs), (case.id, errs)


def interior_cases(d):
    """(case, head_packing) pairs whose forward meets interior j-blocks (fwd.py: every pair of the
    block inside every row's windows), with an edge block one position past an interior one on
    each side: 16 positions of 2 heads, causal w1 = 63 (the tile at 48 has block [0, 31] one
    position short of interior, the tile at 64 block [34, 65] one past it); 32 positions,
    centred windows w1 = 70, w2 = 3: at u = +-1 the first tile's first row and the last tile's
    last row have k outside the sequence, while its block [29 + 32, 92] is otherwise interior."""
    return [(Case(1, 80, 2, 1, d, 63, 2), True), (Case(1, 96, 1, 1, d, 70, 3, False), False)]


def _check_fwd(case, head_packing):
    inputs = make_inputs(case, torch.float32, "cpu")
    prob = Problem(*bands(case.w1, case.w2, case.causal), case.D**-0.5)
    out, lse, _ = tk.fwd(*inputs, prob, head_packing=head_packing)
    ref = oracle_fwd(*inputs, case.w1, case.w2, case.causal, case.D**-0.5)
    errs = [rel_err(out, ref[0]), rel_err(lse, ref[1])]
    assert all(e <= F32 for e in errs), (case.id, errs)


def _check_packed_determinant(d):
    """Centred windows, determinant logits, PACKING (GQA and head packing: batched_cases)."""
    w1, w2, scale = 5, 3, d**-0.5
    (q, k1, k2, v1, v2), cu = make_packed(PACKING, 1, 1, d)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))
    prob = Problem(*bands(w1, w2, False), scale, "determinant", cu, max(PACKING))
    packed = [t[None] for t in (q, k1, k2, v1, v2)]
    out, lse, lse_lo = tk.fwd(*packed, prob)
    grads = tk.bwd(dout[None], *packed, out, lse, lse_lo, prob)
    ref = oracle_varlen_fwd(q, k1, k2, v1, v2, cu, w1, w2, False, scale, "determinant")
    ref += oracle_varlen_bwd(dout, q, k1, k2, v1, v2, cu, w1, w2, False, scale, "determinant")
    got = (out[0], lse[0], *(g[0] for g in grads))
    errs = [rel_err(x, r) for x, r in zip(got, ref, strict=True)]
    assert all(e <= F32 for e in errs), ("packed determinant", d, errs)


def _check_decode(d):
    """Two sequences, 2 new tokens each, 3 query heads on 1 kv head (6 of 16 rows), determinant
    logits; rings of w + Nq - 1 slots that sequence 1 (80 tokens in) has wrapped; two splits of
    the w1 = 70 window, of which sequence 0's (at positions 0 and 1) first is empty."""
    B, nq, hq, w1, w2 = 2, 2, 3, 70, 4
    lengths = torch.tensor([0, 80], dtype=torch.int32)
    g = torch.Generator().manual_seed(6)
    full = [torch.randn(B, 82, h, d, generator=g) for h in (hq, 1, 1, 1, 1)]
    caches = []
    for x, c in zip(full[1:], (w1 + nq - 1, w2 + nq - 1) * 2, strict=True):
        ring = torch.randn(B, c, 1, d, generator=g)  # slots never written hold garbage
        for b, length in enumerate(lengths.tolist()):
            for p in range(max(0, length + nq - c), length + nq):
                ring[b, p % c] = x[b, p]
        caches.append(ring)
    q = torch.stack([full[0][b, length : length + nq] for b, length in enumerate(lengths.tolist())])
    prob = Problem(*bands(w1, w2, True), d**-0.5, "determinant", cache_seqlens=lengths)
    out, lse = tk.decode(q, caches[0], caches[1], caches[2], caches[3], prob, num_splits=2)
    ref_out, ref_lse = oracle_decode(*full, lengths, nq, w1, w2, d**-0.5, "determinant")
    errs = [rel_err(out, ref_out), rel_err(lse, ref_lse)]
    assert all(e <= F32 for e in errs), ("decode", d, errs)


@pytest.mark.skipif(not INTERPRETING, reason="path counters exist only in the interpreter (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("block_d", list(HEAD_DIMS), ids=lambda b: f"BLOCK_D{b}")
def test_every_path_of_every_kernel_runs(block_d, poison):
    d = HEAD_DIMS[block_d]
    with coverage.recording() as table:
        for case, head_packing in batched_cases(d):
            _check_batched(case, head_packing)
        for case, head_packing in interior_cases(d):
            _check_fwd(case, head_packing)
        _check_packed_determinant(d)
        _check_decode(d)
    never = {}
    for kernel in coverage.kernels():
        counts = table.get((kernel, block_d), {})
        missing = [name for name in coverage.names(kernel) if counts.get(name, 0) == 0]
        if missing:
            never[kernel] = missing
    assert not never, f"paths never run at BLOCK_D={block_d}: {never} (counts: {table})"


@pytest.mark.skipif(not INTERPRETING, reason="path counters exist only in the interpreter (TRITON_INTERPRET=1)")
def test_counters_see_what_a_case_does_not_reach(poison):
    """The counters are not vacuous: one whole query tile of one head, causal, D a power of
    two, the j window inside one block: no second j trip, no tail, no packing."""
    with coverage.recording() as table:
        _check_batched(Case(1, 32, 1, 1, 16, 2, 2), False)
    fwd = table[("fwd", 16)]
    assert fwd["causal"] > 0 and fwd["u_repeat"] > 0 and fwd["k_outside"] > 0
    assert fwd["j_edge"] > 0
    never = ("d_tail", "gqa", "centred", "last_tile", "head_packed", "head_tail", "j_repeat", "j_past_n", "packed")
    never += ("j_interior",)
    for name in never + ("past_end", "empty_seq", "determinant"):
        assert fwd[name] == 0, (name, fwd)
    assert coverage.buffer("fwd", torch.empty(0)) is None  # outside recording(): nothing counted
