"""The GPU check script's CPU dry run: the same steps at toy sizes, so the script a GPU session runs in one go
cannot rot between the rare sessions that have a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "gpu_check"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    names = [s["name"] for s in summary["steps"]]
    assert names == [
        "env",
        "pytest",
        "kernels_fp16",
        "kernels_fp32",
        "learner",
        "latency",
        "round",
        "search",
        "quick",
    ]
    assert all(s["status"] == "ok" for s in summary["steps"]), summary["steps"]
    assert summary["dry_run"] is True and "torch" in summary["environment"]
    for f in (
        "kernels_fp16.json",
        "kernels_fp32.json",
        "learner.json",
        "latency.json",
        "round.json",
        "search.json",
    ):
        assert (out / f).is_file(), f
    search = json.loads((out / "search.json").read_text())
    assert search["recall_vs_float64"] >= 0.98 and search["qps"] > 0
    learner = json.loads((out / "learner.json").read_text())
    assert learner["ours_cold_s"] > 0 and learner["sklearn_cold_s"] > 0
    assert "===== learner" in (out / "gpu_check.log").read_text()
