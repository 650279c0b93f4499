r"""Looking at what 2-simplicial heads attend to: one query's pair map, and per-head statistics.

    sa.plot_attention(q, k1, k2, w1, w2, query=40, head=0, path="map.png")
    sa.attention_summary(q, k1, k2, w1, w2)     # [{"head": 0, "entropy": ..., ...}, ...]

A query's weights form a W1 x W2 map over pairs (j, k): j a k1/v1 position, k a k2/v2
position. Both functions compute the weights with `attention_weights` (the package's kernels)
on the smallest slice that holds what they need: the head (with its kv head) and, for the plot,
the positions the query's windows reach. Matplotlib is optional (`pip install
simplicial-attn[plot]`); only `plot_attention` needs it.
"""

import dataclasses
import math

import torch

from ..ops import checks
from ..problem import window_band
from .scores import attention_weights


@dataclasses.dataclass
class AttentionMap:
    """One query's weights over the in-sequence pairs: weights[r, s] is pair (j_positions[r], k_positions[s])."""

    weights: torch.Tensor  # [len(j_positions), len(k_positions)] float64, sums to 1
    j_positions: torch.Tensor
    k_positions: torch.Tensor
    entropy: float  # nats
    head: int
    query: int
    path: str | None = None


def _check(q, k1, k2, w1, w2, causal):
    """What the slicing and window arithmetic here need (the scores op checks the rest again on the
    slice it is given); the keys stand in for the values, which are not needed."""
    checks.check_call((q, k1, k2, k1, k2), w1, w2, causal, None, "trilinear")


