"""benchmarks/gpu.py's CPU mode: the code a GPU run executes, on a tiny model, so it cannot rot.

The GPU machine has no Ray or Optuna: --quick runs here in a Python where importing them fails, and
scores its quality run in process with beeray's own metrics.
"""

import json
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
GPU_PY = REPO / "benchmarks" / "gpu.py"

# Run gpu.py as __main__ in an interpreter where `import ray` (optuna, recpack, and their submodules) fails.
# recpack is in the list so that a return of it to the GPU path fails here.
WITHOUT = """
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"ray", "optuna", "recpack"}:
            raise ImportError(f"{name} is not installed on the GPU machine")
sys.meta_path.insert(0, Absent())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(args: list[str], isolated: bool) -> subprocess.CompletedProcess:
    prefix = [sys.executable, "-c", WITHOUT] if isolated else [sys.executable]
    proc = subprocess.run(prefix + [str(GPU_PY), *args], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def check_exact(doc: dict) -> None:
    exact = {row["precision"]: row for row in doc["exact"]}
    assert set(exact) == {"fp32", "bf16", "fp16"}
    for name, tolerance in (("fp32", 1e-5), ("bf16", 2e-3), ("fp16", 2e-3)):
        assert exact[name]["rel_error"] < tolerance and exact[name]["kept_graphs_rel_error"] < tolerance
    assert all(row["no_replay_rel_error"] > 1e-2 and row["ok"] for row in exact.values())
    assert doc["nccl"]["ok"] and doc["nccl"]["backend"] == "gloo"


def check_speed(doc: dict, precisions: set[str]) -> None:
    speed = {(r["model"], r["precision"]): r for r in doc["speed"]}
    assert set(speed) == {(m, p) for m in ("all-MiniLM-L6-v2", "mpnet-shapes") for p in precisions}
    for row in speed.values():
        assert row["step_s"] > 0 and row["reference_s"] > 0 and row["encode_texts_per_s"] > 0
        assert row["step_kept_s"] > 0 and row["kept_step_over_encode"] > 0
        assert row["items"] <= doc["catalog"]["items"]


def test_quick_runs_without_ray_or_optuna_and_scores_in_process(shop, tiny_model_dir, tmp_path):
    out = tmp_path / "gpu.json"
    proc = run(["--cpu", "--data", str(shop), "--model", str(tiny_model_dir), "--out", str(out)], isolated=True)
    doc = json.loads(out.read_text())
    assert doc["mode"] == "quick" and doc["parts"] == ["exact", "nccl", "sync", "speed", "quality"]
    check_exact(doc)
    assert doc["sync"]["ok"] and "CUDA only" in doc["sync"]["skipped"]
    check_speed(doc, {"bf16"})
    quality = doc["quality"]
    # the training catalog is the warm items only
    assert quality["catalog_items"] == doc["catalog"]["items"] < json.loads((shop / "stats.json").read_text())["items"]
    assert quality["steps"] > 0
    for who in ("base", "trained"):
        assert set(quality["metrics"][who]) == {"val", "test"} and 0 <= quality["metrics"][who]["test"]["recall@20"] <= 1
        assert quality["metrics"][who]["test"]["users"] > 0
    assert "exact fp32" in proc.stdout and "trained  test  recall@20" in proc.stdout
    assert "gpu.py quick:" in proc.stdout


def test_full_runs_every_precision(shop, tiny_model_dir, tmp_path):
    out = tmp_path / "gpu.json"
    run(["--cpu", "--full", "--parts", "exact,nccl,speed,quality", "--data", str(shop), "--model",
         str(tiny_model_dir), "--out", str(out)], isolated=False)
    doc = json.loads(out.read_text())
    assert doc["mode"] == "full" and "sync" not in doc
    check_exact(doc)
    check_speed(doc, {"fp32", "bf16"})
    for who in ("base", "trained"):
        assert set(doc["quality"]["metrics"][who]) == {"val", "test"}


def test_benchmarks_never_import_the_tests_folder():
    for path in (REPO / "benchmarks").glob("*.py"):
        text = path.read_text()
        assert "from tests" not in text and "import tests" not in text, path.name
