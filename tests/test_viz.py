"""plot_attention / attention_summary: the PNG is written, the maps and statistics are right."""

import importlib.util
import math
import pathlib
import sys

import pytest
import torch

from simplicial_attn.analysis.scores import attention_weights
from simplicial_attn.analysis.viz import attention_summary, plot_attention, query_weights

from cases import Case, make_inputs

CASE = Case(2, 12, 4, 2, 16, 3, 5)


def _expected_row(q, k1, k2, w1, w2, causal, b, h, i):
    """The full weights' [b, h, i] map, cropped to in-sequence positions (window layout of §3)."""
    n = q.shape[1]
    p = attention_weights(q, k1, k2, w1, w2, causal=causal, backend="reference")[b, h, i].double()
    if w1 is None and not causal:
        j = torch.arange(n)
    else:
        w = n if w1 is None else w1
        j = (i - w + 1 if causal else i - w // 2) + torch.arange(w)
    k = (i - w2 + 1 if causal else i - w2 // 2) + torch.arange(w2)
    return p[(j >= 0) & (j < n)][:, (k >= 0) & (k < n)]


@pytest.mark.parametrize(
    "w1,w2,causal,head,query", [(3, 5, True, 3, 7), (3, 5, True, 0, 1), (None, 4, False, 2, 6), (20, 4, True, 1, 11)]
)
def test_query_weights_match_attention_weights(w1, w2, causal, head, query):
    q, k1, k2, _, _ = make_inputs(CASE)
    amap = query_weights(q, k1, k2, w1, w2, query=query, head=head, batch=1, causal=causal, backend="reference")
    expected = _expected_row(q, k1, k2, w1, w2, causal, 1, head, query)
    torch.testing.assert_close(amap.weights, expected, rtol=1e-6, atol=1e-7)
    assert amap.weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert amap.j_positions.min() >= 0 and amap.j_positions.max() < q.shape[1]
    assert query in amap.j_positions.tolist() and query in amap.k_positions.tolist()


def test_plot_attention_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    q, k1, k2, _, _ = make_inputs(CASE)
    path = tmp_path / "map.png"
    amap = plot_attention(q, k1, k2, 3, 5, query=9, head=1, path=path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert amap.path == str(path)
    assert amap.j_positions.tolist() == [7, 8, 9] and amap.k_positions.tolist() == [5, 6, 7, 8, 9]
    assert 0.0 <= amap.entropy <= math.log(15) + 1e-9


def test_plot_attention_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    q, k1, k2, _, _ = make_inputs(CASE)
    with pytest.raises(ImportError, match=r"plot_attention needs matplotlib: pip install"):
        plot_attention(q, k1, k2, 3, 5, query=9, head=1, path=tmp_path / "x.png")


def test_attention_summary_values():
    q, k1, k2, _, _ = make_inputs(CASE)
    summary = attention_summary(q, k1, k2, 3, 5, radius=1, top=4, backend="reference")
    assert [s["head"] for s in summary] == [0, 1, 2, 3]
    for s in summary:
        assert 0.0 < s["entropy"] <= s["max_entropy"] + 1e-9
        assert 0.0 <= s["diagonal_mass"] <= 1.0 + 1e-9
        weights = [w for _, w in s["top_pairs"]]
        assert len(weights) == 4 and weights == sorted(weights, reverse=True)
        assert all(-2 <= dj <= 0 and -4 <= dk <= 0 for (dj, dk), _ in s["top_pairs"])  # causal offsets


def test_attention_summary_uniform_weights():
    """q = 0 makes every logit 0: uniform weights, so the entropy is the maximum and the
    diagonal mass and top pairs follow from counting pairs alone."""
    q, k1, k2, _, _ = make_inputs(Case(1, 6, 2, 1, 16, 2, 2))
    summary = attention_summary(torch.zeros_like(q), k1, k2, 2, 2, radius=0, backend="reference")
    counts = torch.tensor([1] + [4] * 5, dtype=torch.float64)  # in-sequence pairs per query
    for s in summary:
        assert s["entropy"] == pytest.approx(counts.log().mean().item(), abs=1e-6)
        assert s["max_entropy"] == pytest.approx(counts.log().mean().item(), abs=1e-12)
        assert s["diagonal_mass"] == pytest.approx((1 / counts).mean().item(), abs=1e-6)  # only j = k = i
        assert s["top_pairs"][0] == ((0, 0), pytest.approx((1 / counts).mean().item(), abs=1e-6))


def test_viz_argument_errors(tmp_path):
    q, k1, k2, _, _ = make_inputs(CASE)
    with pytest.raises(ValueError, match=r"query must be in 0..11"):
        query_weights(q, k1, k2, 3, 5, query=12, head=0)
    with pytest.raises(ValueError, match=r"head must be in 0..3"):
        query_weights(q, k1, k2, 3, 5, query=0, head=4)
    with pytest.raises(TypeError, match=r"query must be an int"):
        query_weights(q, k1, k2, 3, 5, query=1.0, head=0)
    with pytest.raises(ValueError, match=r"w1 must be an int >= 1"):
        attention_summary(q, k1, k2, 0, 5)


def test_attention_map_example_smoke(tmp_path, monkeypatch, capsys):
    """examples/attention_map.py end to end, trained for 3 steps instead of 250."""
    pytest.importorskip("matplotlib")
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "attention_map.py"
    spec = importlib.util.spec_from_file_location("attention_map_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "map.png"
    monkeypatch.setattr(sys, "argv", ["attention_map.py", "--steps", "3", "--out", str(out)])
    example.main()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top pair (j, k)" in capsys.readouterr().out
