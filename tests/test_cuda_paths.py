"""Coverage you can see: every code path a CUDA C++ kernel marks with SA_PATH(cond, "name") is run
by the emulated tests, at every padded head dim it exists at (64, 128, 256).

The kernels mark their runtime paths (more than one pipeline iteration, zero-filled tails, head
packing, the last partial tile, GQA, split output columns, vector and scalar loads, packed
sequences and their boundaries, determinant logits, decode splits and the ring, ...); device
builds compile the markers to nothing. The runs are those of tests/test_cuda_emulated.py and
tests/test_cuda_emulated_features.py, whose paths cuda_emulator.record_run keeps per state of
the sources and tests: this test adds them up and runs (with their oracle checks) only the ones
no process has run yet. Runtime: ~1 s after those files, ~3 minutes alone.
"""

import collections
import re

import cuda_emulator as emu
import pytest
import test_cuda_emulated
import test_cuda_emulated_features

pytestmark = pytest.mark.skipif(emu.unavailable_reason() is not None, reason=f"{emu.unavailable_reason()}")

RUNS = {**test_cuda_emulated.RUNS, **test_cuda_emulated_features.RUNS}

LOADS = {"load: cp.async 16 B", "load: scalar", "load: zero row", "load: zero columns"}
PIPELINE = {"pipeline: prefetch", "pipeline: next j block", "pipeline: next u chunk"}
QUERY_TILE = {"tile: head packing", "tile: partial head block", "tile: last partial position tile"}
QUERY_TILE |= {"tile: GQA group > 1"}
MASKS = {"mask: j outside the window", "mask: k outside the sequence"}
# Packed layouts (an empty sequence's tiles exit at once, as do the tiles past a sequence's end)
# and determinant logits, in every tensor-core kernel.
FEATURES = {"varlen: packed layout", "varlen: empty sequence", "tile: past the sequence's end"}
FEATURES |= {"logits: determinant"}
SPLIT = "output: second column half"
# The dkv kernels at padded head dim 128 (trilinear): two warps per 16 rows, one per column half.
COL_WARP = "output: second column warp"
FUSED = {"pipeline: prefetch", "pipeline: next j block", "pipeline: next u", "span: next tile", COL_WARP}
FUSED |= {"tile: one position per warp", "head sum: a position per row warp", "head sum: row warps of one position"}
FUSED |= {
    "scratch: layer > 0",
    "scratch: k outside the sequence",
    "load: k1/v1 block by cp.async",
    "load: k1/v1 block tail",
}
SIMT = {"lanes past D", "tail: warps past the last row", "varlen: packed layout", "logits: determinant"}
# kernel -> {path: the padded head dims it exists at}; head dim 0 labels the delta kernel.
ALL = (64, 128, 256)
# The forward's blocks inside every row's window (unmasked) and across an edge, its skipped rescales,
# and its one-row layout (head packing of >= 16 heads; k1/v1 held in registers, so not at 256).
FWD = {"mask: interior block", "mask: edge block", "softmax: rescale skipped"}
EXPECTED_PATHS = {
    "fwd_kernel": {
        **dict.fromkeys(LOADS | PIPELINE | QUERY_TILE | MASKS | FEATURES | FWD, ALL),
        SPLIT: (256,),
        "tile: one position per warp": (64, 128),
    },
    "dq_kernel": {
        **dict.fromkeys(LOADS | PIPELINE | QUERY_TILE | MASKS | FEATURES, ALL),
        SPLIT: (256,),
    },
    # dq + dk2 + dv2 in one pass (trilinear, head dims <= 128; head packing of >= 16 heads, or
    # sequence tiles with Hq == Hkv): spans of tiles, the head sums (a row warp per position with 16
    # heads, both row warps at one with 32) and their scratch rows, or (sequence tiles) each row's
    # partials from registers and the k2 / v2 ring, then the reduce over layers and head blocks.
    "dqkv2_kernel": {
        **dict.fromkeys(LOADS | QUERY_TILE | MASKS | (FEATURES - {"logits: determinant"}) | FUSED, (64, 128)),
        **dict.fromkeys(
            ["tile: a position per row", "scratch: a row's partials added from registers", "ring: rows wrap around"],
            (64, 128),
        ),
        # the pair operands held over the j loop at 128 (sm_80's form; sm_86 / sm_90 rebuild as the
        # packed tiles do at 64) and, for sequence tiles, at 64
        "operands: pairs held over the j loop": (64, 128),
        "operands: pairs rebuilt every step": (64,),
    },
    "dkv2_reduce_kernel": dict.fromkeys(
        {"tail: threads past the last element", "reduce: several layers", "reduce: several head blocks"}, (64, 128)
    ),
    "dkv1_kernel": {
        **dict.fromkeys(LOADS | MASKS | FEATURES, ALL),
        **dict.fromkeys(["tile: last partial position tile", "mask: query past the last block row"], ALL),
        **dict.fromkeys(["loop: next query head", "loop: next query block", "loop: next u chunk"], ALL),
        SPLIT: (256,),
        COL_WARP: (128,),
        # each thread's q / dout vectors held over a query block (trilinear, up to 128); the
        # determinant's products and head dim 256 read them for every u
        "operands: query vectors held over the block": (64, 128),
        "operands: query vectors read every u": ALL,
    },
    "dkv2_kernel": {
        **dict.fromkeys(LOADS | PIPELINE | FEATURES, ALL),
        **dict.fromkeys(["tile: last partial position tile", "loop: next query head"], ALL),
        **dict.fromkeys(["mask: j outside the window", "mask: query outside the sequence"], ALL),
        SPLIT: (128, 256),  # 128: the determinant's instantiation only
        COL_WARP: (128,),
    },
    "fwd_simt_kernel": dict.fromkeys(SIMT | {"softmax: new running max", "tile: GQA group > 1"}, ALL),
    "dq_simt_kernel": dict.fromkeys(SIMT | {"tile: GQA group > 1"}, ALL),
    "dkv_simt_kernel": dict.fromkeys(SIMT | {"loop: next query head"}, ALL),
    "delta_kernel": dict.fromkeys({"lanes past D", "tail: warps past the last row", "several elements per lane"}, (0,)),
    "decode_split_kernel": dict.fromkeys(
        {"tail: warps past the last row", "logits: determinant", "tile: GQA group > 1", "decode: several splits"}
        | {"decode: split before the sequence's start", "decode: the ring wraps", "softmax: new running max"},
        ALL,
    ),
    "decode_combine_kernel": dict.fromkeys({"tail: warps past the last row", "combine: a split without weight"}, ALL),
}
_MARKER = re.compile(r'SA_PATH\([^;]*?,\s*"([^"]+)"\)', re.S)


