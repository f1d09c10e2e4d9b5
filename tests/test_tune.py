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
from beeray.tune import parse_tune_config

REPO = Path(__file__).resolve().parents[1]
SHOP_YAML = REPO / "experiments" / "tune-shop-cpu.yaml"


def _raw(**search):
    raw = yaml.safe_load(SHOP_YAML.read_text())
    raw["train"]["data"] = "/nonexistent/prepared"
    raw["search"].update(search)
    return raw


# ---------------------------------------------------------------- fast: parsing and bad input

def test_experiment_configs_parse():
    for name in ("tune-shop-cpu", "tune-ml-small-cpu", "tune-goodbooks"):
        cfg = parse_tune_config(yaml.safe_load((REPO / "experiments" / f"{name}.yaml").read_text()), name)
        names = [s.name for s in cfg.space]
        assert "lr" in names and cfg.metric == "val_ndcg@100" and cfg.scheduler.type == "asha"
        lr = next(s for s in cfg.space if s.name == "lr")
        assert lr.type == "loguniform" and 0 < lr.low < lr.high  # "1.0e-5" read as a number, never evaluated
    gb = parse_tune_config(yaml.safe_load((REPO / "experiments" / "tune-goodbooks.yaml").read_text()), "gb")
    assert gb.train.num_workers == 4 and gb.train.use_gpu and gb.train.batch_size == 1024
    assert {256, 384} == set(next(s for s in gb.space if s.name == "max_seq_length").values)


def test_space_types_and_trial_config():
    from beeray.tune import trial_config

    cfg = parse_tune_config(_raw(space={"lr": {"type": "uniform", "low": "1e-5", "high": 0.01},
                                        "m": {"type": "choice", "values": [64, 128]},
                                        "epochs": {"type": "randint", "low": 1, "high": 3}},
                                 scheduler="none"), "t")
    assert [s.type for s in cfg.space] == ["uniform", "choice", "randint"]
    assert cfg.max_epochs == 2 and cfg.scheduler.type == "none"
    # A trial never sees the test split and never trains on the validation items, whatever the base says.
    cfg.train.evaluate_test, cfg.train.full_train = True, True
    trial = trial_config(cfg.train, {"lr": 0.001, "m": 64, "epochs": 2})
    assert (trial.evaluate_test, trial.full_train, trial.lr, trial.m, trial.epochs) == (False, False, 0.001, 64, 2)


