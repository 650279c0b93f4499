"""bench/verify/gpu_check.sh, the one-call script for a lent GPU, checked here without one (--dry-run).

The dry run checks what the script will need on the device machine (every pytest selection
collects tests, the cuda-tests and gpu-tests stages split the fast GPU tests between them,
bench/verify/gpu_sanitize.py lists its cases, the files exist) and writes the plan to summary.json.
Asserted: the stages come in their order of value, they fit one device call (a command may run
10 minutes; the plan keeps a minute of it spare) and the files they write fit what the device
tool brings back (8). Runtime: ~30-40 s (four pytest collections).
"""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGES = ["facts", "build", "cuda-tests", "sanitize", "gpu-tests", "cuda-slow", "bench", "ncu"]
MAX_BUDGET_S = 540  # of the 600 s one device command may run
MAX_FILES = 8  # the device tool brings back at most 8 files


def test_dry_run_plans_every_stage_within_one_call(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "verify" / "gpu_check.sh"), "--dry-run"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert [s["stage"] for s in summary["stages"]] == STAGES
    assert all(s["status"] == "planned" for s in summary["stages"])
    assert summary["total_budget_s"] <= MAX_BUDGET_S, summary["total_budget_s"]
    files = {"summary.json", "bench.json"} | {s["log"] for s in summary["stages"]}
    assert len(files) <= MAX_FILES, sorted(files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"], "a dry run writes only the plan"
    for selection in ("-m 'gpu and not slow' -k cuda", "-m 'gpu and not slow' -k 'not (cuda and", "-m 'gpu and slow'"):
        assert selection in proc.stdout, proc.stdout
    assert "cuda-tests and gpu-tests split the" in proc.stdout, proc.stdout
