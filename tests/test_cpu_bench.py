"""bench/run.py --op varlen / decode / determinant end to end on the cpu backend, at toy sizes.

Each writes its JSON and Markdown result, with the figures its target is judged by: packed over
the sum of the sequences, the decode step against its FLOPs at the fused-forward rate, the
determinant over the trilinear time. The CPU FMA ceiling is part of every CPU result.
"""

import json

import pytest

from bench import decode, determinant, report, run, varlen
from simplicial_attn.backends import extension

if not extension.has_kernel("cpu"):
    pytest.skip(
        f"the C++ extension simplicial_attn._C with CPU kernels is not built ({extension.build_info()})",
        allow_module_level=True,
    )


def _run(op, tmp_path):
    assert run.main(["--op", op, "--backend", "cpu", "--repeats", "1", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob(f"*-{op}-*.json")
    result = json.loads(path.read_text())
    assert result["op"] == op and result["fma_peak"]["float32"]["gflops"] > 0
    assert path.with_suffix(".md").read_text() == report.feature_markdown(result)
    return result


def test_varlen_bench(tmp_path, monkeypatch):
    monkeypatch.setattr(varlen, "LENGTHS", [5, 0, 40, 17])
    monkeypatch.setattr(varlen, "SHAPE", dict(Hq=2, Hkv=1, D=16, w1=8, w2=4))
    result = _run("varlen", tmp_path)
    layouts = {(r["mode"], r["layout"]) for r in result["rows"]}
    assert layouts == {("fwd", "packed"), ("fwd", "sum"), ("fwd", "padded"), ("fwdbwd", "packed"), ("fwdbwd", "sum")}
    assert all(r["packed_over_sum"] > 0 for r in result["packed_over_sum"])


def test_decode_bench(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "SHAPE", dict(B=1, Hq=4, Hkv=2, D=16, w1=16, w2=4))
    monkeypatch.setattr(decode, "CONTEXTS", [32, 64])
    monkeypatch.setattr(decode, "RATE_CONTEXT", 64)
    result = _run("decode", tmp_path)
    assert [r["context"] for r in result["rows"]] == [32, 64]
    assert all(r["step_over_flop_time"] > 0 and r["tokens_per_s"] > 0 for r in result["rows"])


def test_determinant_bench(tmp_path, monkeypatch):
    monkeypatch.setattr(determinant, "SHAPE", dict(B=1, N=40, Hq=2, Hkv=2, D=12, w1=8, w2=4))
    result = _run("determinant", tmp_path)
    assert {(r["mode"], r["provider"]) for r in result["ratios"]} == {("fwd", "cpu"), ("bwd", "cpu")}
