"""Coverage you can see (issue 13): the interpreter counts the code paths each Triton kernel ran
(triton_kernels/coverage.py), and every path of every kernel must run at padded head dims 64, 128
and 256: second trips of every loop, zero-filled tails past a sequence's end and past D, the
last partial tile, head packing and its masked heads, GQA, both window modes, packed
sequences (one ending inside a tile, one at a tile edge, an empty one, tiles past the end),
determinant logits, the fused dq / dk2 / dv2 kernel's spans of several tiles, scratch layers
above the first and head sums (and the reduce over several layers), and in decoding several
splits (one empty), wrapped rings, tokens before position 0 and the combine of the splits.

Nine calls per head dim reach them all (five of them forward only: interior j-blocks, k1/v1
through tensor descriptors and pointer loads, and with a forced config narrow j-blocks) with the
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
    import triton

    from simplicial_attn import triton_kernels as tk
    from simplicial_attn.triton_kernels import coverage

INTERPRETING = importlib.util.find_spec("triton") is not None and tk.is_interpreting()
HEAD_DIMS = {64: 48, 128: 96, 256: 192}
F32 = BOUNDS[torch.float32]
# Packed: a sequence of 33 (a full tile whose centred j range, 33, exceeds BLOCK_J, and a partial
# one), an empty one, one of exactly 32 (ends at a tile edge; its second tile lies past its end).
PACKING = (33, 0, 32)


def batched_cases(d):
    """(case, head_packing, span) triples that take the batched trilinear paths at head dim d."""
    return [
        # causal; 3 heads of a kv head packed into 4-row head blocks (one masked) x 8 positions,
        # N = 13 ends in a partial tile; the first tile's k = i - u falls before position 0.
        # bwd_dqkv2 sums 3 heads' partials, over a span of two tiles (the second partial); k1 / v1
        # are views of buffers one row longer, that row NaN: bwd_dqkv2's last tile reads its j-block
        # through descriptors (kv_tma) past N, where the box must zero-fill.
        (Case(1, 13, 3, 1, d, 3, 2), True, 16, "row"),
        # w2 = 18 > BLOCK_C: bwd_dkv1 walks two k-blocks per query, the second a tail; unpacked
        # (head_packing=False: one head per column block), its 2 heads are two head blocks.
        # bwd_dqkv2's default span, 32 >= w2 - 1: one program, one scratch layer. D = d - 1, not a
        # multiple of 4: rows of D floats are not 16-byte aligned, so every descriptor falls back to
        # pointers, bwd_dqkv2's scratch partials too (part_pointers).
        (Case(1, 20, 2, 1, d - 1, 1, 18), False, None),
        # 32 heads of a kv head fill a 32-row tile: bwd_dqkv2's one-position head sum (one_position).
        (Case(1, 3, 32, 1, d, 2, 2), True, None),
        # 16 heads: two positions a 32-row tile, bwd_dqkv2's two-position head sum (two_positions);
        # dout, k1 and v1 one channel apart past D (a row stride of D + 1 floats, not 16-byte
        # aligned): bwd_dqkv2's q / dout / k2 / v2 rows through pointer loads (q_pointers), its
        # k1 / v1 j-blocks too (kv_pointers), the other cases' through descriptors.
        (Case(1, 5, 16, 1, d, 2, 2), True, None, "channel"),
    ]


def nan_padded(t, how):
    """t as a view of a NaN-filled buffer one row longer ("row", same strides) or one channel wider
    per row ("channel": a row stride of D + 1 elements, not 16-byte aligned for most D)."""
    if how == "row":
        return torch.nn.functional.pad(t, (0, 0, 0, 0, 0, 1), value=float("nan"))[:, :-1]
    return torch.nn.functional.pad(t, (0, 1), value=float("nan"))[..., :-1]


def _check_batched(case, head_packing, span=None, pad=None):
    q, k1, k2, v1, v2 = make_inputs(case, torch.float32, "cpu")
    dout = make_dout(case, torch.float32, "cpu")
    if pad:  # k1, v1 (and with "channel" dout) as views of NaN-padded buffers
        k1, v1 = nan_padded(k1, pad), nan_padded(v1, pad)
        dout = nan_padded(dout, pad) if pad == "channel" else dout
    inputs = (q, k1, k2, v1, v2)
    scale = case.D**-0.5
    prob = Problem(*bands(case.w1, case.w2, case.causal), scale)
    out, lse, lse_lo = tk.fwd(*inputs, prob, head_packing=head_packing)
    got = (out, lse, *tk.bwd(dout, *inputs, out, lse, lse_lo, prob, head_packing=head_packing, span=span))
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
    last row have k outside the sequence, while its block [29 + 32, 92] is otherwise interior.
    The first takes tensor descriptors (fwd.py: kv_tma) from k1/v1 views of buffers one row longer,
    that row NaN: the last tile's last block reaches past N, where a box must zero-fill. The second
    reads k1/v1 rows one channel apart past D (a row stride of D + 1 floats, not 16-byte aligned):
    pointer loads (kv_pointers)."""
    return [(Case(1, 80, 2, 1, d, 63, 2), True, "row"), (Case(1, 96, 1, 1, d, 70, 3, False), False, "channel")]


