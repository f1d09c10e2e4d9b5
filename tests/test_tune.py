"""beeray tune: config parsing and bad input (fast), a real interrupted + resumed search with the final
retrain (slow, one Ray session for the module), and a search whose trials all fail (slow)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from beeray.cli import main
from beeray.errors import BeerayError

REPO = Path(__file__).resolve().parents[1]
SHOP_YAML = REPO / "experiments" / "tune-shop-cpu.yaml"


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    raw = yaml.safe_load(SHOP_YAML.read_text())
    raw["search"]["space"] = {}
    bad.write_text(yaml.safe_dump(raw))
    assert main(["tune", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("beeray tune: error:") and "search.space is empty" in err and "\n" not in err
    assert main(["tune", "--config", str(tmp_path / "missing.yaml")]) == 2
    good = tmp_path / "good.yaml"
    good.write_text(SHOP_YAML.read_text().replace("data/synthetic", str(tmp_path / "nothing")))
    assert main(["tune", "--config", str(good), "--out", str(tmp_path / "o")]) == 2  # no prepared data
    assert "nothing" in capsys.readouterr().err
    assert not (tmp_path / "o" / "ray").exists()


# ---------------------------------------------------------------- slow: real searches on Ray

def _shop_config(shop, model, out, train=None, **search):
    from beeray.api import tune_config_of

    raw = yaml.safe_load(SHOP_YAML.read_text())
    raw["train"].update(data=str(shop), model=str(model), out=str(out), **(train or {}))
    # The tiny random encoder needs a larger lr than MiniLM to learn in a few steps.
    raw["search"]["space"]["lr"] = {"type": "loguniform", "low": 3e-4, "high": 3e-3}
    raw["search"]["space"]["epochs"] = {"type": "randint", "low": 1, "high": 3}
    raw["search"].update(search)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return tune_config_of(path)


class _StopAfter:
    """A Tune callback that presses Ctrl-C once `n` trials finished: an interrupted search.

    Tune restores an experiment's callbacks with it, so it fires once only (`fired` is a file).
    """

    def __new__(cls, n, fired):
        import os
        import signal

        from ray.tune import Callback

        class StopAfter(Callback):
            def __init__(self):
                self.finished = {}

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.finished[trial.trial_id] = dict(trial.last_result)
                if len(self.finished) == n and not fired.exists():
                    fired.touch()
                    os.kill(os.getpid(), signal.SIGINT)  # Tune saves its state and stops

        return StopAfter()


@pytest.mark.slow
def test_search_interrupted_resumed_then_best_retrained_and_tested_once(
        ray_session, shop, tiny_model_dir, tmp_path):
    from beeray.data.prepared import PreparedData
    from beeray.tuner import run_search, tune

    out = tmp_path / "tune"
    # Mid-epoch checkpoints too (9 steps per epoch): their reports must look like every other one.
    cfg = _shop_config(shop, tiny_model_dir, out, train={"checkpoint_every": 4}, num_samples=4,
                       max_concurrent_trials=2)

    # 1) An interrupted search: the experiment breaks once two trials have finished.
    stop = _StopAfter(2, tmp_path / "stopped")
    with pytest.raises(BeerayError, match="interrupted .* continue it with --resume"):
        run_search(cfg, callbacks=[stop])
    finished = stop.finished
    assert len(finished) >= 2
    with pytest.raises(BeerayError, match="already holds a search"):
        run_search(cfg)

    # 2) Resume: the finished trials are kept as they are, the rest run; then the final retrain.
    result = tune(cfg, resume=True)

    rows = {r.trial_id: r for r in result.rows}
    assert len(rows) == 4 and all(r.status == "TERMINATED" for r in rows.values())
    for trial_id, last in finished.items():
        # Not re-run: same number of epochs reported, the same last report (timestamp included).
        assert len(rows[trial_id].history) == last["epoch"]
        progress = pd.read_csv(next((out / "ray" / "tune").glob(f"*{trial_id}*/progress.csv")))
        assert progress["timestamp"].iloc[-1] == last["timestamp"]
        assert len(progress) == last["training_iteration"]

    # Results table: one row per trial, per-epoch metric columns, best value; best.json = its argmax.
    table = pd.read_csv(out / "tune_results.csv")
    assert len(table) == 4 and {"lr", "m", "epochs", "val_ndcg@100_epoch1", "best_val_ndcg@100", "status",
                                "time_s", "error"} <= set(table.columns)
    top = table.loc[table["best_val_ndcg@100"].idxmax()]
    best = json.loads((out / "best.json").read_text())
    assert best["trial_id"] == top["trial_id"]
    assert best["value"] == pytest.approx(top["best_val_ndcg@100"])
    assert best["best_epoch"] == top["best_epoch"]
    assert best["validation"]["val_ndcg@100"] == pytest.approx(top["best_val_ndcg@100"])
    for png in ("trials.png", "hyperparameters.png"):
        assert (out / png).stat().st_size > 1000

    # Trials: validation only, training split only. No reported metric mentions the test split.
    # Every report (epoch 0 = the base model, mid-epoch checkpoints, epoch ends) carries the
    # search metric and `epoch` = epochs completed, never decreasing.
    mid_epoch = 0
    for result_json in (out / "ray" / "tune").glob("*/result.json"):
        reports = [json.loads(line) for line in result_json.read_text().splitlines()]
        for report in reports:
            assert not [k for k in report if k.startswith("test")], report.keys()
            assert report["val_ndcg@100"] is not None and isinstance(report["epoch"], int)
            mid_epoch += not report["epoch_end"]
        assert reports[0]["epoch"] == 0 and reports[0]["epoch_end"]
        epochs = [r["epoch"] for r in reports]
        assert epochs == sorted(epochs) and epochs[-1] == sum(r["epoch_end"] for r in reports) - 1
    assert mid_epoch > 0
    states = list((out / "ray" / "trials").glob("trial-*/checkpoint_*/state.json"))
    assert {p.parts[-3].removeprefix("trial-") for p in states} == set(rows)
    for state in states:
        trial_cfg = json.loads(state.read_text())["config"]
        assert trial_cfg["evaluate_test"] is False and trial_cfg["full_train"] is False
    data = PreparedData.load(shop)
    test_items = set(data.split["test_items"])
    train_items = set(np.concatenate(pd.read_parquet(data.train_path(full=False))["items"].to_list()).tolist())
    assert not train_items & test_items  # what every trial trained on

    # Final model: best config, its best epoch count, train + validation, the only test evaluation.
    final = json.loads((out / "final" / "metrics.json").read_text())
    assert final["config"]["full_train"] is True and final["config"]["evaluate_test"] is True
    assert final["config"]["epochs"] == best["best_epoch"]
    for key, value in best["config"].items():
        assert final["config"][key] == pytest.approx(value)
    assert set(final) >= {"base", "trained"} and set(final["trained"]) == {"val", "test"}
    assert best["final"]["metrics"]["trained"]["test"] == final["trained"]["test"]
    # Test metrics exist once per model, in the final run only (the trainer evaluates in a Ray task,
    # so a spy cannot count calls; the trials' histories above and here carry validation keys only).
    assert set(final["base"]) == {"val", "test"} and set(final["trained"]) == {"val", "test"}
    for state in states:
        for row in json.loads(state.read_text())["history"]:
            assert not [k for k in row if "test" in k], row
    assert (out / "final" / "model" / "config.json").exists()

    # MLflow (the default store beside OUT): a run per trial through Ray's MLflowLoggerCallback,
    # with its sampled values and every validation report, and the final retrain; read back
    # through MLflow's own API.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("beeray").experiment_id])
    assert all(r.data.tags["beeray.search"] == str(out) for r in runs)
    trial_runs = {}
    for r in runs:
        if "trial_name" in r.data.tags:
            trial_runs.setdefault(next(t for t in rows if t in r.data.tags["trial_name"]), []).append(r)
    assert set(trial_runs) == set(rows)
    for trial_id, its_runs in trial_runs.items():
        logged = {p.value for r in its_runs for p in client.get_metric_history(r.info.run_id, "val_ndcg_at_100")}
        assert {h["val_ndcg@100"] for h in rows[trial_id].history} <= logged  # every epoch's validation
        assert float(its_runs[0].data.params["lr"]) == pytest.approx(rows[trial_id].config["lr"])
    (final_run,) = [r for r in runs if r.data.tags.get("beeray.role") == "final retrain"]
    assert final_run.data.metrics["trained_test_ndcg_at_100"] == pytest.approx(final["trained"]["test"]["ndcg@100"])


@pytest.mark.slow
def test_all_trials_failing_are_reported(ray_session, shop, tmp_path, capsys):
    out = tmp_path / "fail"
    cfg_path = tmp_path / "fail.yaml"
    raw = yaml.safe_load(SHOP_YAML.read_text())
    raw["train"].update(data=str(shop), model=str(tmp_path / "no-such-model"), out=str(out))
    raw["search"].update(num_samples=2, max_concurrent_trials=2)
    cfg_path.write_text(yaml.safe_dump(raw))
    assert main(["tune", "--config", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert "all 2 trials failed" in err and "no-such-model" in err
    table = pd.read_csv(out / "tune_results.csv")
    assert len(table) == 2 and set(table["status"]) == {"ERROR"} and table["error"].notna().all()
    assert not (out / "final").exists() and not (out / "best.json").exists()
