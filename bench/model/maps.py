"""Iteration maps: how many times each hot loop of a kernel runs at a shape, from its tiles.

A map reads the kernel's loop bounds as its source writes them (the formulas are the kernel's,
restated here; a kernel whose loops change needs its map changed, which is one function below)
and returns a `Trips`:
  ctas       CTAs in the grid;
  levels     total trips of each loop of the hot nest, outermost first, summed over the grid;
             level i of the map is matched to depth i of the chain of tensor-core loops in the
             SASS (bench/model/sass.py), so the two must agree in length;
  logit      the level whose one trip computes `logits` logit-tile elements;
  side       {level: trips} of the loops *without* tensor-core instructions nested in that level
             (tile loads, product builds); level -1: the kernel's loops outside the nest;
             unlisted ones count one trip;
  siblings   None, or the trips of each of the sibling loops that make up the innermost level
             (program order; they sum to its trips): the Triton forward's edge and interior
             j loops, and its narrow loop (BLOCK_T);
  sibling_logits  None, or the logits one trip of each sibling loop computes (where they differ:
             the narrow loop's BLOCK_M x BLOCK_T); else every trip computes `logits`;
  dram       bytes the kernel must move to or from DRAM at least (inputs once, outputs once).

MAPS[backend][kernel] is the map of a kernel; a kernel the registry finds without one gets a row
that says so.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class Trips:
    ctas: int
    levels: list
    logit: int
    logits: int
    side: dict
    dram: float
    notes: str = ""
    siblings: list | None = None
    sibling_logits: list | None = None

    def total_logits(self):
        """Logit-tile elements over the whole grid: the logit level's trips times `logits`, or the
        sibling loops' trips times each one's `sibling_logits`."""
        if self.sibling_logits:
            return sum(t * n for t, n in zip(self.siblings, self.sibling_logits, strict=True))
        return self.logits * self.levels[self.logit]


def _cdiv(a, b):
    return -(-a // b)


def _elem(shape):
    return 2  # bf16 / fp16


def _qkv_bytes(s, extra_q=0):
    """Bytes of q (and `extra_q` more q-sized tensors) and the four kv tensors."""
    q = s.B * s.N * s.Hq * s.D * _elem(s)
    kv = s.B * s.N * s.Hkv * s.D * _elem(s)
    return q * (1 + extra_q) + 4 * kv


def _stats_bytes(s, count):
    return count * s.B * s.Hq * s.N * 4


def _query_tiles(s, positions):
    """Per query tile of `positions` positions: (u trips, j_lo, j_hi) as query_tile_loops /
    QueryTile compute them (csrc/cuda/query_tile.cuh and the Triton query-tile prologue)."""
    L1, R1, L2, R2 = s.bands
    p0 = np.arange(0, s.N, positions, dtype=np.int64)
    p_last = np.minimum(p0 + positions - 1, s.N - 1)
    u_lo = np.maximum(-R2, p0 - s.N + 1)
    u_hi = np.minimum(L2, p_last)
    j_lo = np.maximum(p0 - L1, 0)
    j_hi = np.minimum(p_last + R1, s.N - 1)
    return np.maximum(u_hi - u_lo + 1, 0), u_lo, u_hi, j_lo, j_hi


def _fold_k_trips(s, positions):
    """Per query tile: the k trips of fwd.py's FOLD loop, k in [p0 - L2, p_last + R2] clipped to
    the sequence."""
    _, _, L2, R2 = s.bands
    p0 = np.arange(0, s.N, positions, dtype=np.int64)
    p_last = np.minimum(p0 + positions - 1, s.N - 1)
    return np.maximum(np.minimum(p_last + R2, s.N - 1) - np.maximum(p0 - L2, 0) + 1, 0)


def _blocks(lo, hi, size):
    return np.maximum(-(-(hi - lo + 1) // size), 0)


# ---------------------------------------------------------------------------------------------
# Triton (triton_kernels/): the tiles are the config's kwargs plus BLOCK_H / BLOCK_D.


def _drop_unit_group(levels, s, index):
    """A launch specialises an int argument equal to 1 into a constant (Triton's specialisation,
    bench/verify/kernel_report.py does the same): with one query head per kv head, the loop over
    the group's heads (`levels[index]`) is compiled away."""
    return levels[:index] + levels[index + 1 :] if s.group == 1 else levels


