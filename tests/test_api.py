"""The Python API (beeray/api.py): docs/api.md's session runs as written, its figures equal the CLI's,
and the functions neither print nor change their arguments."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import beeray
from beeray.cli import main
from beeray.data.prepared import PreparedData
from beeray.metrics import METRICS

REPO = Path(__file__).resolve().parents[1]
MINILM = "all-MiniLM-L6-v2"


def docs_session() -> str:
    """The first python block of docs/api.md."""
    text = (REPO / "docs" / "api.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.slow
def test_the_documented_session_runs_and_equals_the_cli(ray_session, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """docs/api.md's block, as written except MiniLM -> a tiny random model (no download, seconds a step):
    prepare -> train -> evaluate -> recommend through `import beeray` only; then `beeray evaluate` on the
    same folder and models gives the same numbers."""
    monkeypatch.chdir(tmp_path)
    code = docs_session()
    assert MINILM in code and "import beeray\n" in code
    scope: dict = {}
    exec(compile(code.replace(MINILM, str(tiny_model_dir)), "docs/api.md", "exec"), scope)

    data, run, table, recs = scope["data"], scope["run"], scope["table"], scope["recs"]
    assert isinstance(data, PreparedData)
    assert Path(run.model_path).is_dir() and run.metrics["kept"]["epoch"] in (1, 2)
    epochs = run.history[run.history["kind"] == "epoch"]
    assert list(epochs["epoch"]) == [0, 1, 2] and epochs["val_ndcg@100"].notna().all()
    assert [len(p) for p in run.load().encode(["a red kettle"])] == [32]
    assert list(table["model"]) == [run.model_path, str(tiny_model_dir), "baseline:cbf+popularity"]
    assert (table["split"] == "test").all() and (table["split_digest"] == data.split_digest).all()
    assert list(recs["rank"]) == [1, 2, 3, 4, 5] and not set(recs["item_id"]) & {"b000-printer", "b001-toner"}
    assert recs["score"].is_monotonic_decreasing and recs["text"].notna().all()

    # The CLI on the same folder: the same rows, the same numbers.
    csv = tmp_path / "cli.csv"
    assert main(["evaluate", "--data", str(data.root), "--model", run.model_path, "--model", str(tiny_model_dir),
                 "--baseline", "cbf+popularity", "--split", "test", "--out", str(csv)]) == 0
    cli = pd.read_csv(csv)
    assert list(cli["model"]) == list(table["model"])
    for column in [*METRICS, *(f"{m}_stderr" for m in METRICS), "users", "excluded_users"]:
        np.testing.assert_allclose(table[column].to_numpy(float), cli[column].to_numpy(float), rtol=1e-12,
                                   err_msg=column)


def test_evaluate_and_recommend_print_nothing_and_leave_their_arguments(shop, tiny_model_dir, capsys):
    models, baselines = [str(tiny_model_dir)], {"text-popularity": {"alpha": 1.0}}
    given = copy.deepcopy((models, baselines))
    table = beeray.evaluate(shop, models=models, baselines=baselines, split="val", bootstrap=50, progress=False,
                            keep_per_user=True)
    recs = beeray.recommend(["b000-printer"], k=3, model=str(tiny_model_dir), items=shop)
    assert capsys.readouterr() == ("", "")  # a library: log lines go to `logging`, not to the console
    assert (models, baselines) == given
    assert list(table["model"]) == [str(tiny_model_dir), "baseline:text-popularity"]
    assert '"alpha": 1.0' in table.loc[1, "params"]  # the fixed hyperparameter was used, not searched
    per_user = table.loc[0, "per_user"]  # each user's values, for paired comparisons of one's own
    assert np.mean(per_user["ndcg@100"]) == pytest.approx(table.loc[0, "ndcg@100"], rel=1e-9)
    assert len(recs) == 3 and "b000-printer" not in set(recs["item_id"])


def test_compare_pairs_every_row_with_the_reference(shop, tiny_model_dir):
    result = beeray.compare(shop, models=[str(tiny_model_dir)], baselines=["text-popularity", "cbf+popularity"], split="test",
                            reference="baseline:text-popularity", bootstrap=50, progress=False)
    assert set(result.paired["row"]) == {str(tiny_model_dir), "baseline:cbf+popularity"}
    assert set(result.paired["metric"]) == set(METRICS) and set(result.paired["reference"]) == {"baseline:text-popularity"}
    # a paired difference is the difference of the rows' means on the same users
    table = result.table.set_index("model")
    cell = result.paired.query("row == 'baseline:cbf+popularity' and metric == 'ndcg@100'").iloc[0]
    assert cell["diff"] == pytest.approx(table.loc["baseline:cbf+popularity", "ndcg@100"]
                                         - table.loc["baseline:text-popularity", "ndcg@100"], abs=1e-12)
    assert "per_user" not in result.table.columns  # as `beeray compare` writes its table
    assert len(result.oracle) == 1


def test_user_errors_are_one_line_beeray_errors(shop, tmp_path):
    with pytest.raises(beeray.BeerayError, match="unknown key.*epochz"):
        beeray.train(data=shop, out=tmp_path / "run", epochz=2)
    with pytest.raises(beeray.BeerayError, match="no data"):
        beeray.train(out=tmp_path / "run")
    with pytest.raises(beeray.BeerayError, match="not found"):
        beeray.evaluate(tmp_path / "missing")
    with pytest.raises(beeray.BeerayError, match="unknown option.*bootstraps"):
        beeray.evaluate(shop, bootstraps=10)
    with pytest.raises(beeray.BeerayError, match="unknown baseline"):
        beeray.evaluate(shop, baselines=["itemnn"])
    with pytest.raises(beeray.BeerayError, match="goodlens"):
        beeray.prepare("goodlens", tmp_path / "gl", input="data/x")


def test_a_config_given_is_copied_not_changed(shop, tmp_path):
    from beeray.api import train_config_of, tune_config_of
    from beeray.config import to_dict, train_config

    values = {"data": str(shop), "out": str(tmp_path / "run"), "epochs": 2}
    cfg = train_config_of(values, {"lr": 5e-5})
    assert values == {"data": str(shop), "out": str(tmp_path / "run"), "epochs": 2}
    assert (cfg.lr, cfg.epochs) == (5e-5, 2)
    grouped = train_config_of({"optimizer": {"epochs": 2}, "data": {"data": str(shop)}}, {"out": str(tmp_path / "run")})
    assert to_dict(grouped) == to_dict(train_config(None, values))  # sections, as in a YAML file
    base = train_config(None, values)
    again = train_config_of(base, {"epochs": 3})
    assert base.epochs == 2 and again.epochs == 3 and again.data == base.data
    with pytest.raises(beeray.BeerayError, match="argument epochs"):  # a bad value names where it came from
        train_config_of(values, {"epochs": "many"})
    search = {"train": {"data": "rel/data", "out": "rel/out"},
              "search": {"space": {"lr": {"type": "loguniform", "low": 1e-6, "high": 1e-3}}, "num_samples": 2}}
    tuned = tune_config_of(search, {"epochs": 2})
    assert Path(tuned.train.data).is_absolute() and tuned.train.epochs == 2
    assert search["train"] == {"data": "rel/data", "out": "rel/out"}


def test_import_beeray_is_light():
    """`import beeray` (and the CLI's start) loads neither torch nor Ray nor pandas."""
    code = "import sys, beeray; print(sorted(m for m in ('torch', 'ray', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
    assert {"prepare", "train", "evaluate", "recommend", "BeerayError"} <= set(dir(beeray))
