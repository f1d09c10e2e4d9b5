"""`beeray evaluate` / `beeray compare` on tiny prepared folders with tiny random encoders."""

from __future__ import annotations

import csv
import json

import pytest

from beeray.cli import main
from beeray.data.prepared import PreparedData
from beeray.evaluate import evaluate
from beeray.models import load_model
from tests.helpers import tiny_model
from tests.test_evaluate import write_prepared

FAST = ["--bootstrap", "100", "--batch-size", "16", "--device", "cpu"]
METRICS = ("recall@20", "recall@50", "ndcg@100")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    models = []
    for seed in (0, 1):
        tiny_model(root / f"m{seed}", seed=seed)
        models.append(str(root / f"m{seed}" / "st"))
    data = [write_prepared(root / "dA", seed=0, dataset="alpha"), write_prepared(root / "dB", seed=1, dataset="beta")]
    return root, models, data


def direct(model_path, data_dir, split="test"):
    return evaluate(load_model(model_path, device="cpu"), PreparedData.load(data_dir), split,
                    batch_size=16, bootstrap=100, seed=0, show_progress=False)


def test_evaluate_json_equals_api(env, capsys):
    root, models, (d_a, _) = env
    out = root / "one.json"
    assert main(["evaluate", "--data", str(d_a), "--model", models[0], "--split", "test", "--out", str(out), *FAST]) == 0
    got = json.loads(out.read_text())
    want = direct(models[0], d_a)
    assert got["model"] == models[0] and got["split"] == "test" and got["data"] == str(d_a)
    for m in METRICS:
        assert got[m] == pytest.approx(want[m], abs=1e-12)
        assert got["stderr"][m] == pytest.approx(want["stderr"][m], abs=1e-12)
    assert got["users"] == want["users"] and got["excluded_users"] == want["excluded_users"]
    printed = capsys.readouterr().out
    assert "recall@20" in printed and f"{want['recall@20']:.4f} ± " in printed


def test_evaluate_several_models_csv(env):
    root, models, (d_a, _) = env
    out = root / "models.csv"
    assert main(["evaluate", "--data", str(d_a), "--model", models[0], "--model", models[1],
                 "--split", "val", "--out", str(out), *FAST]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["model"] for r in rows] == models
    for row, model in zip(rows, models):
        want = direct(model, d_a, "val")
        assert row["split"] == "val" and int(row["users"]) == want["users"]
        for m in METRICS:
            assert float(row[m]) == pytest.approx(want[m], abs=1e-12)
            assert float(row[f"{m}_stderr"]) == pytest.approx(want["stderr"][m], abs=1e-12)
    assert rows[0]["ndcg@100"] != rows[1]["ndcg@100"]  # two different encoders


def test_compare_table(env):
    root, models, (d_a, d_b) = env
    out = root / "table.csv"
    assert main(["compare", "--data", str(d_a), "--data", str(d_b), "--model", models[0], "--model", models[1],
                 "--split", "test", "--out", str(out), *FAST]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["model"] for r in rows] == models
    assert {"alpha/recall@20", "beta/ndcg@100", "alpha/users", "beta/recall@50_stderr"} <= set(rows[0])
    for row, model in zip(rows, models):
        for label, d in (("alpha", d_a), ("beta", d_b)):
            want = direct(model, d)
            assert int(row[f"{label}/users"]) == want["users"]
            for m in METRICS:
                assert float(row[f"{label}/{m}"]) == pytest.approx(want[m], abs=1e-12)

    out_json = root / "table.json"
    assert main(["compare", "--data", str(d_a), "--model", models[0], "--out", str(out_json), *FAST]) == 0
    got = json.loads(out_json.read_text())
    assert got["split"] == "test" and got["datasets"] == {"alpha": str(d_a)}
    assert got["results"][models[0]]["alpha"]["ndcg@100"] == pytest.approx(direct(models[0], d_a)["ndcg@100"])


def test_bad_input(env, capsys, tmp_path):
    _, models, (d_a, _) = env
    missing = tmp_path / "nope"
    assert main(["evaluate", "--data", str(missing), "--model", models[0]]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["compare", "--data", str(d_a), "--data", str(missing), "--model", models[0]]) == 2
    assert str(missing) in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--data", str(d_a), "--split", "train"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(d_a), "--model", str(tmp_path / "no-such-model")]) == 2
    assert "cannot load model" in capsys.readouterr().err
