"""Planted bugs in the reference backend (python/simplicial_attn/reference.py); see scripts/mutate.py."""

MUTANTS = [
    dict(
        name="reference-k-window-off-by-one",
        path="python/simplicial_attn/reference.py",
        old="self.kvalid = (self.k >= 0) & (self.k < N)",
        new="self.kvalid = (self.k >= 1) & (self.k < N)",
        tests=["tests/test_reference.py", "-k", "test_reference_matches_oracle and float64"],
        cheap=True,
        why="the k2/v2 window loses position 0 (a window mask shifted by one at the sequence start)",
    ),
]
