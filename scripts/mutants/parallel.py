"""Planted bugs in the parallel code (python/simplicial_attn/parallel/); see scripts/mutate.py.

Most selections start groups of gloo processes (tests/test_distributed.py's 2-rank launch, ~30 s;
tests/test_parallel_layouts.py's 2-rank launch, ~1 min; tests/test_titan.py's 8-rank step), so only
the one-process selection is cheap.
"""

PARALLEL = "python/simplicial_attn/parallel/"
CP_WORLD2 = ["tests/test_distributed.py", "-k", "world2"]
LAYOUTS_WORLD2 = ["tests/test_parallel_layouts.py", "-k", "world2"]

MUTANTS = [
    dict(
        name="cp-positions-ignore-documents",
        path=PARALLEL + "context.py",
        old="return positions - cu[torch.searchsorted(cu, positions, right=True) - 1]",
        new="return positions",
        tests=["tests/test_parallel_layouts.py", "-k", "chunk_positions"],
        cheap=True,
        why="under context parallelism RoPE positions run on across the documents of a packed stream",
    ),
    dict(
        name="cp-halo-ignores-documents",
        path=PARALLEL + "context.py",
        old="lo, hi = max(lo, document(start)[0]), min(hi, document(stop - 1)[1])",
        new="lo, hi = lo, hi",
        tests=CP_WORLD2,
        why="a packed halo reaches past the chunk's document: exact, but moves keys no window reads",
    ),
    dict(
        name="cp-packed-documents-shifted",
        path=PARALLEL + "context.py",
        old="inner = [c - lo for c in documents if lo < c < hi]",
        new="inner = [c - lo + 1 for c in documents if lo < c < hi]",
        tests=CP_WORLD2,
        why="the extended sequence's document boundaries are off by one position",
    ),
    dict(
        name="cp-sdpa-window-one-too-wide",
        path=PARALLEL + "context.py",
        old="visible = visible & (query - key < window)",
        new="visible = visible & (query - key <= window)",
        tests=CP_WORLD2,
        why="standard attention under context parallelism sees one key more than its trailing window",
    ),
    dict(
        name="dtensor-rule-lse-on-the-wrong-dim",
        path=PARALLEL + "tensor.py",
        old="layouts = [(Replicate(), Replicate()), (Shard(_HEADS), Shard(1))]",
        new="layouts = [(Replicate(), Replicate()), (Shard(_HEADS), Shard(2))]",
        tests=CP_WORLD2,
        why="the heads rule declares lse [B, H, N] sharded on N instead of H",
    ),
    dict(
        name="tp-qk-norm-gains-not-summed",
        path=PARALLEL + "tensor.py",
        old='if name.endswith("_norm") and any(True for _ in norm.parameters()):',
        new='if name.endswith("_norm") and False:',
        tests=LAYOUTS_WORLD2,
        why="the per-head q/k norm gains keep each rank's partial gradient (its local heads only)",
    ),
    dict(
        name="fsdp-not-over-context-ranks",
        path=PARALLEL + "decoder.py",
        old='dims = [n for n in ("dp", "cp") if _size(mesh, n) > 1]',
        new='dims = [n for n in ("dp",) if _size(mesh, n) > 1]',
        tests=LAYOUTS_WORLD2,
        why="context-parallel ranks' parameter gradients are never averaged",
    ),
    dict(
        name="titan-fsdp-divides-gradients",
        path=PARALLEL + "titan/parallelize.py",
        old="            module.set_gradient_divide_factor(1.0)\n",
        new="",
        tests=["tests/test_titan.py", "-k", "parallelize_fn"],
        why="FSDP divides gradients the trainer already normalised by the global token count",
    ),
]
