"""Launch configurations per GPU architecture, and the autotuners built from them.

Each tiled kernel has a short list of `triton.Config`s per architecture class, padded head
dim, operand table (16-bit or float32) and logits form (trilinear, or the smaller tiles of
determinant logits); on a GPU `triton.autotune` picks among them, keyed on D, the window
bands, the GQA ratio, the tiling and the layout (never a length: the autotuner adds the
tensors' dtypes to the key itself). The decode kernel has one config per D class and table,
without autotuning. When interpreting there is exactly one config: the interpreter cannot
autotune between two.

The lists are checked without a GPU by `bench/verify/kernel_report.py --check` (registers,
spills, shared memory, tensor-core instructions in the main loops, no atomics), which
compiles every entry for sm_80, sm_86 and sm_90, and executed through the interpreter by
tests/test_triton_configs.py: the launchers take `config={kernel: triton.Config}` to launch
one kernel with one given config instead of autotuning.

Tile names: fwd / bwd_dqkv2 tile rows (BLOCK_M, see fwd.py) and j-blocks (BLOCK_J); bwd_dkv1
tiles k1 positions (BLOCK_J) and takes BLOCK_C columns a step (queries x heads at one k, or
k positions: column_mode; the launcher adds HEADS and BLOCK_H).
"""

import functools

import triton

# sm100: Blackwell data-centre parts (B200, capability 10.x: tcgen05 MMA, 227 KiB of shared
# memory a block); sm120: Blackwell consumer parts (capability 12.x: mma.sync, no wgmma, ~99 KiB).
ARCHS = ("sm80", "sm86", "sm90", "sm100", "sm120")
# Shared memory one block may use (opt-in maximum), bytes.
SMEM_LIMIT = {"sm80": 163 * 1024, "sm86": 99 * 1024, "sm90": 227 * 1024, "sm100": 227 * 1024, "sm120": 99 * 1024}
CAPABILITY = {"sm80": (8, 0), "sm86": (8, 6), "sm90": (9, 0), "sm100": (10, 0), "sm120": (12, 0)}
# The class whose lists an arch class shares where it has none of its own (configs below).
BASE = {"sm80": "sm80", "sm86": "sm86", "sm90": "sm90", "sm100": "sm80", "sm120": "sm86"}
INTERP = "interpreter"

KERNELS = ("fwd", "bwd_dqkv2", "bwd_dkv1")
# Never a length, a sequence count or T: a new packing must not re-tune (or recompile).
AUTOTUNE_KEY = {
    "fwd": ["D", "L1", "R1", "L2", "R2", "GROUP", "BLOCK_H", "VARLEN"],
    "bwd_dqkv2": ["D", "L1", "R1", "L2", "R2", "GROUP", "BLOCK_H", "VARLEN"],
    "bwd_dkv1": ["D", "L1", "R1", "L2", "R2", "GROUP", "VARLEN"],
}


