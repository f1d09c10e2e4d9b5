"""Learning-rate schedules and the optimizer choice (issue 24 part 4, issue 23 item 8; beeray/optim.py),
tested on the worker's Recipe without Ray: the step is replaced by a recorder of the learning rate."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import beeray.train_loop
from beeray.config import TrainConfig, to_dict, train_config
from beeray.data.prepared import PreparedData
from beeray.errors import BeerayError
from beeray.optim import LRSchedule, build_optimizer
from beeray.step import StepResult
from beeray.train_loop import Recipe
from beeray.trainer import train_table


def cfg_for(data, model, tmp_path, **kw) -> TrainConfig:
    base = dict(data=str(data), model=str(model), out=str(tmp_path / "run"), batch_size=16, m=40,
                max_seq_length=16, encode_batch_size=32, seed=5, eval_every_epoch=False)
    return train_config(None, {**base, **kw})


def table_rows(data: PreparedData):
    table = train_table(data, full=False, world=1)
    users = np.asarray(table.column("user").to_pylist(), dtype=np.int64)
    return users, [np.asarray(x, dtype=np.int64) for x in table.column("items").to_pylist()]


@pytest.fixture()
def recorded_steps(monkeypatch):
    """train_step replaced by an update without gradients (optimizer.step() skips every parameter),
    so that the scheduler follows an optimizer step as in training; returns the lr of each call."""
    lrs: list[float] = []

    def fake_step(model, optimizer, catalog, batch, **kw):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        return StepResult(loss=0.0, items=1, users=len(batch), encoded=0)

    monkeypatch.setattr(beeray.train_loop, "train_step", fake_step)
    return lrs


def run(recipe: Recipe, users, items, report=lambda *a: None) -> None:
    """What train_loop_per_worker does after setup (no validation: eval_every_epoch is off)."""
    recipe.run(lambda: (users, items), report)


def test_schedule_factors():
    warm = LRSchedule("constant", warmup=4, total=20)
    assert [warm(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    linear = LRSchedule("linear", warmup=2, total=10)
    assert [linear(s) for s in range(11)] == pytest.approx([0.5, 1, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8,
                                                            1 / 8, 0])
    cosine = LRSchedule("cosine", warmup=0, total=8)
    assert cosine(0) == 1.0 and cosine(4) == pytest.approx(0.5) and cosine(8) == pytest.approx(0.0)
    assert cosine(2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # the constant schedule without warm-up multiplies lr by exactly 1.0: today's training, bit for bit
    assert all(LRSchedule("constant", 0, 0)(s) == 1.0 for s in range(100))


def test_a_resumed_run_has_the_learning_rates_of_an_uninterrupted_one(shop, tiny_model_dir, tmp_path,
                                                                      recorded_steps):
    cfg = cfg_for(shop, tiny_model_dir, tmp_path, schedule="cosine", warmup_steps=3, epochs=3, checkpoint_every=4)
    users, items = table_rows(PreparedData.load(shop))
    whole = Recipe.setup(cfg, rank=0, world=1, device=torch.device("cpu"))
    total = whole.total_steps(users, items)
    saved = {}

    def report(metrics, with_checkpoint):  # keep the checkpoint of step 8 (mid-epoch 2), as Ray would
        if with_checkpoint and whole.state.global_step == 8:
            whole.save(tmp_path / "ckpt")
            saved["lrs"] = list(recorded_steps)

    run(whole, users, items, report)
    uninterrupted = list(recorded_steps)
    assert len(uninterrupted) == total > 8 and len(saved["lrs"]) == 8
    assert uninterrupted[:3] == pytest.approx([cfg.lr / 3, 2 * cfg.lr / 3, cfg.lr])  # warm-up
    assert whole.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-20)  # decayed to 0 after the last
    assert [row["lr"] for row in whole.state.steps] == uninterrupted  # the history's lr column

    recorded_steps.clear()
    resumed = Recipe.setup(cfg, rank=0, world=1, device=torch.device("cpu"), checkpoint_dir=str(tmp_path / "ckpt"))
    assert resumed.state.global_step == 8 and resumed.state.step_in_epoch < len(resumed.epoch_steps(1, users, items))
    run(resumed, users, items)
    assert saved["lrs"] + recorded_steps == uninterrupted  # exactly: the same floats
    assert [row["lr"] for row in resumed.state.steps] == uninterrupted


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_total_steps_count_the_steps_train_epoch_takes(shop, tiny_model_dir, tmp_path, recorded_steps, schedule):
    cfg = cfg_for(shop, tiny_model_dir, tmp_path, schedule=schedule, epochs=2, batch_size=7)
    users, items = table_rows(PreparedData.load(shop))
    recipe = Recipe.setup(cfg, rank=0, world=1, device=torch.device("cpu"))
    run(recipe, users, items)
    assert recipe.total_steps(users, items) == len(recorded_steps) == recipe.state.global_step
    if schedule == "constant":  # the default: lr untouched, every step
        assert set(recorded_steps) == {cfg.lr}
    else:
        assert recorded_steps[0] == cfg.lr and recorded_steps[-1] == pytest.approx(cfg.lr / len(recorded_steps))


def test_the_optimizer_is_the_configured_one():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adamw = build_optimizer(TrainConfig(lr=2e-5, weight_decay=0.01), params)
    assert type(adamw) is torch.optim.AdamW  # the default, as before the key existed
    assert adamw.defaults["lr"] == 2e-5 and adamw.defaults["weight_decay"] == 0.01 and adamw.defaults["eps"] == 1e-8
    nadam = build_optimizer(TrainConfig(lr=2e-5, weight_decay=0.01, optimizer="nadam"), params)
    assert type(nadam) is torch.optim.NAdam
    d = nadam.defaults
    assert (d["lr"], d["betas"], d["eps"], d["momentum_decay"]) == (2e-5, (0.9, 0.999), 1e-7, 1.0)  # Keras 3's
    assert d["weight_decay"] == 0.01 and d["decoupled_weight_decay"] is True


def test_keras_nadam_momentum_schedule():
    """torch's NAdam with momentum_decay 1 takes Keras 3's Nadam step: mu_t = 0.9 (1 - 0.5 * 0.96^t)."""
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = build_optimizer(TrainConfig(lr=0.1, optimizer="nadam"), [w])
    m = v = 0.0
    u_prod, x = 1.0, 1.0
    for t in range(1, 6):
        g = 2 * x  # d(x^2)/dx
        w.grad = torch.tensor([g])
        opt.step()
        # Keras 3 nadam.py, written out in float64
        u_t, u_t1 = 0.9 * (1 - 0.5 * 0.96 ** t), 0.9 * (1 - 0.5 * 0.96 ** (t + 1))
        u_prod *= u_t
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        m_hat = u_t1 * m / (1 - u_prod * u_t1) + (1 - u_t) * g / (1 - u_prod)
        v_hat = v / (1 - 0.999 ** t)
        x -= 0.1 * m_hat / (math.sqrt(v_hat) + 1e-7)
        assert w.item() == pytest.approx(x, rel=1e-5)


def test_schedule_and_optimizer_keys_validate_and_resume_rules(tmp_path):
    with pytest.raises(BeerayError, match=r"^command line: warmup_steps must be >= 0, got -1$"):
        train_config(None, {"warmup_steps": -1})
    with pytest.raises(BeerayError, match=r"^command line: schedule must be one of constant, linear or cosine, "
                                          r"got 'step'$"):
        train_config(None, {"schedule": "step"})
    with pytest.raises(BeerayError, match=r"^command line: optimizer must be adamw or nadam, got 'sgd'$"):
        train_config(None, {"optimizer": "sgd"})
    saved = to_dict(TrainConfig(data="d"))
    # the optimizer and the schedule are the run: never changed on resume
    assert TrainConfig(data="d", optimizer="nadam").resume_conflicts(saved) == ["optimizer: 'adamw' -> 'nadam'"]
    assert TrainConfig(data="d", warmup_steps=5).resume_conflicts(saved) == ["warmup_steps: 0 -> 5"]
    # more epochs: free under a constant lr; refused where they would move the decay's end
    assert TrainConfig(data="d", epochs=8).resume_conflicts(saved) == []
    cosine = to_dict(TrainConfig(data="d", schedule="cosine"))
    assert TrainConfig(data="d", schedule="cosine", epochs=8).resume_conflicts(cosine) == ["epochs: 5 -> 8"]
    old = {k: v for k, v in saved.items() if k not in ("optimizer", "schedule", "warmup_steps", "prompt")}
    assert TrainConfig(data="d").resume_conflicts(old) == []  # a checkpoint from before these keys
    assert dataclasses.replace(TrainConfig(), prompt="passage: ").validate().prompt == "passage: "


def test_each_steps_lr_is_logged_to_mlflow(tmp_path):
    from mlflow import MlflowClient

    from beeray import tracking

    cfg = TrainConfig(data="d", out=str(tmp_path / "run"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    steps = [{"step": 1, "epoch": 0.5, "loss": 0.3, "items": 4, "lr": 5e-6},
             {"step": 2, "epoch": 1.0, "loss": 0.2, "items": 4, "lr": 1e-5}]
    run_id = tracking.log_training(cfg, tmp_path / "run", [], steps, {}, {})
    history = MlflowClient(tracking_uri=cfg.tracking_uri).get_metric_history(run_id, "lr")
    assert sorted((m.step, m.value) for m in history) == [(1, 5e-6), (2, 1e-5)]
