"""benchmarks/gpu.py's CPU mode: the code a GPU run executes, on a tiny model, so it cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_every_part_on_cpu(shop, tiny_model_dir, tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--cpu", "--data", str(shop),
                           "--model", str(tiny_model_dir), "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    exact = {row["precision"]: row for row in doc["exact"]}
    assert exact["fp32"]["rel_error"] < 1e-5 and exact["bf16"]["rel_error"] < 2e-3
    assert exact["fp32"]["kept_graphs_rel_error"] < 1e-5 and exact["bf16"]["kept_graphs_rel_error"] < 2e-3
    assert all(row["no_replay_rel_error"] > 1e-2 and row["ok"] for row in exact.values())
    assert doc["nccl"]["ok"] and doc["nccl"]["backend"] == "gloo"
    speed = {(r["model"], r["precision"]): r for r in doc["speed"]}
    assert set(speed) == {(m, p) for m in ("all-MiniLM-L6-v2", "mpnet-shapes") for p in ("fp32", "bf16")}
    for row in speed.values():
        assert row["step_s"] > 0 and row["reference_s"] > 0 and row["encode_texts_per_s"] > 0
        assert row["step_kept_s"] > 0 and row["kept_step_over_encode"] > 0
        assert row["items"] <= doc["catalog"]["items"]
    quality = doc["quality"]
    # the training catalog is the warm items only; the quality run scores base and trained on both splits
    assert quality["catalog_items"] == doc["catalog"]["items"] < json.loads((shop / "stats.json").read_text())["items"]
    for who in ("base", "trained"):
        assert set(quality["metrics"][who]) == {"val", "test"}
    assert "exact fp32" in proc.stdout and "quality:" in proc.stdout
