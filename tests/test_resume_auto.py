"""`--resume auto` (train and tune): start when --out holds no run, continue one that exists, refuse one
started with another config in one line (exit 2). Fast checks without Ray, then one Ray test of two
short runs (slow)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml

from beeray.files import write_json
from beeray.checkpoint import resolve_resume
from beeray.cli import main
from beeray.config import to_dict, train_config

SHOP_YAML = Path(__file__).resolve().parents[1] / "experiments" / "tune-shop-cpu.yaml"

SMALL = ["--batch-size", "64", "--m", "96", "--max-seq-length", "24", "--encode-batch-size", "48", "--seed", "3",
         "--no-baseline", "--no-tracking", "--no-eval"]


def _argv(shop, model, out, *extra):
    return ["train", "--data", str(shop), "--model", str(model), "--out", str(out), *SMALL, *extra]


def test_resolve_resume(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="beeray")  # the library logs; `beeray train` prints the lines
    assert resolve_resume(tmp_path / "out", "ray/train", False) is False
    assert resolve_resume(tmp_path / "out", "ray/train", True) is True  # plain --resume: prepare_run_dir checks
    assert resolve_resume(tmp_path / "out", "ray/train", "auto") is False
    assert "no run in" in caplog.text
    caplog.clear()
    (tmp_path / "out" / "ray" / "train").mkdir(parents=True)
    assert resolve_resume(tmp_path / "out", "ray/train", "auto") is True
    assert "holds a run: resuming it" in caplog.text


def test_train_resume_auto_refuses_another_config_in_one_line(shop, tiny_model_dir, tmp_path, capsys):
    """A run started in --out (its Ray state and config.json) with lr 1e-3; the same command with lr 5e-4
    is refused before Ray starts, naming the key, as plain --resume refuses it."""
    out = tmp_path / "run"
    cfg = train_config(None, {"data": str(shop.resolve()), "model": str(tiny_model_dir), "out": str(out),
                              "lr": 1e-3, "batch_size": 64, "m": 96, "max_seq_length": 24,
                              "encode_batch_size": 48, "seed": 3, "eval_every_epoch": False, "tracking": "none"})
    (out / "ray" / "train").mkdir(parents=True)
    write_json(out / "config.json", to_dict(cfg))
    for resume in (["--resume", "auto"], ["--resume"]):
        assert main(_argv(shop, tiny_model_dir, out, "--lr", "5e-4", *resume)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("beeray train: error:")
        assert "different config (lr: 0.001 -> 0.0005)" in err
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3  # the run's record is untouched


def test_plain_resume_still_needs_a_run(shop, tiny_model_dir, tmp_path, capsys):
    assert main(_argv(shop, tiny_model_dir, tmp_path / "none", "--resume")) == 2
    assert "--resume: no previous run in" in capsys.readouterr().err


def test_tune_resume_auto_refuses_another_search_config(shop, tmp_path, capsys):
    raw = yaml.safe_load(SHOP_YAML.read_text())
    raw["train"].update(data=str(shop))
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "search"
    (out / "ray" / "tune").mkdir(parents=True)
    write_json(out / "tune_config.json", {"train": {}, "search": {}})  # a search with another config
    assert main(["tune", "--config", str(path), "--out", str(out), "--resume", "auto"]) == 2
    captured = capsys.readouterr()
    assert "holds a search: resuming it" in captured.out
    assert captured.err.count("\n") == 1 and "different config (changed: search, changed: train)" in captured.err


@pytest.mark.slow
def test_train_resume_auto_starts_then_continues(ray_session, shop, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(shop, tiny_model_dir, out, "--epochs", "1", "--lr", "1e-3", "--resume", "auto")) == 0
    assert "no run in" in capsys.readouterr().out
    first = pd.read_csv(out / "history.csv")
    assert list(first[first["kind"] == "epoch"]["epoch"]) == [1]

    # Submitted again with one more epoch (epochs may change on resume): the run continues from its
    # checkpoint. Epoch 1's row comes back from the checkpoint as it was (its wall time included),
    # which a run started over would have measured anew.
    assert main(_argv(shop, tiny_model_dir, out, "--epochs", "2", "--lr", "1e-3", "--resume", "auto")) == 0
    assert "holds a run: resuming it" in capsys.readouterr().out
    second = pd.read_csv(out / "history.csv")
    epochs = second[second["kind"] == "epoch"]
    assert list(epochs["epoch"]) == [1, 2]
    # (`kept` marks the run's saved epoch, a property of the run as it ended, not of the epoch's record)
    pd.testing.assert_series_equal(epochs.iloc[0].drop("kept"), first[first["kind"] == "epoch"].iloc[0].drop("kept"),
                                   check_names=False)
    assert epochs["kept"].astype(bool).tolist() == [False, True]  # no validation: the last epoch
    steps = second[second["kind"] == "step"]
    assert list(steps["step"]) == list(range(1, len(steps) + 1))  # one row per step, none twice
    assert json.loads((out / "metrics.json").read_text())["config"]["epochs"] == 2

    # And a different recipe is refused in one line naming the key (before Ray is asked for anything).
    assert main(_argv(shop, tiny_model_dir, out, "--epochs", "2", "--lr", "5e-4", "--resume", "auto")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lr: 0.001 -> 0.0005" in err
