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


@pytest.mark.slow
def test_scale_benchmark_ray_mode_measures_driver_and_workers(tmp_path):
    """--ray-workers: one real `beeray train` through Ray Train (W=1, cold tokens cache); the driver
    tokenizes, the worker only maps, and every start-up and memory field is filled in."""
    out = tmp_path / "scale-ray.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--sizes", "300,400,3000",
                           "--work", str(tmp_path / "work"), "--m", "64", "--ray-workers", "1", "--ray-runs", "cold",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["users"], row["items"], row["workers"], row["run"]) == (300, 400, 1, "cold")
    assert row["driver_tokenized"] and row["driver_tokenize_s"] > 0
    assert 0 < row["driver_first_step_s"] < row["driver_total_s"]
    assert row["driver_mb"] >= row["driver_mb_after_tokenize"] > 0
    assert row["ray_tree_pss_mb"] > 0 and row["ray_tree_rss_mb"] >= row["ray_tree_pss_mb"]
    (worker,) = row["worker_rows"]
    assert worker["rank"] == 0 and not worker["restored"] and worker["steps"] == 1
    for key in ("startup_s", "entry_to_setup_s", "import_s", "setup_s", "data_load_s", "model_load_s", "catalog_s",
                "first_step_s", "mb_at_entry", "mb_at_setup", "mb"):
        assert worker[key] > 0, key
    assert worker["startup_s"] >= worker["entry_to_setup_s"] >= worker["setup_s"]
    assert worker["mb"] >= worker["mb_at_setup"] >= worker["mb_at_entry"]
    # The catalog was tokenized by the driver; the worker mapped it and never called the tokenizer.
    assert worker["catalog_builds"] == 0 and worker["tokenizer_calls"] == 0 and row["worker_tokenizer_calls"] == 0