def _c(num_warps, num_stages, **tiles):
    # maxnreg grants ptxas the whole register file for one block (255 at most per thread);
    # without it ptxas sometimes aims at two resident blocks and spills instead.
    maxnreg = min(255, 65536 // (32 * num_warps))
    return triton.Config(dict(tiles), num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg)


# One config when interpreting: blocks big enough that the tiny test shapes need few
# programs and loop trips (~3 ms each), small enough that N = 97 still spans several tiles.
_INTERP = {
    # FOLD: head-packed trilinear tiles run fwd.py's folded loop, the others the offset loop.
    "fwd": [_c(4, 1, BLOCK_M=32, BLOCK_J=32, SPLIT_J=True, TMA=True, FOLD=True)],
    "bwd_dqkv2": [
        _c(4, 1, BLOCK_M=32, BLOCK_J=32, DQ_SCRATCH=True, TMA=True, AB_SLOT=True, KV1_TMA=True, PART_TMA=True)
    ],
    # ROWS32: HEADS columns read k2 / v2 as sm_90's 64-wide tile does (the other configs' rows run in
    # test_triton_configs).
    "bwd_dkv1": [_c(4, 1, BLOCK_J=32, BLOCK_C=16, ROWS32=True)],
}


# Padded head dims (BLOCK_D) share a config list up to a class bound; kernel_report compiles
# every list at its class bound, the worst case for registers and shared memory.
D_CLASSES = (128, 256)


def d_class(bd):
    return next(c for c in D_CLASSES if bd <= c)


def _table16(arch, dc):
    """float16 / bfloat16 operands (bwd_dqkv2: _dqkv2). Register budget at D = 128: fwd holds two
    [BLOCK_M, D] float32 accumulators plus the [BLOCK_M, BLOCK_J] logits, past 255 registers
    with 4 warps at BLOCK_M = 64, so it uses 8 warps. Head-packed tiles want BLOCK_M = 64 (64
    heads at one position, a whole wgmma M). On sm_80, fwd takes BLOCK_J = 16: at 32 its
    sequence tiles reach 255 registers and triton 3.6 spills 12-24 B (3.8 does not); the
    extra cost is one more rescale of the [BLOCK_M, D] partial sum per 16 j instead of 32.
    bwd_dkv1 (D class 128): _dkv1_16.
    Every entry is free of spills per bench/verify/kernel_report.py, under triton 3.6 and 3.8."""
    st = {"sm80": 3, "sm86": 2, "sm90": 3}[arch]
    if dc >= 256:
        return {
            "fwd": [_c(8, 2, BLOCK_M=32, BLOCK_J=32)],
            "bwd_dkv1": [_c(8, 1, BLOCK_J=16, BLOCK_C=16)],
        }
    if arch == "sm90":
        return {
            "fwd": [_c(8, st, BLOCK_M=64, BLOCK_J=64), _c(8, st, BLOCK_M=64, BLOCK_J=32)],
        }
    bj = 16 if arch == "sm80" else 32
    return {
        "fwd": [_c(8, st, BLOCK_M=64, BLOCK_J=bj)],
    }


def _dkv1_16(arch, heads):
    """bwd_dkv1's lists (16-bit, trilinear, D class 128) for HEADS columns (`heads`: queries x
    heads at one k, the GQA shapes) or POSITIONS columns (k positions of one head). HEADS on
    sm_90 / sm_80: 128 columns (2 queries x 64 heads at the target) on 8 warps, so the logits
    product has 128 rows, one 64-row warp group each (a 64-row product on 8 warps is computed by
    both: 1.5x the MMA work), at BLOCK_J = 32; on sm_90 64 first: it halves the shared-memory
    bytes a logit's 128-column operands cost and fits 255 registers with the query tiles and
    (ROWS32) the k2 / v2 rows at 32-bit offsets (bwd_dkv1.py; it spilled 24-32 B), at (w1 + 63) / w1 of
    the useful MMA work instead of (w1 + 31) / w1 (0.63 -> 0.66 per counted backward FLOP). The
    model, target shape, H100 overlapped / serialized ms: 69.8 / 99.2 -> 52.7 / 88.2 (D = 64:
    47.3 / 74.2 -> 34.2 / 63.7); pipelined (s2) it spills 52 B. Known exception under triton 3.6
    only (scripts/triton_compat.py, 2026-12-07): the 64-wide tile spills 156 B there; the 32-wide
    ones stay in the list for the autotuner. POSITIONS fill
    w2 of BLOCK_C columns (half of 64 at w2 = 32), so every arch also has 32 columns: on sm_90 /
    sm_100 32 x 64 on 8 warps (each logit computed once; 32 x 32 on 4 warps computes it twice),
    on sm_80 / sm_86 / sm_120 32 x 16 on 4 warps (mma.sync tiles: 8 warps compute 32 columns 4
    times, 2 warps spill 1.9 KB, 32 x 32 on 4 warps 84 B on sm_80 and 12 B on sm_86). The model,
    no GQA, w2 = 32, overlapped / serialized ms: A100 87 / 135 -> 64 / 96, A10G 242 / 329 ->
    117 / 190, H100 28 / 36 -> 21 / 30, B200 21 / 39 -> 16 / 24 (32 x 128 would give 15 / 23
    and 11 / 18 but spills 0.3-1.5 KB). sm_86 / sm_120: 128 columns need 137 KiB of shared
    memory; sm_80: unpipelined they spill 176 B. sm_100: 128 columns at BLOCK_J = 32 with ROWS32
    (237 registers; they spilled 52 B before), B200 55.3 / 88.9 -> 37.0 / 68.8 ms at the target
    (64 x 64 spills 8 B there)."""
    if arch == "sm90":
        if heads:
            return [
                _c(8, 1, BLOCK_J=64, BLOCK_C=128, ROWS32=True),
                _c(8, 1, BLOCK_J=32, BLOCK_C=128),
                _c(8, 3, BLOCK_J=32, BLOCK_C=128),
            ]
        return [_c(8, 1, BLOCK_J=32, BLOCK_C=64), _c(8, 1, BLOCK_J=64, BLOCK_C=32)]
    if arch == "sm80":
        if heads:
            return [_c(8, 3, BLOCK_J=32, BLOCK_C=128)]
        return [_c(8, 3, BLOCK_J=32, BLOCK_C=64), _c(4, 3, BLOCK_J=16, BLOCK_C=32)]
    if arch == "sm100":  # pipelined, the POSITIONS tile spills 184 B there
        if heads:
            return [_c(8, 1, BLOCK_J=32, BLOCK_C=128, ROWS32=True), _c(8, 3, BLOCK_J=32, BLOCK_C=64)]
        return [_c(8, 1, BLOCK_J=32, BLOCK_C=64), _c(8, 1, BLOCK_J=64, BLOCK_C=32)]
    if heads:
        return [_c(8, 2, BLOCK_J=32, BLOCK_C=64)]
    return [_c(8, 2, BLOCK_J=32, BLOCK_C=64), _c(4, 2, BLOCK_J=16, BLOCK_C=32)]


def _dkv1_256(arch):
    """bwd_dkv1's list (16-bit, trilinear, D class 256, POSITIONS columns) on sm_90 / sm_100, else
    None (_table16's 16 x 16). On 8 warps 16 x 16 computes each logit 8 times; 32 x 32 and 16 x 32
    compute it 4 and 2 times but fit 255 registers only there (on mma.sync archs they spill
    24-124 B, 64-wide blocks 0.9-1.9 KB). The model at the target with D = 256, overlapped /
    serialized ms: H100 1570 / 1796 -> 684 / 807 (32 x 32) | 675 / 830 (16 x 32), B200 1252 /
    1598 -> 529 / 689 | 521 / 719."""
    if arch in ("sm90", "sm100"):
        return [_c(8, 1, BLOCK_J=32, BLOCK_C=32), _c(8, 1, BLOCK_J=32, BLOCK_C=16)]
    return None


def _table32(dc):
    """float32 operands: IEEE dots run on FMA units with both operands spread over registers,
    so tiles are the smallest tl.dot allows and nothing is pipelined through shared memory."""
    big = dc >= 256
    return {
        "fwd": [_c(8 if big else 4, 1, BLOCK_M=16, BLOCK_J=16)],
        "bwd_dkv1": [_c(8, 1, BLOCK_J=16, BLOCK_C=16)],
    }


def _table_det(arch, dc, fp32):
    """Determinant logits (logits="determinant"): the chunkwise cross products permute
    register tiles (tl.gather) and hold up to two more [BLOCK, D] tiles, so the trilinear tiles
    spill; these are the largest that do not at D <= 128 (bench/verify/kernel_report.py, sm_80/86/90,
    triton 3.6 and 3.8). At D <= 256 only the forward fits; the three backward kernels spill
    at every tile tried (DET_SPILL_BUDGET). The forward's tiles differ per arch: sm_86 spills
    at BLOCK_M = 64 with either BLOCK_J. Known exception, under triton 3.6 only (found
    2026-12-07 by scripts/triton_compat.py; 3.8 is clean): the bf16 D = 128 backward with packed
    sequences spills on sm_90 under triton 3.6 (bwd_dkv1's 32 x 32: 116 B, rechecked after its
    rewrite), and float32 bwd_dkv1 on sm_80 (80 B) and sm_120 (60 B); correct, slower on the
    lent GPUs' triton 3.6 (bwd_dqkv2: see _dqkv2)."""
    if dc >= 256:
        # float32 on sm_86-like parts (99 KiB): bwd_dkv1's permuted k2 tiles loaded where used,
        # else their layout conversions need 112 KiB of shared memory.
        late = dict(X_WHERE_USED=True) if fp32 and arch == "sm86" else {}
        return {
            "fwd": [_c(8, 1, BLOCK_M=16, BLOCK_J=16)],
            "bwd_dkv1": [_c(8, 1, BLOCK_J=16, BLOCK_C=16, **late)],
        }
    if fp32:
        return {
            "fwd": [_c(4, 1, BLOCK_M=16, BLOCK_J=16)],
            "bwd_dkv1": [_c(8, 1, BLOCK_J=16, BLOCK_C=16)],
        }
    st = {"sm80": 3, "sm86": 2, "sm90": 3}[arch]
    fwd_tiles = {"sm80": dict(BLOCK_M=64, BLOCK_J=16), "sm86": dict(BLOCK_M=32, BLOCK_J=32)}
    fwd_tiles["sm90"] = dict(BLOCK_M=64, BLOCK_J=32)
    return {
        "fwd": [_c(8, st, **fwd_tiles[arch])],
        "bwd_dkv1": [_c(8, 1, BLOCK_J=32 if arch == "sm90" else 16, BLOCK_C=32 if arch == "sm90" else 16)],
    }


# Spills bench/verify/kernel_report.py --check accepts, bytes per thread (ptxas; the largest over
# sm_80/86/90/100/120, 16-bit and float32, triton 3.6 and 3.8, rounded up to 64): determinant logits
# at D class 256, where no tile of these kernels fits in 255 registers (the trilinear tiles
# already hold 200-255 there; the cross products add two [BLOCK, D] tiles and the tl.gather
# permutations), and the decode kernel there on sm_86, sm_100 and sm_120 (4816 B on sm_100;
# bwd_dkv1 1932 B on sm_120). Any other spill, or a larger one, fails the check. Correct,
# slower: a restructuring that splits D would remove them.
DET_SPILL_BUDGET = {"bwd_dqkv2": 1472, "bwd_dkv1": 1984, "decode": 4864}
# bwd_dqkv2's sequence tiles (Hq / Hkv < 16) at D class 256, and with determinant logits: 16
# rows, the smallest tile, still spill there (trilinear 16 x 32: 16-80 B 16-bit, 460 B float32;
# 8 B float32 determinant at D class 128; kernel_report, sm_80..sm_120, triton 3.8): the three
# [16, D] float32 tiles, the pair operands and the per-offset [16, D] partial's layout
# conversion (bwd_dqkv2.py) pass 255 registers. Correct, slower; a D split of the partial would
# remove them.
SEQ_SPILL_BUDGET = {"bwd_dqkv2": 512}


# The decode kernel (decode.py) launches with one config, without autotuning: its grid and
# scratch depend on the tiles. Few rows (Nq * Hq / Hkv), so BLOCK_M is tl.dot's minimum; the j
# window is split across programs, BLOCK_J positions at least each. 8 warps: with 4, the
# [BLOCK_J, D] pointer tiles of k1 / v1 alone take ~128 registers a thread. float32 is not
# pipelined (num_stages = 1): its cp.async staging spills at every BLOCK_J tried.
MAX_DECODE_SPLITS = 128
_DECODE = {
    INTERP: {"16": _c(4, 1, BLOCK_M=16, BLOCK_J=32), "32": _c(4, 1, BLOCK_M=16, BLOCK_J=32)},
    128: {"16": _c(8, 2, BLOCK_M=16, BLOCK_J=64), "32": _c(8, 1, BLOCK_M=16, BLOCK_J=16)},
    256: {"16": _c(8, 2, BLOCK_M=16, BLOCK_J=32), "32": _c(8, 1, BLOCK_M=16, BLOCK_J=16)},
}


def decode_config(arch, bd, fp32):
    """The one launch config of the decode kernel for arch class `arch` (or INTERP), padded
    head dim bd and float32 (True) or 16-bit operands (the same on every GPU arch)."""
    return _DECODE[INTERP if arch == INTERP else d_class(bd)]["32" if fp32 else "16"]


def _fwd16(arch, packed):
    """The forward's own lists (16-bit, trilinear, D class 128) of the arch classes that have them,
    else None. 128-row tiles: two 64-row warpgroups that each own whole rows. SPLIT_J: the j
    loop split into edge and interior blocks (fwd.py), which costs registers: only where the
    config stays free of spills with it (kernel_report, sm_80..sm_120; configs without the key
    run every block masked). BLOCK_J = 64 halves the per-block rescale and alpha work of
    BLOCK_J = 32 and the re-read of the pair operand from shared memory per logit, but fits 255
    registers on sm_90 only unpipelined and unsplit (num_stages = 1: pipelined it spills 224 B
    with pointer loads); the autotuner weighs it against the pipelined BLOCK_J = 32, unsplit
    too (split it spills 16 B under triton 3.6). Known exception, under triton 3.6 only
    (scripts/triton_compat.py, 2026-12-07): the 128x64 s1 tile spills there, 32 B since the scale
    moved into the exponent (8 B before; the model of its 3.6 build still gains: 334 -> 341
    TFLOP/s serialized on an H100); correct, slower on the lent GPUs' triton 3.6.
    Sequence tiles (per-row k2/v2 tiles) spill at 128 rows pipelined, so they keep a 64-row
    8-warp tile beside the unpipelined 128-row one.
    BLOCK_T (fwd.py: narrow j-blocks past the last whole BLOCK_J block): the packed 128x64 tile
    issues 1.03 MMA FLOPs per counted FLOP with BLOCK_T = 16 instead of 1.12; with k1/v1 through
    tensor descriptors (TMA = True: sm_90 / sm_100, where the launcher finds the strides aligned,
    else pointer loads) it fits pipelined (num_stages = 2, no spill under triton 3.6 and 3.8),
    unpipelined it spills 64 B. The model ranks it below the unpipelined 128x64 with pointer
    loads (serialized ceiling 296 vs 334 TFLOP/s on an H100; overlapped 768 vs 704): the
    autotuner decides. TMA elsewhere: the model finds it costs the other configs serialized time
    (an mbarrier wait per load: 128x64 s1 334 -> 323 on an H100, sm_100's 128x32 305 -> 287 on a
    B200), so they keep pointer loads. The interpreter's config takes it, so the tests run the
    descriptor path (and the pointer path on misaligned strides).
    FOLD (fwd.py: k outer, k2 / v2 folded into the k1 / v1 blocks, no per-offset partial sum y;
    head-packed lists only): one [128, D] float32 tile fewer, so sm_90's packed 128-row tile takes
    BLOCK_J = 128 unpipelined with pointer loads (254 registers, no spill under triton 3.8): the
    model's pick, 1.06 MMA issued per counted FLOP (k visits w2 + 1 values for two positions),
    1.04 exp and 14.9 instructions per logit, 745 / 383 TFLOP/s on an H100 where the offset loop's
    128x64 s1 gives 704 / 342; pipelined beside it, through TMA, 128x128 (2 stages) and 128x64
    (2 stages, 205 registers). The offset loop's 128x64 s1 stays in the list for the autotuner.
    Known exception under triton 3.6 only (scripts/triton_compat.py, 2026-12-07): the two FOLD
    128x128 tiles spill 112 B (s1) and 164 B (TMA, s2); the model of the 3.6 build still ranks
    the s1 one first (653 / 385). On sm_100 (tcgen05) FOLD did not pay in the model (1.2-2.0 exp
    per logit at 128 rows), so its lists keep the offset loop."""
    if arch == "sm90":
        if packed:
            return [
                _c(8, 1, BLOCK_M=128, BLOCK_J=128, BLOCK_T=16, FOLD=True),
                _c(8, 2, BLOCK_M=128, BLOCK_J=128, BLOCK_T=16, FOLD=True, TMA=True),
                _c(8, 2, BLOCK_M=128, BLOCK_J=64, BLOCK_T=16, FOLD=True, TMA=True),
                _c(8, 1, BLOCK_M=128, BLOCK_J=64),
            ]
        return [_c(8, 3, BLOCK_M=64, BLOCK_J=64), _c(8, 1, BLOCK_M=128, BLOCK_J=32)]
    if arch == "sm100":
        wide = _c(8, 1, BLOCK_M=64, BLOCK_J=64, SPLIT_J=True)
        if packed:
            return [
                _c(8, 1, BLOCK_M=128, BLOCK_J=32, SPLIT_J=True),
                _c(8, 2, BLOCK_M=64, BLOCK_J=32, SPLIT_J=True),
                wide,
            ]
        return [_c(8, 2, BLOCK_M=64, BLOCK_J=32, SPLIT_J=True), _c(8, 3, BLOCK_M=64, BLOCK_J=16, SPLIT_J=True), wide]
    return None


def _dqkv2(arch, dc, fp32, packed, det):
    """bwd_dqkv2's lists (bwd_dqkv2.py). It holds three [BLOCK_M, D] float32 tiles across its j
    loop (x, y and dq; two where dq lives in a slot, DQ_SCRATCH) where the forward holds two, plus
    the pair operands a and bo; the tiles are the largest that compile free of spills
    (bench/verify/kernel_report.py, triton 3.8).

    Rows: head-packed tiles keep BLOCK_M = 64 on sm_90 (64 heads at one position, a whole wgmma
    M; 32-row tiles run on mma.sync there: 247-325 ms serialized at the target against 205), 32
    elsewhere (64 x 16 spills on sm_80 164 B, sm_100 660 B, sm_120 608 B); sequence tiles
    (Hq / Hkv < 16) and D class 256 fit at 16 rows only (sequence tiles on sm_90 / sm_100: below).

    sm_90 head-packed: dq in a float32 slot per program (DQ_SCRATCH, bwd_dqkv2.py) frees the
    [64, D] dq tile's registers, which lets BLOCK_J grow to 32 (with dq in registers 64 x 32
    spills 84-288 B): the model, target shape, this kernel on an H100, overlapped / serialized ms,
    64 x 16 with dq in registers 138 / 205 -> 64 x 32 with the slot 100 / 189, and with its k2 / v2
    rows loaded once per position and one-position head sums in place (bwd_dqkv2.py kv_rows,
    head_sum) 96 / 178. 64 rows on 8 warps still compute the S and dP products, P and dA on both
    warp groups (2 exp per logit, 0.86 MMA FLOPs per counted FLOP): that tile stays in the list
    for the autotuner (and runs where q, dout, dq, k2 or v2 are not 16-byte aligned).
    First in the list, 128 x 16 on 8 warps (a warp group owns whole rows: 0.59 MMA FLOPs per
    counted FLOP, 1.0 exp per logit), 2 stages and 1, with TMA (q, dout and the k2 / v2 rows in, dq
    out, through tensor descriptors) and AB_SLOT (the pair operands a and bo through the program's
    operand slot, so the S and dP products read them from shared memory): the model, target shape,
    H100, 82 / 119 (s2) and 77 / 120 ms (s1) against 96 / 178, backward pass (with bwd_dkv1's
    64-wide HEADS tile) 406 / 228 -> 448 / 292 TFLOP/s, 1.52 -> 1.25 MMA FLOPs per counted FLOP;
    D = 64: 57 / 96 -> 43 / 63 and 38 / 64 ms, pass 333 / 189 -> 392 / 240. 254
    registers, no spill. What it took (kernel_report, triton 3.8, 128 x 16 s2 / s1): with pointer
    loads it spills 416 / 408 B; q and dout through descriptors 204 B (s1), k2 / v2 too 44 B, the
    per-position selects and head sums in the tile's layout 40 B (SASS: the [128, D] addresses of
    the dq slot's read-modify-write, ~9 registers, beside a j loop already at 255: x and y take
    128 registers a thread, a and bo as register operands 64); the operand slot frees those 64.
    Tried and worse: k1 / v1 through descriptors (316 B: an mbarrier wait and a descriptor a
    block), the dq slot through a descriptor (its bulk stores need a completion wait each step;
    12 B left), pointer stores and loads of a / bo (their [128, D] addresses: 104 B), an opaque
    zero against hoisting the slot's addresses (268 B), 128 x 32 (4-220 B), 64 x 16 / 32 on 4
    warps (212-228 B); 64 x 64 on 8 warps spills 100-170 B.
    Since (session 8): first, 128 x 32 with the k1 / v1 j-blocks through descriptors too
    (KV1_TMA, where the launcher finds k1 / v1 16-byte aligned, KV_ALIGNED): the pointer loads'
    [BLOCK_J, D] offsets leave the registers, and 128 x 32 at 2 stages fits (255 registers, no
    spill; with pointer loads it spills 56 B at 1 or 2 stages, in the prologue and the tile loop).
    A 32-wide j-block halves the S and dP products' operand reads per FLOP (their A operands a
    and bo come from shared memory, 64 x 16 a warp group per 64 x BLOCK_J x 16): the model, target
    shape, H100, 82.1 / 118.8 -> 59.9 / 115.7 ms (0.069 -> 0.049 shared-memory bytes per MMA FLOP).
    Tried: 1 stage 59.6 / 109.1 but 24 B of spills, 3 stages 60.3 / 117.1, 128 x 64 spills 236 B.
    The 16-wide tiles stay for the autotuner (and for k1 / v1 strides that are not aligned).

    Sequence tiles (Hq / Hkv < 16: one head a tile, every row its own k2 / v2 row and its own
    dk2 / dv2 partial row) were 16 rows, below a wgmma's 64 (mma.sync on sm_90, 0.23 shared-memory
    bytes per MMA FLOP). Since (session 8) sm_90 takes 128 positions (DQ_SCRATCH, TMA, AB_SLOT as
    the head-packed tiles, and PART_TMA: the partials through descriptors, whose pointer form
    spilled 5.2 KB) and sm_100 64 (its head-packed tile's flags and PART_TMA): the model, no GQA
    (B = 2, N = 8192, Hq = Hkv = 16, D = 128), H100 36.7 / 55.3 -> 11.5 / 18.0 ms, B200 32.1 /
    49.4 -> 6.2 / 15.1 ms. On sm_90 only 128 x 16 at 1 stage is free of spills (128 x 32 16-120 B,
    64 rows on 4 warps 80-196 B); under triton 3.6 it spills 32 B and sm_100's 40 B, in the
    prologue and the tile loop (none in the offset or j loops). The 16-row tiles stay for the
    autotuner and take D class 256.

    Columns: on 8 warps a 16- or 32-row mma.sync tile of the logits is split over the warps
    along BLOCK_J, so a narrow BLOCK_J replicates it (16 x 16: every logit, its exp and the S /
    dP products computed 4 times; 32 x 16 and 16 x 32: twice); BLOCK_J = 64 computes each once.
    The model (bf16, overlapped / serialized ms of this kernel), BLOCK_J 16 -> 32 | 64: no GQA
    (Hq = Hkv = 16, N = 8192, D = 128) A100 118 / 133 -> 73 / 88 | 58 / 82, A10G 196 / 219 ->
    121 / 144 | 85 / 156, H100 75 / 83 -> 47 / 58 | 37 / 55, B200 66 / 74 -> 41 / 50 | 32 / 49;
    target (Hq = 64, Hkv = 1, N = 16384, 32 heads a tile) A100 749 / 836 -> 440 / 505 | 307 /
    430, A10G 1566 / 1698 -> 940 / 1055 | 627 / 919, B200 426 / 468 -> 250 / 286 | 175 / 246;
    target at D = 256 (16 heads a tile) H100 1114 / 1311 -> 662 / 837 | 495 / 743. Both widths
    stay in the lists (the autotuner measures), but 16 x 64 at D class 256 needs 112 KiB of
    shared memory (not on sm_86 / sm_120) and spills 128-544 B with sequence tiles.

    sm_100 (session 7): with dq in its slot and the descriptors (TMA, no operand slot) a 64 x 64
    head-packed tile fits (236 registers; tcgen05 issues its products once on 8 warps: 0.57 MMA
    FLOPs per counted FLOP, 1.0 exp per logit) where 32 x 64 read 0.17 shared-memory bytes per MMA
    FLOP: B200, target shape, 174.6 / 245.9 -> 50.0 / 114.9 ms (D = 64: 106.8 / 142.6 -> 36.9 /
    69.5); without descriptors it is 49.1 / 116.1 (254 registers, the pointer fallback). 128-row
    tiles spill there (232-480 B, with or without the operand slot), as do 2 stages (256-344 B).
    Since (session 8): the same tile with k1 / v1 through descriptors too (KV1_TMA, 239
    registers): 50.0 / 114.9 -> 50.5 / 103.8 ms (issue-bound; the serialized ceiling drops the
    pointer loads' address arithmetic and waits); both stay for the autotuner.

    Known exceptions under triton 3.6 only (scripts/triton_compat.py, 2026-12-07, rechecked
    with the wider BLOCK_J tiles, which are clean there too; 3.8 is clean): the determinant
    16-row tiles spill 64 B on sm_90 (56 B before the 128-row tile's changes to the shared code;
    sm_80's 16 B are gone); sm_90's 128 x 16 tiles spill 16 B (2 stages) and 32 B (1 stage), at
    values reloaded outside the j loop (none in it), and 128 x 32 with KV1_TMA 128 B (in the
    prologue and the tile loop, none in the offset or j loops; the model of that build still ranks
    it first, 60.5 / 114.5 ms against 77.8 / 119.2); correct, slower on the
    lent GPUs' triton 3.6. sm_90's head-packed 64 x 32 with the dq slot is clean there at 2 stages (the 64 x 16 with
    dq in registers it replaced spilled 72 B); at 3 stages it spilled 88 B under 3.6 (before
    kv_rows; none under 3.8, and the model ranks it below 2 stages: 97 / 185 ms), so it is not
    listed."""
    if fp32:  # 16 warps for sequence tiles at D class 256 spill 88-460 B, 8 warps more
        warps = 8 if dc >= 256 or det or not packed else 4
        return [_c(16 if dc >= 256 and not packed else warps, 1, BLOCK_M=16, BLOCK_J=16)]
    base = BASE[arch]
    if det:
        return [_c(8, 2 if base != "sm80" else 3, BLOCK_M=16, BLOCK_J=16)]
    if dc >= 256:
        wide = [_c(8, 1, BLOCK_M=16, BLOCK_J=64)] if packed and base != "sm86" else []
        return [_c(8, 2, BLOCK_M=16, BLOCK_J=32), *wide]
    if not packed:
        rows16 = [_c(8, 2, BLOCK_M=16, BLOCK_J=32), _c(8, 1, BLOCK_M=16, BLOCK_J=64)]
        if base == "sm90":  # sequence tiles of 128 positions, the partials through descriptors
            return [_c(8, 1, BLOCK_M=128, BLOCK_J=16, DQ_SCRATCH=True, TMA=True, AB_SLOT=True, PART_TMA=True), *rows16]
        if arch == "sm100":  # 64 positions
            return [_c(8, 1, BLOCK_M=64, BLOCK_J=64, DQ_SCRATCH=True, TMA=True, KV1_TMA=True, PART_TMA=True), *rows16]
        return rows16
    if base == "sm90":
        return [
            _c(8, 2, BLOCK_M=128, BLOCK_J=32, DQ_SCRATCH=True, TMA=True, AB_SLOT=True, KV1_TMA=True),
            _c(8, 2, BLOCK_M=128, BLOCK_J=16, DQ_SCRATCH=True, TMA=True, AB_SLOT=True),
            _c(8, 1, BLOCK_M=128, BLOCK_J=16, DQ_SCRATCH=True, TMA=True, AB_SLOT=True),
            _c(8, 2, BLOCK_M=64, BLOCK_J=32, DQ_SCRATCH=True),
        ]
    if arch == "sm100":  # dq in its slot, q / dout / k2 / v2 / dq through descriptors: 64 x 64 fits
        return [
            _c(8, 1, BLOCK_M=64, BLOCK_J=64, DQ_SCRATCH=True, TMA=True, KV1_TMA=True),
            _c(8, 1, BLOCK_M=64, BLOCK_J=64, DQ_SCRATCH=True, TMA=True),
            _c(8, 1, BLOCK_M=32, BLOCK_J=64),
        ]
    # 64 x 16 spills on sm_80 (164 B), sm_100 (660 B) and sm_120 (608 B): 32 heads a tile there.
    return [_c(8, 2, BLOCK_M=32, BLOCK_J=32), _c(8, 1, BLOCK_M=32, BLOCK_J=64)]


def configs(kernel, arch, bd, fp32=False, packed=False, det=False):
    """The config list of `kernel` for arch class `arch` (or INTERP), padded head dim bd,
    float32 (True) or 16-bit (False) operands, (fwd / bwd_dqkv2) head-packed tiles or not
    ((bwd_dkv1) HEADS columns or not), and determinant (True) or trilinear logits."""
    if arch == INTERP:
        return _INTERP[kernel]
    if kernel == "bwd_dqkv2":
        return _dqkv2(arch, d_class(bd), fp32, packed, det)
    own = _fwd16(arch, packed) if kernel == "fwd" and not (fp32 or det) and d_class(bd) <= 128 else None
    if kernel == "bwd_dkv1" and not (fp32 or det):
        own = _dkv1_16(arch, packed) if d_class(bd) <= 128 else _dkv1_256(arch)
    if own is not None:
        return own
    base = BASE[arch]
    if det:
        table = _table_det(base, d_class(bd), fp32)
        if arch == "sm100" and not fp32 and d_class(bd) <= 128:  # sm_80's 64x16 spills 156-180 B there
            table["fwd"] = [_c(8, 3, BLOCK_M=32, BLOCK_J=32, SPLIT_J=True)]
        return table[kernel]
    table = _table32(d_class(bd)) if fp32 else _table16(base, d_class(bd))
    extra = []
    if packed and kernel == "fwd" and not fp32 and d_class(bd) <= 128 and base == "sm80":
        # Two positions of 64 heads: k1/v1 blocks, re-read once per offset u, then serve
        # 128 rows, halving the L2 traffic per FLOP. Spills with sequence tiles (per-row k).
        extra = [_c(8, 3, BLOCK_M=128, BLOCK_J=32)]
    return table[kernel] + extra


def column_mode(group, w2, block_c, det=False, bd=128, positions_c=None):
    """bwd_dkv1's columns for a group of `group` query heads and a k window of `w2` positions:
    (True, BLOCK_H) for HEADS (block_c / BLOCK_H queries of BLOCK_H heads at one k, BLOCK_H the
    group padded to a power of two, at most block_c, the HEADS lists' smallest BLOCK_C) or
    (False, 1) for POSITIONS (positions_c positions of one head, the POSITIONS lists' smallest
    BLOCK_C; default block_c), whichever holds the larger share of useful pairs: HEADS loses
    padded heads and, per query block, w2 of every w2 + queries - 1 k steps; POSITIONS the tail
    of each query's k window. Ties go to HEADS. Determinant logits (`det`) and padded head dims
    `bd` over 128 always take POSITIONS: with HEADS columns their tiles spill at every size
    tried (bench/verify/kernel_report.py)."""
    if det or bd > 128:
        return False, 1
    pc = positions_c or block_c
    heads = min(1 << max(0, group - 1).bit_length(), block_c)
    queries = block_c // heads
    head_blocks = -(-group // heads)
    # share(HEADS) = group / (heads * head_blocks) * w2 / (w2 + queries - 1)
    # share(POSITIONS) = w2 / (pc * k_blocks)
    if group * pc * -(-w2 // pc) >= heads * head_blocks * (w2 + queries - 1):
        return True, heads
    return False, 1


def arch_class(capability):
    """Map a CUDA capability to the config class: sm_80-like, sm_86-like (99 KiB shared
    memory per block: 8.6, 8.7, 8.9), sm_90, sm_100 (10.x) or sm_120 (12.x and newer consumer
    parts: 99 KiB, no wgmma). Other unknown parts (11.x) take sm_80's (conservative) lists."""
    major, minor = capability
    if major == 9:
        return "sm90"
    if major == 10:
        return "sm100"
    if major >= 12:
        return "sm120"
    if major == 8 and minor > 0:
        return "sm86"
    return "sm80"


def autotuned(kernel, fn, arch, bd, fp32, packed=False, forced=None, det=False):
    """A `triton.autotune` wrapper of the jitted `fn` over the config list of (arch, bd, fp32,
    packed, det), or over the one config `forced`; cached."""
    chosen = [forced] if forced is not None else configs(kernel, arch, bd, fp32, packed, det)
    return _autotuner(kernel, fn, tuple(chosen))


@functools.cache
def _autotuner(kernel, fn, chosen):
    return triton.autotune(configs=list(chosen), key=AUTOTUNE_KEY[kernel])(fn)


def forced_configs(config, kernels):
    """A launcher's `config` argument checked: None, or {kernel name: triton.Config} naming
    only kernels among `kernels` (those the launcher runs)."""
    config = {} if config is None else dict(config)
    unknown = sorted(set(config) - set(kernels))
    if unknown:
        raise ValueError(f"config names kernels {unknown}; this launcher runs {', '.join(kernels)}")
    bad = {k: type(v).__name__ for k, v in config.items() if not isinstance(v, triton.Config)}
    if bad:
        raise TypeError(f"config values must be triton.Config; got {bad}")
    return config


def config_list(kernel, arch, bd, fp32, packed=False, forced=None, det=False):
    """The configs a launch of `kernel` autotunes over: the one config `forced`, or the list of
    (arch, bd, fp32, packed, det)."""
    return [forced] if forced is not None else configs(kernel, arch, bd, fp32, packed, det)


def min_block(kernel, arch, bd, fp32, name, forced=None, det=False, packed=True):
    """Smallest value of tile parameter `name` among the configs (head-packed lists unless
    `packed` is False), or that of the one config `forced` (bounds the head-pack size)."""
    chosen = [forced] if forced is not None else configs(kernel, arch, bd, fp32, packed=packed, det=det)
    return min(c.kwargs[name] for c in chosen)
