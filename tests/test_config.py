"""Typed configs: training runs and searches parsed from YAML, one-line errors, --resume's checks."""

import re
from pathlib import Path

import pytest
import yaml

from beeray.config import TrainConfig, parse_overrides, parse_tune_config, to_dict, train_config
from beeray.errors import BeerayError

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
        assert "lr" in names and cfg.search.metric == "val_ndcg@100" and cfg.search.scheduler.type == "asha"
        lr = next(s for s in cfg.space if s.name == "lr")
        assert lr.type == "loguniform" and 0 < lr.low < lr.high  # "1.0e-5" read as a number, never evaluated
    gb = parse_tune_config(yaml.safe_load((REPO / "experiments" / "tune-goodbooks.yaml").read_text()), "gb")
    assert gb.train.num_workers == 4 and gb.train.use_gpu and gb.train.batch_size == 1024
    assert {256, 384} == set(next(s for s in gb.space if s.name == "max_seq_length").values)


def test_space_types_and_trial_config():
    from beeray.tuner import trial_config

    cfg = parse_tune_config(_raw(space={"lr": {"type": "uniform", "low": "1e-5", "high": 0.01},
                                        "m": {"type": "choice", "values": [64, 128]},
                                        "epochs": {"type": "randint", "low": 1, "high": 3}},
                                 scheduler="none"), "t")
    assert [s.type for s in cfg.space] == ["uniform", "choice", "randint"]
    assert cfg.max_epochs == 2 and cfg.search.scheduler.type == "none"
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


# ---------------------------------------------------------------- training configs