def _check_index(name, value, size, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not 0 <= value < size:
        raise ValueError(f"{name} must be in 0..{size - 1} ({what}), got {value}")


def _entropy(p):
    """-sum p log p over the last two dims (0 log 0 = 0), in nats."""
    return torch.special.entr(p).sum((-1, -2))


def query_weights(q, k1, k2, w1, w2, *, query, head, batch=0, causal=True, scale=None, backend="auto"):
    """The weights of one (batch, head, query) over its in-sequence pairs, as an AttentionMap.

    Computes `attention_weights` on the positions [lo, hi) that the query's windows reach (and
    on this head only), so the cost is (hi - lo) * W1 * W2, not N * W1 * W2 per head.
    """
    _check(q, k1, k2, w1, w2, causal)
    B, N, Hq, D = q.shape
    _check_index("batch", batch, B, "q.shape[0]")
    _check_index("head", head, Hq, "q.shape[2]")
    _check_index("query", query, N, "q.shape[1]")
    g = head // (Hq // k1.shape[2])
    # Integer windows with the same window sets (the bands' widths) keep the layout relative to the query.
    band1, band2 = window_band(w1, causal, N), window_band(w2, causal, N)
    iw1, iw2 = band1.width, band2.width
    j0, k0 = query - band1.left, query - band2.left
    lo, hi = max(0, min(j0, k0)), min(N, max(j0 + iw1, k0 + iw2))
    p = attention_weights(
        q[batch : batch + 1, lo:hi, head : head + 1],
        k1[batch : batch + 1, lo:hi, g : g + 1],
        k2[batch : batch + 1, lo:hi, g : g + 1],
        iw1,
        iw2,
        causal=causal,
        scale=D**-0.5 if scale is None else scale,
        backend=backend,
    )[0, 0, query - lo]
    j = j0 + torch.arange(iw1)
    k = k0 + torch.arange(iw2)
    j_in, k_in = (j >= 0) & (j < N), (k >= 0) & (k < N)
    p = p.detach().double().cpu()[j_in][:, k_in]
    return AttentionMap(p, j[j_in], k[k_in], float(_entropy(p)), head, query)


def plot_attention(
    q, k1, k2, w1, w2, *, query, head, path, causal=True, batch=0, scale=None, backend="auto", title=None
):
    """Write a PNG of one query's W1 x W2 weight map: a heatmap over the real key positions
    (rows j: k1/v1, columns k: k2/v2), the marginals over j (right) and over k (top), and a
    title with the head, the query position and the weights' entropy.

    Args:
        q, k1, k2, w1, w2, causal, scale, backend: as in `attention_weights`.
        query, head, batch: which query position, query head and batch element to show.
        path: where the PNG goes.
        title: a line shown above the standard title (e.g. the model's name).

    Returns:
        The AttentionMap that was drawn (weights, positions, entropy, path).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "plot_attention needs matplotlib: pip install 'simplicial-attn[plot]' (or pip install matplotlib)"
        ) from exc
    amap = query_weights(
        q, k1, k2, w1, w2, query=query, head=head, batch=batch, causal=causal, scale=scale, backend=backend
    )
    p, j, k = amap.weights.numpy(), amap.j_positions.numpy(), amap.k_positions.numpy()

    # No pyplot: a bare Figure keeps the caller's matplotlib state and backend untouched.
    fig = Figure(figsize=(7.6, 7.0), dpi=110, layout="constrained")
    grid = fig.add_gridspec(2, 3, width_ratios=(5, 1.3, 0.25), height_ratios=(1.3, 5))
    ax = fig.add_subplot(grid[1, 0])
    top = fig.add_subplot(grid[0, 0], sharex=ax)
    right = fig.add_subplot(grid[1, 1], sharey=ax)
    extent = (k[0] - 0.5, k[-1] + 0.5, j[-1] + 0.5, j[0] - 0.5)
    image = ax.imshow(p, cmap="viridis", extent=extent, aspect="auto", interpolation="nearest", vmin=0)
    ax.set_xlabel("k  (k2 / v2 position)")
    ax.set_ylabel("j  (k1 / v1 position)")
    ax.plot([query], [query], marker="+", color="white", markersize=12, markeredgewidth=2, label="j = k = query")
    r, c = divmod(int(p.argmax()), p.shape[1])
    ax.annotate(
        f"(j, k) = ({j[r]}, {k[c]}): {p[r, c]:.2f}",
        (k[c], j[r]),
        xytext=(8, -8),
        textcoords="offset points",
        color="white",
        fontsize=9,
        bbox=dict(boxstyle="round", facecolor="black", alpha=0.5),
    )
    ax.legend(loc="lower left", fontsize=8, framealpha=0.6)
    fig.colorbar(image, cax=fig.add_subplot(grid[1, 2]), label="weight")

    top.bar(k, p.sum(0), width=1.0, color="tab:orange")
    top.set_ylabel("weight of k\n(sum over j)")
    top.tick_params(labelbottom=False)
    right.barh(j, p.sum(1), height=1.0, color="tab:blue")
    right.set_xlabel("weight of j\n(sum over k)")
    right.tick_params(labelleft=False)
    fig.add_subplot(grid[0, 1]).axis("off")
    fig.add_subplot(grid[0, 2]).axis("off")

    max_entropy = math.log(p.size) if p.size > 1 else 0.0
    heading = (
        f"head {head}, query position {query}: entropy {amap.entropy:.2f} nats "
        f"(uniform over the {p.size} pairs: {max_entropy:.2f})"
    )
    fig.suptitle(heading if title is None else f"{title}\n{heading}", fontsize=10)
    fig.savefig(path)
    amap.path = str(path)
    return amap


def attention_summary(q, k1, k2, w1, w2, *, causal=True, scale=None, radius=1, top=5, backend="auto"):
    """Per-head statistics of the weights, averaged over the batch and every query.

    Returns one dict per query head:
        head            the query head
        entropy         mean -sum P log P over a query's pairs, nats
        max_entropy     mean log(number of in-sequence pairs): the uniform-weights value
        diagonal_mass   mean weight on pairs with |j - i| <= radius and |k - i| <= radius
        top_pairs       the `top` offsets (j - i, k - i) with the largest mean weight, as
                        [((dj, dk), weight), ...] (causal offsets are <= 0)

    Weights are computed one (batch element, head) at a time: memory N * W1 * W2 floats.
    """
    _check(q, k1, k2, w1, w2, causal)
    B, N, Hq, D = q.shape
    G = Hq // k1.shape[2]
    scale = D**-0.5 if scale is None else scale
    band1, band2 = window_band(w1, causal, N), window_band(w2, causal, N)
    iw1, iw2 = band1.width, band2.width
    # Slot a of query i is position i - left + a, so its offset from i does not depend on i.
    dj = torch.arange(iw1) - band1.left
    dk = torch.arange(iw2) - band2.left
    near = (dj.abs() <= radius)[:, None] & (dk.abs() <= radius)[None, :]
    i = torch.arange(N)[:, None, None]
    valid = ((i + dj[:, None] >= 0) & (i + dj[:, None] < N)) & ((i + dk[None, :] >= 0) & (i + dk[None, :] < N))
    log_pairs = valid.sum((-1, -2)).double().log()  # [N]
    summary = []
    for h in range(Hq):
        g = h // G
        entropy, diag, mean_map = 0.0, 0.0, torch.zeros(iw1, iw2, dtype=torch.float64)
        for b in range(B):
            p = (
                attention_weights(
                    q[b : b + 1, :, h : h + 1],
                    k1[b : b + 1, :, g : g + 1],
                    k2[b : b + 1, :, g : g + 1],
                    iw1,
                    iw2,
                    causal=causal,
                    scale=scale,
                    backend=backend,
                )[0, 0]
                .detach()
                .double()
                .cpu()
            )
            entropy += float(_entropy(p).mean())
            diag += float((p * near).sum((-1, -2)).mean())
            mean_map += p.mean(0)
        mean_map /= B
        weights, flat = mean_map.flatten().topk(min(top, mean_map.numel()))
        pairs = [((int(dj[f // iw2]), int(dk[f % iw2])), float(w)) for w, f in zip(weights, flat, strict=True)]
        summary.append(
            {
                "head": h,
                "entropy": entropy / B,
                "max_entropy": float(log_pairs.mean()),
                "diagonal_mass": diag / B,
                "top_pairs": pairs,
            }
        )
    return summary
