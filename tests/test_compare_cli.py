"""`beeray evaluate` / `beeray compare` on tiny prepared folders with tiny random encoders."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from beeray.cli import main
from beeray.data.prepared import PreparedData
from beeray.errors import BeerayError
from beeray.evaluator import evaluate
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


# ---------------------------------------------------------------- paired comparisons

def fake_result(model: str, users: np.ndarray, values: dict[str, np.ndarray]) -> dict:
    """A result as score_split(keep_per_user=True) gives it, with its unpaired bootstrap stderr."""
    from beeray.evaluator import bootstrap_stderr

    table = np.column_stack([values[m] for m in METRICS])
    errs = bootstrap_stderr(table, 1000, 0)
    return {"model": model, **{m: float(values[m].mean()) for m in METRICS},
            "stderr": {m: float(e) for m, e in zip(METRICS, errs)},
            "per_user": {"users": users.tolist(), **{m: values[m].tolist() for m in METRICS}}}


def test_paired_bootstrap_finds_a_difference_the_unpaired_reading_misses():
    """Row a beats row b by 0.01 on almost every user, while users differ from each other by far more:
    unpaired, the gap is under one combined stderr; paired, the users' difficulty cancels and the gap
    is many stderr wide. The users come in another order in b: the pairing is by user id."""
    from beeray.evaluator import paired_differences

    rng = np.random.default_rng(0)
    users = np.arange(1000) * 3
    hard = rng.uniform(0, 1, size=1000)
    a = {m: hard + 0.01 + rng.normal(0, 0.002, 1000) for m in METRICS}
    b = {m: hard.copy() for m in METRICS}
    perm = rng.permutation(1000)
    res_a = fake_result("a", users, a)
    res_b = fake_result("b", users[perm], {m: v[perm] for m, v in b.items()})
    for m in METRICS:
        unpaired_z = (res_a[m] - res_b[m]) / np.hypot(res_a["stderr"][m], res_b["stderr"][m])
        assert abs(unpaired_z) < 1.5
    paired = paired_differences(res_a, res_b)
    for m in METRICS:
        assert paired[m]["diff"] == pytest.approx(0.01, abs=5e-4)
        assert paired[m]["stderr"] == pytest.approx(0.002 / np.sqrt(1000), rel=0.2)
        assert paired[m]["z"] > 50 and paired[m]["p"] < 1e-10
    # the same rows, equal on every user: nothing to report
    same = paired_differences(res_b, fake_result("b2", users, b))
    assert all(same[m]["diff"] == 0 and same[m]["p"] == 1.0 for m in METRICS)
    with pytest.raises(BeerayError, match="not scored on the same users"):
        paired_differences(res_a, fake_result("c", users[:-1], {m: v[:-1] for m, v in b.items()}))


def test_holm_adjustment():
    from beeray.evaluator import holm

    # Holm (1979): sorted p (0.01, 0.02, 0.03, 0.5) x (4, 3, 2, 1) = (0.04, 0.06, 0.06, 0.5), monotone
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 0.8 x 2 capped at 1, then monotone
    assert holm([]) == []


def test_compare_pairs_every_row_with_the_reference(env, capsys):
    root, models, (d_a, _) = env
    out = root / "paired.json"
    assert main(["compare", "--data", str(d_a), "--model", models[0], "--model", models[1], "--baseline",
                 "text-popularity", "--param", "text-popularity.alpha=1.0", "--text-model", models[0],
                 "--reference", models[1], "--reference", models[0], "--out", str(out), *FAST]) == 0
    got = json.loads(out.read_text())
    paired = got["paired"]
    assert list(paired["by_reference"]) == [models[1], models[0]] and paired["alpha"] == 0.05
    back = paired["by_reference"][models[0]]["alpha"][models[1]]
    table = paired["by_reference"][models[1]]["alpha"]
    assert set(table) == {models[0], "baseline:text-popularity"}
    for row, cells in table.items():
        for m in METRICS:
            want = got["results"][row]["alpha"][m] - got["results"][models[1]]["alpha"][m]
            assert cells[m]["diff"] == pytest.approx(want, abs=1e-12)  # the same users: mean of differences
            assert cells[m]["p"] <= cells[m]["p_holm"] <= 1
            assert cells[m]["verdict"] in ("better", "worse", "no clear difference")
    for m in METRICS:  # the other reference: the same pair, the other way round
        assert back[m]["diff"] == pytest.approx(-table[models[0]][m]["diff"], abs=1e-12)
        assert back[m]["stderr"] == pytest.approx(table[models[0]][m]["stderr"], rel=1e-9)
    assert "per_user" not in got["results"][models[0]]["alpha"]  # kept for the pairing only
    printed = capsys.readouterr().out
    assert f"each row minus {models[1]}, on the same users" in printed and "p_holm" in printed
    assert main(["compare", "--data", str(d_a), "--model", models[0], "--reference", "baseline:ease", *FAST]) == 2
    assert "--reference baseline:ease: not a row of this table" in capsys.readouterr().err