@pytest.mark.parametrize("search, message", [
    ({"space": {}}, "search.space is empty"),
    ({"space": None}, "search.space is empty"),
    ({"space": {"lr": {"type": "loguniform", "low": 1e-3, "high": 1e-5}}}, "low (0.001) must be < high"),
    ({"space": {"lr": {"type": "loguniform", "low": 1e-3, "high": 1e-3}}}, "must be < high"),
    ({"space": {"epochs": {"type": "randint", "low": 3, "high": 3}}}, "high is exclusive"),
    ({"space": {"lr": {"type": "loguniform", "low": 0, "high": 1e-3}}}, "loguniform needs low > 0"),
    ({"space": {"m": {"type": "choice", "values": []}}}, "non-empty list"),
    ({"space": {"m": {"type": "choice", "values": [64, 64]}}}, "repeat"),
    ({"space": {"m": {"type": "choice", "values": [64, "many"]}}}, "m must be int"),
    ({"space": {"lr": {"type": "normal", "low": 0, "high": 1}}}, "unknown type 'normal'"),
    ({"space": {"lr": {"low": 0, "high": 1}}}, "unknown type None"),
    ({"space": {"learning_rate": {"type": "uniform", "low": 0.1, "high": 1}}}, "'learning_rate' is not a training config key"),
    ({"space": {"data": {"type": "choice", "values": ["a", "b"]}}}, "cannot be searched"),
    ({"space": {"evaluate_test": {"type": "choice", "values": [True, False]}}}, "cannot be searched"),
    ({"space": {"m": {"type": "uniform", "low": 10, "high": 20}}}, "use randint or choice"),
    ({"space": {"lr": {"type": "uniform", "low": "abc", "high": 1}}}, "expected a number"),
    ({"space": {"lr": {"type": "uniform", "low": -1, "high": 1}}}, "lr must be > 0"),
    ({"space": {"lr": {"type": "uniform", "low": 0.1, "high": 1, "step": 2}}}, "unexpected key(s) step"),
    ({"metric": "test_ndcg@100"}, "not a reported validation metric"),
    ({"metric": "val_ndcg@10"}, "not a reported validation metric"),
    ({"num_samples": 0}, "num_samples must be >= 1"),
    ({"num_samples": -3}, "num_samples must be >= 1"),
    ({"max_concurrent_trials": 0}, "max_concurrent_trials must be >= 1"),
    ({"mode": "maximum"}, "mode must be max or min"),
    ({"scheduler": {"type": "pbt"}}, "scheduler.type must be asha or none"),
    ({"scheduler": {"type": "asha", "reduction_factor": 1}}, "reduction_factor >= 2"),
    ({"samples": 4}, "unknown search key(s) samples"),
])
def test_bad_search_config(search, message):
    with pytest.raises(BeerayError) as err:
        parse_tune_config(_raw(**search), "bad.yaml")
    assert message in str(err.value)
    assert "bad.yaml" in str(err.value) and "\n" not in str(err.value)


def test_missing_sections_and_bad_train_keys():
    raw = _raw()
    del raw["search"]
    with pytest.raises(BeerayError, match="missing `search:`"):
        parse_tune_config(raw, "x.yaml")
    raw = _raw()
    raw["train"]["batch_sise"] = 3
    with pytest.raises(BeerayError, match="unknown key"):
        parse_tune_config(raw, "x.yaml")
    raw = _raw()
    raw["extra"] = {}
    with pytest.raises(BeerayError, match="unknown top-level"):
        parse_tune_config(raw, "x.yaml")


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_raw(space={})))
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

def _shop_config(shop, model, out, **search):
    from beeray.tune import load_tune_config

    raw = yaml.safe_load(SHOP_YAML.read_text())
    raw["train"].update(data=str(shop), model=str(model), out=str(out))
    # The tiny random encoder needs a larger lr than MiniLM to learn in a few steps.
    raw["search"]["space"]["lr"] = {"type": "loguniform", "low": 3e-4, "high": 3e-3}
    raw["search"]["space"]["epochs"] = {"type": "randint", "low": 1, "high": 3}
    raw["search"].update(search)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_tune_config(path)


class _StopAfter:
    """A Tune callback that presses Ctrl-C once `n` trials finished: an interrupted search."""

    def __new__(cls, n):
        import os
        import signal

        from ray.tune import Callback

        class StopAfter(Callback):
            def __init__(self):
                self.finished = {}

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.finished[trial.trial_id] = dict(trial.last_result)
                if len(self.finished) == n:
                    os.kill(os.getpid(), signal.SIGINT)  # Tune saves its state and stops

        return StopAfter()


@pytest.mark.slow
def test_search_interrupted_resumed_then_best_retrained_and_tested_once(
        ray_session, shop, tiny_model_dir, tmp_path):
    from beeray.data.prepared import PreparedData
    from beeray.tune import run_search, tune

    out = tmp_path / "tune"
    cfg = _shop_config(shop, tiny_model_dir, out, num_samples=4, max_concurrent_trials=2)

    # 1) An interrupted search: the experiment breaks once two trials have finished.
    stop = _StopAfter(2)
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
    for result_json in (out / "ray" / "tune").glob("*/result.json"):
        for line in result_json.read_text().splitlines():
            keys = json.loads(line).keys()
            assert not [k for k in keys if k.startswith("test")], keys
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
