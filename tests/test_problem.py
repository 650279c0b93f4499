"""Windows become bands in one place (problem.window_band): what every backend receives."""

import pytest

from simplicial_attn.problem import Band, Problem, window_band


@pytest.mark.parametrize(
    ("w", "causal", "longest", "band"),
    [
        (512, True, None, (511, 0)),
        (1, True, None, (0, 0)),
        (5, False, None, (2, 2)),
        (4, False, None, (2, 1)),
        (1, False, None, (0, 0)),
        (512, True, 100, (99, 0)),  # clipped: neither reach past longest - 1
        (512, False, 100, (99, 99)),
        (150, False, 100, (75, 74)),  # a centred window of width < 2 * longest - 1 keeps its shape
        (None, True, 7, (6, 0)),  # unbounded: resolved against the longest sequence
        (None, False, 7, (6, 6)),
        (None, True, 0, (0, 0)),  # no tokens at all: still a valid (empty-reaching) band
        (None, False, 1, (0, 0)),
    ],
)
def test_window_band(w, causal, longest, band):
    got = window_band(w, causal, longest)
    assert got == band and isinstance(got, Band)
    assert got.width == band[0] + band[1] + 1


def test_clipping_keeps_the_window_pairs():
    """A clipped band holds the same in-sequence positions as the window, for every query."""
    for n in (1, 2, 7):
        for w in (1, 2, 5, 6, 13, 40):
            for causal in (True, False):
                wide, tight = window_band(w, causal), window_band(w, causal, n)
                for i in range(n):
                    held = [{p for p in range(i - b.left, i + b.right + 1) if 0 <= p < n} for b in (wide, tight)]
                    assert held[0] == held[1], (n, w, causal, i)


def test_unbounded_window_needs_the_longest_sequence():
    with pytest.raises(ValueError, match="longest"):
        window_band(None, True)


def test_problem_hands_the_bands_to_the_kernel_schemas():
    prob = Problem(Band(3, 0), Band(2, 1), 0.5, "determinant", max_seqlen=4)
    assert prob.fused_args() == (None, 4, 3, 0, 2, 1, 0.5, "determinant")
    assert prob.decode_args() == (None, 3, 0, 2, 1, 0.5, "determinant")
