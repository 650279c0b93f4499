"""Planted bugs in the package's problem description and ops (python/simplicial_attn/problem.py,
ops/); see scripts/mutate.py. All cheap: pure Python, small test selections."""

MUTANTS = [
    dict(
        name="problem-centred-band-lopsided",
        path="python/simplicial_attn/problem.py",
        old="band = Band(w - 1, 0) if causal else Band(w // 2, w - 1 - w // 2)",
        new="band = Band(w - 1, 0) if causal else Band(w - 1 - w // 2, w // 2)",
        tests=["tests/test_problem.py"],
        cheap=True,
        why="a centred window of even width reaches one position further right than left instead of left",
    ),
    dict(
        name="ops-max-seqlen-drives-the-bands",
        path="python/simplicial_attn/ops/library.py",
        old="cu, longest = checks.check_packing(cu_seqlens, max_seqlen, q.shape[1])",
        new="cu, longest = checks.check_packing(cu_seqlens, max_seqlen, q.shape[1])[0], max_seqlen or q.shape[1]",
        tests=["tests/test_varlen.py", "-k", "hint_not_the_work and 100000 and reference"],
        cheap=True,
        why="bands resolved against the max_seqlen hint, not the longest sequence: work grows with the hint",
    ),
    dict(
        name="ops-expanded-cache-written",
        path="python/simplicial_attn/ops/checks.py",
        old="    if writing:\n",
        new="    if False:\n",
        tests=["tests/test_kvcache.py", "-k", "refused_before_any_write and reference"],
        cheap=True,
        why="new tokens written into an expanded cache: one row's tokens land in every row's slots",
    ),
    dict(
        name="ops-shared-cache-accepted",
        path="python/simplicial_attn/ops/checks.py",
        old="        if other != name:\n",
        new="        if False:\n",
        tests=["tests/test_kvcache.py", "-k", "refused_before_any_write and reference"],
        cheap=True,
        why="a cache passed twice (k1_cache is v1_cache) is accepted and k1 is lost under v1",
    ),
]
