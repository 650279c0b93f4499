r"""Window geometry, in one place.

For query i the two windows are (w1 for j over k1/v1, w2 for k over k2/v2):

    causal=True  (paper)            causal=False (centred)
    j:  i-w+1 .. i                  i - w//2 .. i - w//2 + w - 1

    causal, w=4, i=6                centred, w=4, i=6
    pos  0 1 2 3 4 5 6 7 8          pos  0 1 2 3 4 5 6 7 8
               [# # # #]                         [# # # #]
                       ^ i                           ^ i

Positions outside [0, N) are never part of a window. `None` means unbounded on the allowed
side; kernels never see None: `kernel_window` turns it into an equivalent integer.
"""


def kernel_window(w, n, causal):
    """The integer window the kernels use for user window `w` (int >= 1 or None) and length n.

    A causal window of N or more covers [0, i]; a centred window of 2N - 1 or more covers the
    whole sequence for every i. Clipping keeps kernel arithmetic small (int32-safe for any
    realistic N) without changing which pairs are in the window.
    """
    full = max(n, 1) if causal else max(2 * n - 1, 1)
    return full if w is None else min(w, full)


def window_start(i, w, causal):
    """First position of the window of query i (it may be negative; such positions are masked)."""
    return i - w + 1 if causal else i - w // 2