def narrow_cases(d):
    """(case, head_packing, config) of the forward with narrow blocks (fwd.py: BLOCK_T = 16 rows
    past the last whole BLOCK_J = 32 block), split and unsplit: 16 positions of 2 heads, causal
    w1 = 63 (a tile's 78 j rows: two whole blocks and a partial narrow one), and w1 = 5 (20 rows:
    no whole block; the edge loop's first block would reach past the narrow rows' start)."""
    split, unsplit = (
        {"fwd": triton.Config(dict(BLOCK_M=32, BLOCK_J=32, BLOCK_T=16, SPLIT_J=s), num_warps=4)} for s in (True, False)
    )
    return [(Case(1, 80, 2, 1, d, 63, 2), True, split), (Case(1, 40, 2, 1, d, 5, 2), True, split),
            (Case(1, 80, 2, 1, d, 63, 2), True, unsplit)]  # fmt: skip


def _check_fwd(case, head_packing, nan_pad=None, config=None):
    inputs = make_inputs(case, torch.float32, "cpu")
    if nan_pad:  # k1, v1 as views of NaN-padded buffers: one more row, or one more channel per row
        q, k1, k2, v1, v2 = inputs
        k1, v1 = nan_padded(k1, nan_pad), nan_padded(v1, nan_pad)
        assert (k1.stride(-2) * 4 % 16 != 0) == (nan_pad == "channel")
        inputs = (q, k1, k2, v1, v2)
    prob = Problem(*bands(case.w1, case.w2, case.causal), case.D**-0.5)
    out, lse, _ = tk.fwd(*inputs, prob, head_packing=head_packing, config=config)
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
        for case, head_packing, span, *pad in batched_cases(d):
            _check_batched(case, head_packing, span, *pad)
        for case, head_packing, nan_pad in interior_cases(d):
            _check_fwd(case, head_packing, nan_pad)
        for case, head_packing, config in narrow_cases(d):
            _check_fwd(case, head_packing, config=config)
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
    never += ("j_interior", "j_narrow", "fold")
    for name in never + ("past_end", "empty_seq", "determinant"):
        assert fwd[name] == 0, (name, fwd)
    # bwd_dqkv2: one program of one 32-position tile of one head, one scratch layer.
    fused, reduce = table[("bwd_dqkv2", 16)], table[("bwd_reduce2", 16)]
    assert fused["rows_clipped"] > 0 and fused["u_repeat"] > 0
    for name in ("span_repeat", "layer_up", "head_sum", "head_packed", "j_repeat"):
        assert fused[name] == 0, (name, fused)
    assert reduce["layer_repeat"] == 0, reduce
    assert coverage.buffer("fwd", torch.empty(0)) is None  # outside recording(): nothing counted