def test_expected_paths_match_the_markers():
    """The table above names exactly the paths the sources mark: a new marker must be added here."""
    marked = {m for f in emu.CUDA_SRC.glob("*.cuh") for m in _MARKER.findall(f.read_text())}
    listed = {name for paths in EXPECTED_PATHS.values() for name in paths}
    assert marked == listed, f"marked only: {sorted(marked - listed)}; listed only: {sorted(listed - marked)}"


def test_every_marked_path_is_visited():
    counts = collections.Counter()
    for name, run in RUNS.items():  # the runs no process has recorded yet run here, checks included
        recorded = emu.recorded_paths(name)
        counts += recorded if recorded is not None else emu.record_run(name, *run)
    seen = {(k, hd, name) for (k, hd, name), n in counts.items() if n > 0}
    launched = {(k, hd) for (k, hd, _) in counts}
    missing, unexpected = [], []
    for kernel, paths in EXPECTED_PATHS.items():
        for name, head_dims in paths.items():
            missing += [f"{kernel}/{hd}: {name}" for hd in head_dims if (kernel, hd, name) not in seen]
    for kernel, hd, name in seen:
        if hd not in EXPECTED_PATHS.get(kernel, {}).get(name, ()):
            unexpected.append(f"{kernel}/{hd}: {name}")
    assert not missing, f"marked paths never run (add a case that reaches them): {missing}"
    assert not unexpected, f"paths run that the table does not list: {sorted(unexpected)}"
    assert launched >= {(k, hd) for k, paths in EXPECTED_PATHS.items() for hds in paths.values() for hd in hds}
