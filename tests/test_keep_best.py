"""Epoch selection in `beeray train` (issue 31): `keep: best` saves the weights of the validated epoch
with the best validation NDCG@100, a restored run keeps the best so far, and `patience` stops early.

Without Ray: one worker's Recipe driven by `Recipe.run`, as train_loop_per_worker drives it, with its
validation replaced by a scripted curve (a real curve on a tiny model rarely peaks where a test needs
it), and the driver's `write_kept_model` applied to the last checkpoint the run reported.
"""

import pytest
import torch

from beeray.checkpoint import BEST_WEIGHTS, read_state, weights_copy
from beeray.config import train_config
from beeray.metrics import VAL_METRICS
from beeray.models import load_model
from beeray.train_loop import Recipe
from beeray.trainer import train_table, write_kept_model

# validation NDCG@100 after each epoch (0: the base model); epoch 2 is the best, 5 would beat it
CURVE = [0.10, 0.30, 0.50, 0.40, 0.45, 0.60]


def _cfg(shop, model, tmp_path, **kw):
    base = dict(data=str(shop), model=str(model), out=str(tmp_path / "run"), batch_size=32, m=64,
                max_seq_length=16, encode_batch_size=64, lr=1e-3, seed=3, epochs=4)
    return train_config(None, {**base, **kw})


def _run(cfg, tmp_path, checkpoint=None, tag="a"):
    """Run the recipe; returns (epoch -> weights at its end, the checkpoint folders reported, recipe)."""
    recipe = Recipe.setup(cfg, 0, 1, torch.device("cpu"), None if checkpoint is None else str(checkpoint))
    # the curve's point for the epoch being validated: the history holds the epochs before it
    recipe.validation = lambda: {m: CURVE[len(recipe.state.history)] for m in VAL_METRICS}
    table = train_table(recipe.data, full=False, world=1)
    users = table.column("user").to_numpy()[:96]
    items = [torch.as_tensor(x).numpy() for x in table.column("items").to_pylist()[:96]]
    ends, saved = {}, []

    def report(metrics: dict, with_checkpoint: bool) -> None:
        if metrics.get("epoch_end"):
            ends[metrics["epoch"]] = weights_copy(recipe.model)
        if with_checkpoint:
            saved.append(tmp_path / f"ckpt-{tag}-{len(saved)}")
            recipe.save(str(saved[-1]))

    recipe.run(lambda: (users, items), report)
    return ends, saved, recipe


def _kept(cfg, checkpoint, out):
    kept = write_kept_model(checkpoint, read_state(checkpoint), cfg, out)
    return kept, load_model(str(out), device="cpu").state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_keep_best_saves_the_best_validated_epoch_and_keep_last_the_last(shop, tiny_model_dir, tmp_path):
    cfg = _cfg(shop, tiny_model_dir, tmp_path)
    ends, saved, recipe = _run(cfg, tmp_path)
    assert recipe.state.best_epoch == 2 and recipe.state.best_score == pytest.approx(CURVE[2])
    assert (saved[-1] / BEST_WEIGHTS).exists()  # epoch 4's checkpoint carries epoch 2's weights
    kept, weights = _kept(cfg, saved[-1], tmp_path / "best")
    assert kept == {"epoch": 2, "rule": "best val ndcg@100", "score": pytest.approx(CURVE[2]), "epochs_run": 4,
                    "stopped_early": False}
    assert _same(weights, ends[2]) and not _same(weights, ends[4])

    last = _cfg(shop, tiny_model_dir, tmp_path, keep="last")
    kept, weights = _kept(last, saved[-1], tmp_path / "last")
    assert kept["epoch"] == 4 and kept["rule"] == "last" and _same(weights, ends[4])


def test_a_restored_run_keeps_the_best_so_far(shop, tiny_model_dir, tmp_path):
    """Stopped after epoch 3 (best: 2) and continued to 4 from its checkpoint: the saved model is epoch
    2's, which only the checkpoint held (the restored worker never trained it)."""
    ends, _, _ = _run(_cfg(shop, tiny_model_dir, tmp_path), tmp_path, tag="whole")
    _, first, _ = _run(_cfg(shop, tiny_model_dir, tmp_path, epochs=3), tmp_path, tag="first")
    assert read_state(first[-1]).best_epoch == 2
    cfg = _cfg(shop, tiny_model_dir, tmp_path)
    _, rest, recipe = _run(cfg, tmp_path, checkpoint=first[-1], tag="rest")
    assert recipe.restored and len(rest) == 1  # epoch 4 only
    kept, weights = _kept(cfg, rest[-1], tmp_path / "model")
    assert kept["epoch"] == 2 and _same(weights, ends[2])


def test_patience_stops_and_a_restored_stopped_run_stays_stopped(shop, tiny_model_dir, tmp_path, capfd):
    cfg = _cfg(shop, tiny_model_dir, tmp_path, epochs=5, patience=2)
    ends, saved, recipe = _run(cfg, tmp_path)
    assert sorted(ends) == [0, 1, 2, 3, 4]  # epochs 3 and 4 did not beat 2: no epoch 5 (which would)
    assert "early stop after epoch 4: no better val ndcg@100 in 2 epoch(s) since epoch 2" in capfd.readouterr().out
    kept, weights = _kept(cfg, saved[-1], tmp_path / "model")
    assert kept == {"epoch": 2, "rule": "best val ndcg@100", "score": pytest.approx(CURVE[2]), "epochs_run": 4,
                    "stopped_early": True}
    assert _same(weights, ends[2])
    again, more, _ = _run(cfg, tmp_path, checkpoint=saved[-1], tag="again")
    assert again == {} and more == []


def test_without_validation_the_last_epoch_is_kept_and_patience_is_refused(shop, tiny_model_dir, tmp_path):
    from beeray.errors import BeerayError

    cfg = _cfg(shop, tiny_model_dir, tmp_path, epochs=2, full_train=True)
    ends, saved, recipe = _run(cfg, tmp_path)
    assert recipe.state.best_epoch == 0 and not (saved[-1] / BEST_WEIGHTS).exists()
    kept, weights = _kept(cfg, saved[-1], tmp_path / "model")
    assert kept["epoch"] == 2 and kept["rule"] == "last (no validation to select by)" and _same(weights, ends[2])
    with pytest.raises(BeerayError, match="--set patience: patience needs validation after every epoch"):
        train_config(None, {"data": str(shop), "full_train": True, "patience": 2}, {"patience": "--set patience"})


def test_history_and_metrics_name_the_kept_epoch(tmp_path):
    from beeray.artifacts import write_history

    history = [{"epoch": e, "step": 3 * e, "loss": None if e == 0 else 1.0 / e, "val_ndcg@100": CURVE[e]}
               for e in range(4)]
    steps = [{"step": s, "epoch": s / 3, "loss": 1.0 / s} for s in range(1, 10)]
    frame = write_history(history, steps, tmp_path, kept_epoch=2)
    epochs = frame[frame["kind"] == "epoch"]
    assert epochs.loc[epochs["kept"].astype(bool), "epoch"].tolist() == [2]
    assert frame.loc[frame["kind"] == "step", "kept"].isna().all()
    assert (tmp_path / "history.png").exists()
