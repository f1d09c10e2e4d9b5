"""benchmarks/bench_scale.py at a small size: every operation it measures runs, so the script cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scale_benchmark_runs_every_operation(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--sizes", "400,800,6000",
                           "--work", str(tmp_path / "work"), "--reps", "1", "--m", "64", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["users"], row["items"], row["interactions"]) == (400, 800, 6000)
    for op in ("prepare", "tokenize", "startup", "step", "evaluate"):
        assert row[f"{op}_s"] > 0 and row[f"{op}_mb"] > 0
    assert row["step_items"] == 64 and row["tokens"] > row["train_items"]
    assert (tmp_path / "work" / "shop-400-800-6000" / "tokens").is_dir()