def test_dqkv2_scratch_layers_never_overlap_and_stay_bounded():
    """bwd_dqkv2's scratch (triton_kernels/launch.py): programs of one layer touch disjoint k2
    rows, and the scratch is the stated 8 * layers * T * Hkv * n_hblk * D bytes, 2 layers at the
    target shape on an H100 (132 SMs): B = 2, N = 16384, 64 heads packed on Hkv = 1, D = 128,
    w2 = 32 causal: 64 MiB."""
    from simplicial_attn.triton_kernels import launch

    for sms in (None, 8, 132):
        for max_len in (1, 7, 97, 4096):
            for positions in (1, 2, 8, 32):
                for band in (0, 1, 4, 31, 200, 2 * max_len):
                    for per_span in (1, 3, 64):
                        span = launch.dqkv2_span(sms, max_len, positions, band, per_span)
                        layers = launch.dqkv2_layers(max_len, span, band)
                        spans = -(-max_len // span)
                        assert span % positions == 0 and 1 <= layers <= spans
                        # program c touches k in [c*S - L2, c*S + S - 1 + R2]: a band + S wide range
                        assert layers == spans or (layers - 1) * span >= band, (sms, max_len, positions, band)
                        if (sms is None or spans * per_span >= 2 * sms) and span >= band:
                            assert layers <= 2
    span = launch.dqkv2_span(132, 16384, 1, 31, 2)
    layers = launch.dqkv2_layers(16384, span, 31)
    shape = launch.dqkv2_scratch_shape(layers, 2 * 16384, 1, 1, 128)
    assert (span, layers) == (31, 2)
    assert 4 * torch.Size(shape).numel() == 8 * 2 * (2 * 16384) * 128 == 64 * 2**20


def test_dq_slots_are_the_stated_size_at_the_target():
    """bwd_dqkv2's dq slots (DQ_SCRATCH, triton_kernels/launch.py dq_slot_rows): one [BLOCK_M, BLOCK_D]
    float32 slot per program, only where a config of the list keeps dq there; and its operand slots
    (AB_SLOT, ab_slot_rows): a and bo, [BLOCK_M, BLOCK_D] each in the inputs' dtype. Target shape on
    an H100 (B = 2, N = 16384, 64 heads packed on Hkv = 1, D = 128, w2 = 32): sm_90's 128-row tiles
    of two positions, spans of 32 positions, 2 x 512 programs of 64 KiB each: 64 MiB of dq slots
    and 64 MiB of operand slots (a float32 dq would take 1 GiB)."""
    from simplicial_attn.triton_kernels import configs, launch

    assert launch.dq_slot_rows("bwd_dqkv2", "sm90", 128, False, True) == 128
    assert launch.dq_slot_rows("bwd_dqkv2", "sm80", 128, False, True) == 0  # dq in registers there
    assert launch.dq_slot_rows("bwd_dqkv2", configs.INTERP, 128, False, True) == 32  # the tests run the slots
    assert launch.ab_slot_rows("sm90", 128, False, True) == 2 * 128
    assert launch.ab_slot_rows("sm80", 128, False, True) == 0
    assert launch.ab_slot_rows(configs.INTERP, 128, False, True) == 2 * 32
    _, _, positions = launch.dqkv2_tiling(64, None, "sm90", 128, False)
    span = launch.dqkv2_span(132, 16384, positions, 31, 2)
    programs = -(-16384 // span) * 1 * 2
    assert (positions, span, programs) == (2, 32, 1024)
    assert programs * 128 * 128 * 4 == programs * 2 * 128 * 128 * 2 == 64 * 2**20


def test_sequence_tile_slots_stay_within_a_float32_dq():
    """Without head packing (Hq = Hkv) sm_90's first bwd_dqkv2 tile is 128 positions of one head
    and sm_100's 64, with dq and the pair operands in per-program slots: at B = 2, N = 8192,
    Hq = Hkv = 16, D = 128 on an H100 (132 SMs) each takes at most as much as a float32 dq
    (2 x 8192 x 16 x 128 x 4 bytes = 128 MiB): O(B * N * Hkv * D), as the issue bounds scratch."""
    from simplicial_attn.triton_kernels import launch

    dq_bytes = 2 * 8192 * 16 * 128 * 4
    for arch, rows, ab_rows in (("sm90", 128, 2 * 128), ("sm100", 64, 0)):
        assert launch.dq_slot_rows("bwd_dqkv2", arch, 128, False, False) == rows
        assert launch.ab_slot_rows(arch, 128, False, False) == ab_rows
        block_h, packed, positions = launch.dqkv2_tiling(1, None, arch, 128, False)
        assert (block_h, packed, positions) == (1, False, rows)
        span = launch.dqkv2_span(132, 8192, positions, 31, 16 * 2)
        programs = -(-8192 // span) * 16 * 2
        assert span % positions == 0 and programs * rows * 128 * 4 <= dq_bytes, (arch, span, programs)
        assert programs * ab_rows * 128 * 2 <= dq_bytes


def test_dqkv2_tiles_hold_whole_positions_on_every_arch():
    """Every arch's bwd_dqkv2 list holds the heads a launch packs: at least one position a tile
    (a head-packed group on sm_80's 32-row list gets 32-head blocks, not the 16-row sequence list)."""
    from simplicial_attn.triton_kernels import configs, launch

    for arch in configs.ARCHS:
        for bd, fp32, det in ((128, False, False), (256, False, False), (128, True, False), (128, False, True)):
            for group, packing in ((1, None), (3, True), (16, None), (32, None), (64, None), (64, False)):
                block_h, packed, positions = launch.dqkv2_tiling(group, packing, arch, bd, fp32, None, det)
                assert positions >= 1 and packed == (block_h > 1), (arch, bd, fp32, det, group, block_h)
                for cfg in configs.configs("bwd_dqkv2", arch, bd, fp32, packed, det):
                    assert cfg.kwargs["BLOCK_M"] % block_h == 0, (arch, group, cfg)


@pytest.mark.parametrize(
    "case, tiles",
    [
        # causal w1 = 63: a 16-position tile's 78 j rows, two whole 32-row blocks and narrow ones
        (Case(1, 80, 2, 1, 16, 63, 2), dict(BLOCK_T=16, SPLIT_J=True)),
        (Case(1, 80, 2, 1, 16, 63, 2), dict(BLOCK_T=16, SPLIT_J=False)),
        # centred windows, N = 97: edge blocks on both sides, interior ones between, k past n
        (Case(1, 97, 2, 1, 16, 70, 7, causal=False), dict(SPLIT_J=True)),
        # FOLD: k outer over the union of the tile's k windows, every wide block masked
        (Case(1, 80, 2, 1, 16, 63, 2), dict(BLOCK_T=16, FOLD=True)),
        (Case(1, 97, 2, 1, 16, 70, 7, causal=False), dict(BLOCK_T=16, FOLD=True)),
    ],
)
def test_forward_block_counts_match_the_model_map(case, tiles):
    """bench/model/maps.py restates tiles.interior_blocks and fwd.py's narrow loop in numpy
    (_interior_split) to count the forward's edge, interior and narrow j-blocks; the
    interpreter's per-block counters of the same launch must give the same three numbers."""
    from bench.model import maps
    from bench.model import shape as shapes

    cfg = {"fwd": triton.Config(dict(BLOCK_M=32, BLOCK_J=32, **tiles), num_warps=4)}
    inputs = make_inputs(case, torch.float32, "cpu")
    prob = Problem(*bands(case.w1, case.w2, case.causal), case.D**-0.5)
    with coverage.recording() as table:
        tk.fwd(*inputs, prob, head_packing=True, config=cfg)
    fwd = table[("fwd", 16)]
    s = shapes.Shape(case.B, case.N, case.Hq, case.Hkv, case.D, case.w1, case.w2, causal=case.causal)
    heads = case.Hq // case.Hkv  # packed: BLOCK_H = 2, one head block per kv head
    edge, interior, narrow = maps._interior_split(s, 32 // heads, 32, tiles.get("BLOCK_T", 0), tiles.get("FOLD", False))
    if not tiles.get("SPLIT_J") or tiles.get("FOLD"):  # unsplit wide blocks count as neither edge nor interior
        edge = interior = 0
    assert fwd["fold"] == (triton.cdiv(case.N, 32 // heads) if tiles.get("FOLD") else 0)
    assert (fwd["j_edge"], fwd["j_interior"], fwd["j_narrow"]) == (edge, interior, narrow)
    assert narrow + interior > 0