def test_train_config_coerces_and_refuses(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-5\nm: '512'\namp: bf16\nattention_dropout: null\nuse_gpu: 'yes'\n")
    cfg = train_config(str(path))
    assert (cfg.lr, cfg.m, cfg.amp, cfg.attention_dropout, cfg.use_gpu) == (1e-5, 512, "bf16", None, True)
    for text, message in [("m: 1.5", "m must be int"), ("amp: fp8", "amp must be one of auto, bf16, fp16 or off"),
                          ("parallel: model", "parallel must be items or data"), ("lr: fast", "lr must be float"),
                          ("epochs: true", "epochs must be int"), ("batch_sise: 3", "unknown key(s) batch_sise"),
                          ("lr: -1", "lr must be > 0"), ("activation_memory: -2", "activation_memory must be >= 0"),
                          ("save_dtype: int8", "save_dtype must be one of float32, float16 or bfloat16"),
                          ("- 1", "expected a mapping")]:
        path.write_text(text + "\n")
        with pytest.raises(BeerayError, match=re.escape(message)) as err:
            train_config(str(path))
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_gpus_per_worker_is_a_positive_whole_number_with_use_gpu(tmp_path):
    """0.5 GPU per worker would put two NCCL ranks on one device (NCCL refuses it at the first
    collective, after the cluster was reserved); 0 would train on no GPU at all."""
    from beeray.cli import main

    for value in ("0.5", "1.5"):
        with pytest.raises(BeerayError, match=r"gpus_per_worker must be int, got '?" + re.escape(value)):
            train_config(None, {"use_gpu": True, "gpus_per_worker": value})
    for value in (0, -1):
        with pytest.raises(BeerayError, match="gpus_per_worker must be a positive integer with use_gpu"):
            train_config(None, {"use_gpu": True, "gpus_per_worker": value})
    assert train_config(None, {"use_gpu": True, "gpus_per_worker": 2.0}).gpus_per_worker == 2
    assert train_config(None, {"use_gpu": False, "gpus_per_worker": 0}).gpus_per_worker == 0  # unused on CPU
    # from the command line: one line, exit 2, before anything starts
    assert main(["train", "--data", str(tmp_path), "--use-gpu", "--gpus-per-worker", "0.5"]) == 2


def test_overrides_are_yaml_scalars_never_evaluated():
    values = parse_overrides(["lr=3e-4", "m=1024", "model=__import__('os').system('x')", "amp=off"])
    cfg = train_config(None, values)
    assert (cfg.lr, cfg.m, cfg.amp) == (3e-4, 1024, "off")
    assert cfg.model == "__import__('os').system('x')"  # a string, nothing ran
    with pytest.raises(BeerayError, match="not key=value"):
        parse_overrides(["lr"])


def test_resume_checks_every_key_but_the_harmless_ones():
    saved = to_dict(TrainConfig(data="d", lr=1e-4))
    assert TrainConfig(data="d", lr=1e-4, epochs=9, out="elsewhere", max_failures=3,
                       save_dtype="float16").resume_conflicts(saved) == []
    for key, value in [("encode_batch_size", 64), ("attention_dropout", 0.0), ("amp", "off"), ("weight_decay", 0.1),
                       ("lr", 1e-5), ("m", 7), ("activation_memory", 4.0)]:
        changed = TrainConfig(**{"data": "d", "lr": 1e-4, key: value}).resume_conflicts(saved)
        assert len(changed) == 1 and changed[0].startswith(f"{key}: ")


def test_a_sectioned_yaml_is_the_same_run_as_a_flat_one(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("data: data/ml\nlr: 5.0e-5\nepochs: 3\nm: 256\nnum_workers: 2\ntracking: none\n")
    grouped = tmp_path / "grouped.yaml"
    grouped.write_text("optimizer: {lr: 5.0e-5, epochs: 3}\ndata: {data: data/ml, m: 256}\n"
                       "scaling: {num_workers: 2}\ntracking: {tracking: none}\n")
    assert to_dict(train_config(str(grouped))) == to_dict(train_config(str(flat)))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("optimizer: {m: 256}\n")
    with pytest.raises(BeerayError, match=r"^.*wrong.yaml: optimizer.m: m belongs to section data"):
        train_config(str(wrong))
    twice = tmp_path / "twice.yaml"
    twice.write_text("lr: 1.0e-5\noptimizer: {lr: 5.0e-5}\n")
    with pytest.raises(BeerayError, match="lr is given twice"):
        train_config(str(twice))
    # a tune config's train section reads the same way
    tune = parse_tune_config({"train": {"data": {"data": "d", "m": 64}},
                              "search": {"space": {"lr": {"type": "loguniform", "low": 1e-6, "high": 1e-3}}}}, "t")
    assert (tune.train.data, tune.train.m) == ("d", 64)


def test_the_rules_live_with_the_keys_and_docs_config_md_lists_them():
    """RESUME_MAY_CHANGE, FIXED_KEYS, ADDED_KEYS and the bounds are read from each key's `setting`, and
    docs/config.md carries the table generated from them, so a new key is documented or this fails."""
    from dataclasses import fields

    from beeray.config import ADDED_KEYS, FIXED_KEYS, RESUME_MAY_CHANGE, SECTIONS, markdown_reference

    assert {"out", "epochs", "keep", "patience", "max_failures"} <= RESUME_MAY_CHANGE
    assert not {"lr", "m", "amp", "seed", "optimizer"} & RESUME_MAY_CHANGE
    assert {"data", "out", "full_train", "evaluate_test", "num_workers"} <= FIXED_KEYS and "lr" not in FIXED_KEYS
    assert ADDED_KEYS["keep"] == "last" and ADDED_KEYS["patience"] == 0 and "lr" not in ADDED_KEYS
    assert {f.metadata["section"] for f in fields(TrainConfig)} == set(SECTIONS)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert markdown_reference() in doc, "docs/config.md is stale: paste beeray.config.markdown_reference()"
    assert all(f"| `{f.name}` |" in doc for f in fields(TrainConfig))
    with pytest.raises(BeerayError, match="patience must be >= 0, got -1"):
        train_config(None, {"patience": -1})
    with pytest.raises(BeerayError, match="encode_batch_size must be > 0, got 0"):
        train_config(None, {"encode_batch_size": 0})
