"""bench/run.py end to end on a tiny sweep, and the README's Performance section in sync."""

import json
import os

from bench import report, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_writes_json_markdown_and_plot(tmp_path):
    args = ["--N", "16", "24", "--w1", "4", "--w2", "3", "--D", "8", "--Hq", "2", "--mode", "fwd", "bwd"]
    args += ["--backend", "reference", "dense-einsum", "sdpa-causal", "--repeats", "2", "--out", str(tmp_path)]
    assert run.main(args) == 0
    (path,) = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    assert result["flop_convention"].startswith("CONTRACT §2")
    assert {"torch", "cpu_model", "build_info"} <= set(result["environment"])
    assert result["matmul_peak"]["float32"]["tflops"] > 0
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 3  # N values x modes x providers
    measured = [r for r in rows if r["provider"] != "sdpa-causal"]
    assert all(r["tflops"] > 0 and r["median_s"] > 0 and r["repeats"] == 2 for r in measured)
    assert all("GPU only" in r["skipped"] for r in rows if r["provider"] == "sdpa-causal")
    fwd16 = next(r for r in measured if r["N"] == 16 and r["mode"] == "fwd")
    assert fwd16["flops"] == 4 * 8 * 2 * sum(min(i + 1, 4) * min(i + 1, 3) for i in range(16))
    assert path.with_suffix(".md").exists() and path.with_suffix(".png").exists()


def test_readme_performance_section_is_generated_from_results():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    begin, end = readme.index(report.BEGIN), readme.index(report.END) + len(report.END)
    assert readme[begin:end] == report.readme_section(), "run: python bench/report.py --readme"