def triton_query_kernel(s, tiles, extra_q):
    """fwd: programs of BLOCK_M rows (BLOCK_H heads x BLOCK_M / BLOCK_H positions);
    loops u (outer), j-blocks (inner)."""
    bm, bj, bh = tiles["BLOCK_M"], tiles["BLOCK_J"], tiles.get("BLOCK_H", 1)
    u, _, _, j_lo, j_hi = _query_tiles(s, bm // bh)
    if tiles.get("FOLD") and bh > 1:  # fwd.py's FOLD loop (head-packed tiles) runs over k, not u
        u = _fold_k_trips(s, bm // bh)
    mult = s.B * s.Hkv * _cdiv(s.group, bh)
    jb = _blocks(j_lo, j_hi, bj)
    return Trips(
        ctas=len(u) * mult,
        levels=[int(u.sum()) * mult, int((u * jb).sum()) * mult],
        logit=1,
        logits=bm * bj,
        side={},
        dram=_qkv_bytes(s, extra_q) + _stats_bytes(s, 2 if extra_q == 1 else 3),
    )


def _interior_split(s, positions, bj, bt=0, fold=False):
    """[edge blocks, interior blocks, narrow blocks] over every query tile and offset u, as
    triton_kernels/tiles.interior_blocks splits each u's j loop (fwd.py: the edge loop first); with
    narrow blocks (bt > 0) the BLOCK_J loops stop at the last whole block (fwd.py's j_wide)."""
    L1, R1, L2, R2 = s.bands
    _, u_lo, u_hi, j_lo, j_hi = _query_tiles(s, positions)
    p0 = np.arange(0, s.N, positions, dtype=np.int64)
    p_last = np.minimum(p0 + positions - 1, s.N - 1)
    nb = _blocks(j_lo, j_hi, bj)
    narrow = np.zeros_like(nb)
    if bt:
        whole = np.maximum(j_hi + 1 - j_lo, 0) // bj
        narrow = _blocks(j_lo + whole * bj, j_hi, bt)
        nb = whole
    t_a = np.minimum(-(-(np.maximum(p_last - L1, j_lo) - j_lo) // bj), nb)
    t_b = np.minimum((np.minimum(p0 + R1, s.N - 1) + 1 - j_lo) // bj, nb)
    front = interior = back = narrow_total = 0
    if fold:  # k trips (fwd.py attend_folded), every block masked
        k = _fold_k_trips(s, positions)
        return [int((k * nb).sum()), 0, int((k * narrow).sum())]
    for u in range(-R2, L2 + 1):
        on = (u >= u_lo) & (u <= u_hi)
        tb = np.where((u <= p0) & (p_last - u < s.N), np.maximum(t_a, t_b), t_a)
        front += int(np.where(on, np.minimum(t_a, nb), 0).sum())
        interior += int(np.where(on, tb - t_a, 0).sum())
        back += int(np.where(on, np.maximum(nb - tb, 0), 0).sum())
        narrow_total += int(np.where(on, narrow, 0).sum())
    return [front + back, interior, narrow_total]


def triton_fwd(s, tiles):
    """q in, out out; lse, lse_lo out. Each offset's j loop is two sibling loops (fwd.py), three
    with narrow blocks (BLOCK_T; two without SPLIT_J or with FOLD: the masked BLOCK_J loop and the
    narrow one)."""
    trips = triton_query_kernel(s, tiles, extra_q=1)
    bh, bm, bj, bt = tiles.get("BLOCK_H", 1), tiles["BLOCK_M"], tiles["BLOCK_J"], tiles.get("BLOCK_T", 0)
    mult = s.B * s.Hkv * _cdiv(s.group, bh)
    fold = tiles.get("FOLD", False) and bh > 1
    edge, interior, narrow = (t * mult for t in _interior_split(s, bm // bh, bj, bt, fold))
    if not bt:
        trips.siblings = [edge, interior]
        assert sum(trips.siblings) == trips.levels[-1], (trips.siblings, trips.levels)
        return trips
    wide = [edge, interior] if tiles.get("SPLIT_J") and not fold else [edge + interior]
    trips.siblings = [*wide, narrow]
    trips.sibling_logits = [bm * bj] * len(wide) + [bm * bt]
    trips.levels[-1] = sum(trips.siblings)
    return trips


def dqkv2_span(s, positions, heads, sms=132):
    """triton_kernels/launch.py dqkv2_span and dqkv2_layers restated: (span, layers) of the fused
    dq / dk2 / dv2 kernel at shape s with tiles of `positions` positions x `heads` heads, on `sms` SMs (an
    H100 SXM's 132 by default: the launcher asks the device)."""
    L1, R1, L2, R2 = s.bands
    band = L2 + R2
    per_span = s.Hkv * _cdiv(s.group, heads) * s.B  # programs per span: head columns x sequences
    cover = _cdiv(max(band, 1), positions) * positions
    fill = max(s.N // _cdiv(2 * sms, per_span) // positions, 1) * positions
    span = max(positions, min(cover, fill))
    return span, max(1, min(_cdiv(s.N, span), 1 + _cdiv(band, span)))


def triton_dqkv2(s, tiles):
    """bwd_dqkv2: programs of a span of positions (dqkv2_span) x BLOCK_H heads; loops row tiles
    of the span, offsets u, j-blocks (four products each). q, dout in, dq out; lse, lse_lo,
    delta in; the dk2 / dv2 partials into float32 scratch (each row once at least), and with
    DQ_SCRATCH each program's [BLOCK_M, D] float32 dq slot (its read-modify-writes per offset stay
    in L2: the SASS's global requests)."""
    bm, bj, bh = tiles["BLOCK_M"], tiles["BLOCK_J"], tiles.get("BLOCK_H", 1)
    positions = bm // bh
    u, _, _, j_lo, j_hi = _query_tiles(s, positions)
    mult = s.B * s.Hkv * _cdiv(s.group, bh)
    span, layers = dqkv2_span(s, positions, bh)
    jb = _blocks(j_lo, j_hi, bj)
    scratch = 8 * layers * s.B * s.N * s.Hkv * _cdiv(s.group, bh) * s.D
    ctas = _cdiv(s.N, span) * mult
    if tiles.get("DQ_SCRATCH"):  # each program's float32 dq slot, written back once at least
        scratch += 4 * ctas * bm * s.D
    if tiles.get("AB_SLOT"):  # each program's operand slot (a and bo), likewise
        scratch += 2 * _elem(s) * ctas * bm * s.D
    return Trips(
        ctas=ctas,
        levels=[len(u) * mult, int(u.sum()) * mult, int((u * jb).sum()) * mult],
        logit=2,
        logits=bm * bj,
        side={},
        dram=_qkv_bytes(s, 2) + _stats_bytes(s, 3) + scratch,
    )


def triton_reduce2(s, tiles):
    """bwd_reduce2: programs of BLOCK_R rows of one kv head; a loop over the scratch layers above
    the first (no tensor cores). Reads the scratch, writes dk2 and dv2. The head-block count is
    the head-packed tiling's (1 up to 64 heads; the model compiles N_HBLK = 1)."""
    bh = 64 if s.group >= 16 else 1
    positions = max(1, 64 // bh)
    _, layers = dqkv2_span(s, positions, bh)
    rows = s.B * s.N
    scratch = 8 * layers * rows * s.Hkv * _cdiv(s.group, bh) * s.D
    return Trips(
        ctas=_cdiv(rows, tiles["BLOCK_R"]) * s.Hkv, levels=[], logit=None, logits=0, side={-1: layers - 1},
        dram=scratch + 2 * rows * s.Hkv * s.D * _elem(s),
    )  # fmt: skip


def triton_dkv1(s, tiles):
    """Programs of BLOCK_J k1/v1 positions; loops query blocks, head blocks, k steps
    (triton_kernels/bwd_dkv1.py). Columns as configs.column_mode picks them: HEADS, BLOCK_C /
    BLOCK_H queries of BLOCK_H heads at one k (k steps of 1 over the union of the block's K(i)),
    else POSITIONS, BLOCK_C positions of one head (query blocks of 1, k-blocks of BLOCK_C)."""
    from simplicial_attn.triton_kernels.configs import column_mode

    L1, R1, L2, R2 = s.bands
    bj, bc = tiles["BLOCK_J"], tiles["BLOCK_C"]
    heads, bh = column_mode(s.group, min(L2 + R2 + 1, s.N), bc, bd=max(16, 1 << (s.D - 1).bit_length()))
    heads, bh = tiles.get("HEADS", heads), tiles.get("BLOCK_H", bh)
    bi, bk = (bc // bh, 1) if heads else (1, bc)
    n_hblk = _cdiv(s.group, bh if heads else 1)
    i_trips = k_trips = 0
    j0s = range(0, s.N, bj)
    for j0 in j0s:
        i_lo = max(j0 - R1, 0)
        i_hi = min(min(j0 + bj - 1, s.N - 1) + L1, s.N - 1)
        i0 = np.arange(i_lo, i_hi + 1, bi, dtype=np.int64)
        i_last = np.minimum(i0 + bi - 1, i_hi)
        i_trips += len(i0)
        k_trips += int(_blocks(np.maximum(i0 - L2, 0), np.minimum(i_last + R2, s.N - 1), bk).sum())
    mult = s.B * s.Hkv
    levels = _drop_unit_group([i_trips * mult, i_trips * mult * n_hblk, k_trips * mult * n_hblk], s, 1)
    return Trips(
        ctas=len(j0s) * mult,
        levels=levels,
        logit=len(levels) - 1,
        logits=bj * bc,
        side={},
        dram=_qkv_bytes(s, 1) + 2 * s.B * s.N * s.Hkv * s.D * _elem(s) + _stats_bytes(s, 3),
    )


def triton_delta(s, tiles):
    """Delta = rowsum(dout * out): programs of BLOCK_N rows of one head, no loop."""
    q = s.B * s.N * s.Hq * s.D * _elem(s)
    return Trips(
        ctas=_cdiv(s.N, tiles["BLOCK_N"]) * s.Hq * s.B, levels=[], logit=None, logits=0, side={},
        dram=2 * q + _stats_bytes(s, 1),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# CUDA C++ (csrc/cuda/): the tiles are the kernel's Config constants of the instantiation's
# padded head dim, restated from the *_kernel.cuh files.


def _heads_per_tile(group, rows):
    """launch.cuh heads_per_tile."""
    if group < 16:
        return 1
    heads = 1
    while heads < group and heads < rows:
        heads *= 2
    return heads


def cuda_variant(kernel, s, dp):
    """The instantiation of `kernel` a launch at shape s runs (cuda_report's variant): the
    forward's "one_row" where its k1 / v1 fragments are held (dp <= 128) and >= 16 heads are
    packed per position (launch_fwd.cuh); the fused backward's "seq" (sequence tiles) where fewer
    than 16 heads are packed (cuda_fused_bwd: Hq == Hkv); else "" (trilinear logits)."""
    if kernel == "fwd_kernel" and dp <= 128 and _heads_per_tile(s.group, 64) >= 16:
        return "one_row"
    if kernel == "dqkv2_kernel" and _heads_per_tile(s.group, 32) < 16:
        return "seq"
    return ""


def cuda_fused_bwd(s, dp):
    """launch_bwd.cuh plan_dqkv2's choice: the fused dq + dk2 + dv2 pass with >= 16 heads packed per
    position (tiles of 32 rows) or, with Hq == Hkv, sequence tiles of 32 positions, at head dims
    <= 128 (trilinear logits, the model's)."""
    return dp <= 128 and (_heads_per_tile(s.group, 32) >= 16 or s.group == 1)


def pass_kernels(backend, pass_, s, dp):
    """The kernels a pass launches at shape s (padded head dim dp), in launch order: PASSES, except
    the CUDA backward's fused shapes (cuda_fused_bwd), which run dqkv2 + its reduce instead of dq
    and dkv2."""
    if backend == "cuda" and pass_ == "bwd":
        if cuda_fused_bwd(s, dp):
            return ("delta_kernel", "dqkv2_kernel", "dkv2_reduce_kernel", "dkv1_kernel")
    return PASSES[backend][pass_]


def _swapped(s):
    """The host swaps (k1, v1, w1) and (k2, v2, w2) when the second window is wider (launch.cuh)."""
    L1, R1, L2, R2 = s.bands
    return (L2, R2, L1, R1) if (L2 + R2) > (L1 + R1) else (L1, R1, L2, R2)


def cuda_query_kernel(s, dp, rows, bj, cu, out_cols, extra_q, kt_loop=True):
    """fwd_kernel / dq_kernel: loops it = (u-chunk, j-block) pairs, u in the chunk, and (kt_loop) kt:
    the QK product's k-steps (DP / 16, `#pragma unroll 2`); without it they are unrolled into u's."""
    L1, R1, L2, R2 = _swapped(s)
    heads = _heads_per_tile(s.group, rows)
    positions = rows // heads
    p0 = np.arange(0, s.N, positions, dtype=np.int64)
    p_last = np.minimum(p0 + positions - 1, s.N - 1)
    u = np.maximum(np.minimum(L2, p_last) - np.maximum(-R2, p0 - s.N + 1) + 1, 0)
    jb = _blocks(np.maximum(p0 - L1, 0), np.minimum(p_last + R1, s.N - 1), bj)
    mult = s.B * s.Hkv * _cdiv(s.group, heads) * (dp // out_cols)
    it = int((jb * -(-u // cu)).sum()) * mult
    u_trips = int((jb * u).sum()) * mult
    return Trips(
        ctas=len(p0) * mult,
        levels=[it, u_trips, u_trips * (dp // 32)] if kt_loop else [it, u_trips],
        logit=1,
        logits=rows * bj,
        side={0: _cdiv(bj * dp // 8, 32 * rows // 16)},
        dram=_qkv_bytes(s, extra_q) + _stats_bytes(s, 2 if extra_q == 1 else 3),
    )


def cuda_fwd(s, dp, arch="sm80"):
    """FwdConfig: the QK product's k-steps are unrolled where the stage's k1 / v1 fragments are
    held in registers (DP <= 128; DP = 64 only on sm_90, kSm90Device); elsewhere the
    `#pragma unroll 2` loop of logits() stays."""
    rows, bj, cu = (64 if dp <= 128 else 32), (32 if dp <= 128 else 16), (16 if dp <= 128 else 8)
    held = dp <= 64 or (dp <= 128 and arch != "sm90")
    return cuda_query_kernel(s, dp, rows, bj, cu, dp if dp <= 128 else 128, extra_q=1, kt_loop=not held)


def cuda_dq(s, dp, arch=None):  # noqa: ARG001 (one signature for every CUDA map)
    rows = 64 if dp <= 64 else 32 if dp <= 128 else 16
    bj, cu = (64 if dp <= 64 else 32 if dp <= 128 else 16), (16 if dp <= 128 else 8)
    return cuda_query_kernel(s, dp, rows, bj, cu, dp if dp <= 128 else 128, extra_q=2)


def cuda_dkv1(s, dp, arch=None):  # noqa: ARG001 (one signature for every CUDA map)
    """dkv1_kernel: CTAs of kRows j positions x kOutCols columns (kColWarps warps per 16 rows);
    loops query head, query block of kBlockI positions, u-chunk, u (with a product-build loop; its
    two steps unrolled into u where the q / dout vectors are held, kHoldQuery: trilinear, DP <= 128,
    not sm_90 at 128; the determinant's loop is the branch not counted), kt (DP / 16, unroll 2;
    unrolled into u where the k1 / v1 A fragments are held, kHoldA: DP = 128)."""
    L1, R1, L2, R2 = _swapped(s)
    rows, bi, cu = (64 if dp <= 128 else 32), (32 if dp <= 128 else 16), (16 if dp <= 128 else 8)
    out_cols = dp if dp <= 128 else 64
    col_warps = 2 if dp == 128 else 1
    held = dp == 128
    j0 = np.arange(0, s.N, rows, dtype=np.int64)
    j_last = np.minimum(j0 + rows - 1, s.N - 1)
    i_lo, i_hi = np.maximum(0, j0 - R1), np.minimum(s.N - 1, j_last + L1)
    ib = _blocks(i_lo, i_hi, bi)
    u = np.maximum(np.minimum(L2, i_hi) - np.maximum(-R2, i_lo - (s.N - 1)) + 1, 0)
    mult = s.B * s.Hkv * (dp // out_cols)
    u_trips = int((ib * u).sum()) * s.group * mult
    threads = 32 * rows // 16 * col_warps
    return Trips(
        ctas=len(j0) * mult,
        levels=[
            len(j0) * s.group * mult,
            int(ib.sum()) * s.group * mult,
            int((ib * -(-u // cu)).sum()) * s.group * mult,
            u_trips,
            *([] if held else [u_trips * (dp // 32)]),
        ],
        logit=3,
        logits=rows * bi,
        side={3: _cdiv(bi * dp // 8, threads), 2: _cdiv(bi * dp // 8, threads)},
        dram=_qkv_bytes(s, 1) + 2 * s.B * s.N * s.Hkv * s.D * _elem(s) + _stats_bytes(s, 3),
    )


def cuda_dkv2(s, dp, arch=None):  # noqa: ARG001 (one signature for every CUDA map)
    """dkv2_kernel: CTAs of kRows k positions x kOutCols columns (kColWarps warps per 16 rows);
    loops it = (query head, u-chunk, j-block) steps, u in the chunk, kt (DP / 16, unroll 2)."""
    L1, R1, L2, R2 = _swapped(s)
    rows = 64 if dp <= 64 else 32 if dp <= 128 else 16
    # Dkv2Config<DP, false> (the trilinear instantiation the model reads): all DP columns per CTA
    # up to 128 (at 128 two column warps per 16 rows); 4 x 64 columns at 256.
    bj, cu = (64 if dp <= 64 else 32 if dp <= 128 else 16), (16 if dp <= 128 else 8)
    out_cols = dp if dp <= 128 else 64
    it = u_trips = 0
    tiles_k = range(0, s.N, rows)
    for k0 in tiles_k:
        k_last = min(k0 + rows - 1, s.N - 1)
        u_lo, u_hi = max(-R2, -k_last), min(L2, s.N - 1 - k0)
        for c_lo in range(u_lo, u_hi + 1, cu):
            c_hi = min(c_lo + cu - 1, u_hi)
            jlo, jhi = max(0, max(0, k0 + c_lo) - L1), min(s.N - 1, min(s.N - 1, k_last + c_hi) + R1)
            n_jb = max(-(-(jhi - jlo + 1) // bj), 0)
            it += n_jb
            u_trips += n_jb * (c_hi - c_lo + 1)
    mult = s.B * s.Hkv * (dp // out_cols) * s.group
    threads = 32 * rows // 16 * (2 if dp == 128 else 1)  # kColWarps
    return Trips(
        ctas=len(tiles_k) * s.B * s.Hkv * (dp // out_cols),
        # kt: DP / 16 k-steps, unroll 2; unrolled into u where the k2 / v2 A fragments are held
        # (kHoldA: DP = 128).
        levels=[it * mult, u_trips * mult, *([] if dp == 128 else [u_trips * mult * (dp // 32)])],
        logit=1,
        logits=rows * bj,
        side={0: _cdiv(bj * dp // 8, threads)},
        dram=_qkv_bytes(s, 1) + 2 * s.B * s.N * s.Hkv * s.D * _elem(s) + _stats_bytes(s, 3),
    )


def cuda_dqkv2_plan(s, dp):
    """launch_bwd.cuh plan_dqkv2 restated: (ctas, layers, head blocks) of the fused pass at shape s."""
    _, _, L2, R2 = _swapped(s)
    heads = _heads_per_tile(s.group, 32)
    positions, hblk = 32 // heads, _cdiv(s.group, heads)
    reach = L2 + R2
    ctas = lambda tiles: _cdiv(s.N, tiles * positions) * s.B * s.Hkv * hblk  # noqa: E731
    min_tiles = max(1, _cdiv(reach, 3 * positions))
    tiles = max(1, _cdiv(reach, positions))
    while tiles > min_tiles and ctas(tiles) < 264:  # kDqKv2MinCtas
        tiles = max(min_tiles, (tiles + 1) // 2)
    tiles = min(tiles, _cdiv(s.N, positions))
    spans = _cdiv(s.N, tiles * positions)
    return ctas(tiles), min(1 + _cdiv(reach, tiles * positions), spans), hblk


def cuda_dqkv2(s, dp, arch=None):
    """dqkv2_kernel (DqKv2Config: 32 rows, 2 column warps per 16 rows, j blocks of 32): loops tiles of
    a span, offsets u (the epilogue: head sums, scratch adds, the next u's k2 / v2 rows and, once
    a tile, its q / dout), j blocks (a step: the k1 / v1 block's loads), and kt (logits_and_dp's
    DP / 16 k-steps, unroll 2) except where the kernel holds the pair operands over the j loop
    (kHold: D = 128 on sm_80, and the sequence tiles at 64; held_logits_and_dp's k-steps are
    unrolled). Sequence tiles (Hq == Hkv, variant "seq"): 32 positions a tile, each row's scratch
    adds unrolled in the u epilogue (no loop), the next u's one k2 / v2 row there too."""
    L1, R1, L2, R2 = _swapped(s)
    heads = _heads_per_tile(s.group, 32)
    positions = 32 // heads
    p0 = np.arange(0, s.N, positions, dtype=np.int64)
    p_last = np.minimum(p0 + positions - 1, s.N - 1)
    u = np.maximum(np.minimum(L2, p_last) - np.maximum(-R2, p0 - s.N + 1) + 1, 0)
    jb = _blocks(np.maximum(p0 - L1, 0), np.minimum(p_last + R1, s.N - 1), 32)
    ctas, layers, hblk = cuda_dqkv2_plan(s, dp)
    mult = s.B * s.Hkv * hblk
    steps = int((jb * u).sum()) * mult
    # bwd_dqkv2_kernel.cuh kHold: sm_80 at 128; the sequence tiles also at 64 on every arch
    hold = (dp == 128 and arch == "sm80") or (dp == 64 and heads < 16)
    scratch = 8 * layers * s.B * s.N * s.Hkv * hblk * s.D
    return Trips(
        ctas=ctas,
        levels=[len(p0) * mult, int(u.sum()) * mult, steps] + ([] if hold else [steps * (dp // 32)]),
        logit=2,
        logits=32 * 32,
        # u: the packed form's scratch adds (positions x 2 x DP columns over 128 threads); step: the
        # k1 / v1 loads.
        side={**({1: _cdiv(positions * 2 * dp, 128)} if heads >= 16 else {}), 2: _cdiv(32 * dp // 8, 128)},
        dram=_qkv_bytes(s, 2) + _stats_bytes(s, 3) + scratch,
    )


def cuda_dkv2_reduce(s, dp, arch=None):  # noqa: ARG001 (one signature for every CUDA map)
    """dkv2_reduce_kernel: a thread per dk2 / dv2 element, 128 a CTA, loops over the scratch layers
    and head blocks (no tensor cores). Reads the scratch, writes dk2 and dv2."""
    _, layers, hblk = cuda_dqkv2_plan(s, dp)
    elems = s.B * s.N * s.Hkv * s.D
    return Trips(ctas=_cdiv(elems, 128), levels=[], logit=None, logits=0, side={-1: layers * hblk},
                 dram=8 * layers * hblk * elems + 2 * elems * _elem(s))  # fmt: skip


def cuda_delta(s, dp, arch=None):  # noqa: ARG001 (one signature for every CUDA map)
    """delta_kernel: one warp per (b, h, i) row, 4 warps a CTA, a loop over D in 32-lane steps."""
    rows = s.B * s.Hq * s.N
    q = rows * s.D * _elem(s)
    return Trips(ctas=_cdiv(rows, 4), levels=[], logit=None, logits=0, side={-1: _cdiv(s.D, 32)},
                 dram=2 * q + _stats_bytes(s, 1))  # fmt: skip


MAPS = {
    "triton": {"fwd": triton_fwd, "bwd_dqkv2": triton_dqkv2, "bwd_reduce2": triton_reduce2, "bwd_dkv1": triton_dkv1,
               "bwd_delta": triton_delta},
    "cuda": {"fwd_kernel": cuda_fwd, "dq_kernel": cuda_dq, "dkv1_kernel": cuda_dkv1, "dkv2_kernel": cuda_dkv2,
             "dqkv2_kernel": cuda_dqkv2, "dkv2_reduce_kernel": cuda_dkv2_reduce, "delta_kernel": cuda_delta},
}  # fmt: skip
# The kernels of each pass, in launch order (backward = Delta preprocess + dq + dkv kernels), as
# launched without head packing; pass_kernels says which a shape's pass launches.
PASSES = {
    "triton": {"fwd": ("fwd",), "bwd": ("bwd_delta", "bwd_dqkv2", "bwd_reduce2", "bwd_dkv1")},
    "cuda": {"fwd": ("fwd_kernel",), "bwd": ("delta_kernel", "dq_kernel", "dkv1_kernel", "dkv2_kernel")},
}
