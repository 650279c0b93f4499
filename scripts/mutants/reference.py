"""Planted bugs in the reference backend (python/simplicial_attn/backends/reference.py); see scripts/mutate.py."""

MUTANTS = [
    dict(
        name="reference-window-off-by-one",
        path="python/simplicial_attn/backends/reference.py",
        old="return p, (p >= 0) & (p < self.n_keys)",
        new="return p, (p >= 1) & (p < self.n_keys)",
        tests=["tests/test_reference.py", "-k", "test_reference_matches_oracle and float64"],
        cheap=True,
        why="both windows lose position 0 (a window mask shifted by one at the sequence start)",
    ),
]
