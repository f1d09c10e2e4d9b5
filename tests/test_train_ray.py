"""Training through Ray Train: artifacts, sharding, checkpoints, resume, fault tolerance, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sentence_transformers import SentenceTransformer

from beeray.cli import main
from beeray.config import train_config
from beeray.encoder import TOKENS_DIR
from beeray.errors import BeerayError

pytestmark = pytest.mark.slow


def _cfg(shop, model, out, **kw):
    base = dict(data=str(shop), model=str(model), out=str(out), epochs=2, batch_size=64, m=96,
                max_seq_length=24, encode_batch_size=48, lr=1e-3, seed=3)
    base.update(kw)
    return train_config(None, base)


def _params(model_dir):
    return [p.detach() for p in SentenceTransformer(str(model_dir), device="cpu").parameters()]


def test_train_cli_writes_artifacts_and_learns(ray_session, shop, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(shop), "--model", str(tiny_model_dir), "--out", str(out), "--epochs", "2",
               "--batch-size", "64", "--m", "96", "--max-seq-length", "24", "--lr", "1e-3",
               "--encode-batch-size", "48", "--save-dtype", "float16"])
    assert rc == 0
    model = SentenceTransformer(str(out / "model"), device="cpu")  # a real SentenceTransformer folder
    assert model.encode(["a printer"]).shape == (1, 32)
    assert {p.dtype for p in model.parameters()} == {torch.float16}  # --save-dtype float16
    assert any((shop / TOKENS_DIR).iterdir())  # the driver tokenized the catalog into the prepared folder
    metrics = json.loads((out / "metrics.json").read_text())
    # The model card: sentence-transformers' own, with Hub metadata and the test metrics as model-index.
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "model" / "README.md")
    assert {"beeformer", "sentence-transformers", "recommendation"} <= set(card.data.tags)
    assert {r.metric_name: r.metric_value for r in card.data.eval_results} == \
        {m: metrics["trained"]["test"][m] for m in ("recall@20", "recall@50", "ndcg@100")}
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    assert "## beeray training" in card.text
    for who in ("base", "trained"):
        for split in ("val", "test"):
            assert {"recall@20", "recall@50", "ndcg@100", "users", "stderr"} <= metrics[who][split].keys()
    # The random tiny encoder knows nothing; two epochs of beeFormer must beat it clearly.
    assert metrics["trained"]["val"]["ndcg@100"] > metrics["base"]["val"]["ndcg@100"] + 0.05
    history = pd.read_csv(out / "history.csv")
    epochs, steps = history[history["kind"] == "epoch"], history[history["kind"] == "step"]
    assert list(epochs["epoch"]) == [0, 1, 2]  # epoch 0: the base model's validation
    assert np.isnan(epochs["loss"].iloc[0]) and epochs["loss"].iloc[-1] < epochs["loss"].iloc[1]
    assert epochs["val_ndcg@100"].iloc[0] == pytest.approx(metrics["base"]["val"]["ndcg@100"], rel=1e-6)
    # A row per optimizer step; each epoch's row holds the mean of its steps' losses.
    n_users = len(pd.read_parquet(shop / "train.parquet"))
    assert list(steps["step"]) == list(range(1, 2 * -(-n_users // 64) + 1))
    for epoch in (1, 2):
        mine = steps[(steps["epoch"] > epoch - 1) & (steps["epoch"] <= epoch)]
        assert epochs["loss"].iloc[epoch] == pytest.approx(mine["loss"].mean(), rel=1e-9)
    assert (out / "history.png").stat().st_size > 1000
    assert "trained / test" in capsys.readouterr().out
    # keep: best (the default): the saved weights are the trained epoch's with the best val NDCG@100
    best = epochs[epochs["epoch"] > 0].sort_values("val_ndcg@100", ascending=False, kind="stable").iloc[0]
    assert metrics["kept"] == {"epoch": best["epoch"], "rule": "best val ndcg@100", "epochs_run": 2,
                               "score": pytest.approx(best["val_ndcg@100"], rel=1e-9), "stopped_early": False}
    assert epochs.loc[epochs["kept"].astype(bool), "epoch"].tolist() == [best["epoch"]]
    assert metrics["trained"]["val"]["ndcg@100"] == pytest.approx(best["val_ndcg@100"], abs=5e-3)  # saved as float16
    assert f"the weights of epoch {int(best['epoch'])} of the 2 run (best val ndcg@100" in card.text

    # The run, read back through MLflow's own API from the default store beside the run folder.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("beeray")
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()  # beside the store, not ./mlruns
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.001" and run.data.params["m"] == "96"
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [p.step for p in sorted(loss, key=lambda p: p.step)] == list(steps["step"])
    np.testing.assert_allclose([p.value for p in sorted(loss, key=lambda p: p.step)], steps["loss"], rtol=1e-6)
    val = {p.step: p.value for p in client.get_metric_history(run.info.run_id, "val_ndcg_at_100")}
    assert val == pytest.approx(dict(zip(epochs["step"], epochs["val_ndcg@100"])), rel=1e-9)
    assert run.data.metrics["trained_test_recall_at_20"] == pytest.approx(metrics["trained"]["test"]["recall@20"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "history.png", "metrics.json", "model"} <= artifacts


@pytest.mark.parametrize("full_train", [False, True])
def test_training_never_tokenizes_or_encodes_a_cold_item(ray_session, shop, tiny_model_dir, tmp_path, monkeypatch,
                                                         full_train):
    """One epoch of the real worker loop on the shop, in this process (Ray Train's local mode), with
    spies on every tokenizer call and on every text the step encodes: no validation or test cold
    item (train) / no test cold item (full train) ever gets there."""
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from transformers import PreTrainedTokenizerBase

    from beeray.config import to_dict
    from beeray.data.prepared import PreparedData
    from beeray.encoder import DeviceCatalog
    from beeray.train_loop import train_loop_per_worker
    from beeray.trainer import train_dataset

    shop = fresh_copy(shop, tmp_path)  # no tokenized catalog cached by another test
    data = PreparedData.load(shop)
    val, test = set(data.split["val_items"]), set(data.split["test_items"])
    forbidden = test if full_train else val | test
    tokenized: list[str] = []
    encoded: set[int] = set()
    real_call, real_features = PreTrainedTokenizerBase.__call__, DeviceCatalog.features

    def tokenizer_spy(self, text=None, *args, **kw):
        tokenized.extend([text] if isinstance(text, str) else list(text))
        return real_call(self, text, *args, **kw)

    def features_spy(self, rows, width):  # every chunk either pass encodes is built here, on the device
        encoded.update(self.host.items[rows.cpu().numpy()].tolist())
        return real_features(self, rows, width)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", tokenizer_spy)
    monkeypatch.setattr(DeviceCatalog, "features", features_spy)
    cfg = _cfg(shop, tiny_model_dir, tmp_path / "run", epochs=1, eval_every_epoch=False, full_train=full_train)
    TorchTrainer(train_loop_per_worker, train_loop_config=to_dict(cfg), scaling_config=ScalingConfig(num_workers=0),
                 datasets={"train": train_dataset(data, full_train, 1)},
                 dataset_config=DataConfig(datasets_to_split=["train"]),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="local")).fit()

    catalog = data.train_items(full_train)
    assert len(tokenized) == catalog.size  # the training catalog, tokenized once
    assert not {data.texts[i] for i in forbidden} & set(tokenized)
    assert encoded and encoded <= set(catalog.tolist()) and not encoded & forbidden
    assert bool(encoded & val) == full_train  # full train does learn from the validation cold items


def fresh_copy(shop: Path, tmp_path: Path) -> Path:
    """The prepared shop without the tokenized catalogs other tests have cached in it."""
    out = tmp_path / "shop"
    shutil.copytree(shop, out, ignore=shutil.ignore_patterns(TOKENS_DIR))
    return out


def test_a_second_or_restarted_worker_maps_the_catalog_instead_of_tokenizing(shop, tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    from transformers import PreTrainedTokenizerBase

    from beeray.train_loop import Recipe

    shop = fresh_copy(shop, tmp_path)
    calls: list[int] = []
    real_call = PreTrainedTokenizerBase.__call__

    def tokenizer_spy(self, text=None, *args, **kw):
        calls.append(1 if isinstance(text, str) else len(text))
        return real_call(self, text, *args, **kw)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", tokenizer_spy)
    cfg = _cfg(shop, tiny_model_dir, tmp_path / "run", epochs=1)
    first = Recipe.setup(cfg, rank=0, world=2, device=torch.device("cpu"))
    n_items = first.catalog.items.size
    assert sum(calls) == n_items  # the first worker tokenizes the training catalog once
    second = Recipe.setup(cfg, rank=1, world=2, device=torch.device("cpu"))
    restarted = Recipe.setup(cfg, rank=0, world=2, device=torch.device("cpu"))
    assert sum(calls) == n_items  # the others map it
    assert "texts" not in second.data.__dict__  # nor do they read the item texts
    for other in (second, restarted):
        assert isinstance(other.catalog.ids, np.memmap)
        for name in ("ids", "offsets", "items"):
            np.testing.assert_array_equal(getattr(other.catalog, name), getattr(first.catalog, name))
    # Another max_seq_length is another tokenization, stored beside the first.
    Recipe.setup(_cfg(shop, tiny_model_dir, tmp_path / "run2", epochs=1, max_seq_length=8), rank=0, world=1,
                 device=torch.device("cpu"))
    assert sum(calls) == 2 * n_items and len(list((shop / TOKENS_DIR).iterdir())) == 2


def test_every_user_seen_once_per_epoch_with_two_workers(ray_session, shop, tmp_path):
    """The real dataset + shard reader: W=2, an odd user count, nobody dropped or repeated."""
    import ray.train
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from beeray.data.prepared import PreparedData
    from beeray.sampler import PAD_USER
    from beeray.train_loop import read_shard
    from beeray.trainer import train_dataset

    data = PreparedData.load(shop)
    n_users = pd.read_parquet(data.train_path()).shape[0]

    def loop(config):
        seen = []
        for _epoch in range(2):
            users, items = read_shard(ray.train.get_dataset_shard("train"))
            seen.append(users.tolist())
        with open(f"{config['dir']}/rank{ray.train.get_context().get_world_rank()}.json", "w") as f:
            json.dump(seen, f)

    assert n_users % 2 == 1  # an odd count: the equal split works only thanks to the padding row
    ds = train_dataset(data, full=False, world=2)
    expected = n_users
    TorchTrainer(loop, train_loop_config={"dir": str(tmp_path)}, scaling_config=ScalingConfig(num_workers=2),
                 datasets={"train": ds}, dataset_config=DataConfig(datasets_to_split=["train"]),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="shards")).fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in range(2):
        rows = ranks[0][epoch] + ranks[1][epoch]
        assert len(ranks[0][epoch]) == len(ranks[1][epoch])  # same step count on both workers
        users = [u for u in rows if u != PAD_USER]
        assert len(users) == len(set(users)) == expected


def test_crash_resume_equals_uninterrupted_run(ray_session, shop, tiny_model_dir, tmp_path, monkeypatch):
    from beeray.train_loop import CRASH_AT_STEP
    from beeray.trainer import train

    ref = train(_cfg(shop, tiny_model_dir, tmp_path / "ref", checkpoint_every=3), baseline=False)
    # Same run, but rank 0 dies at step 5 (after the checkpoint at step 3) and nothing restarts it.
    monkeypatch.setenv(CRASH_AT_STEP, "5")
    crashed = _cfg(shop, tiny_model_dir, tmp_path / "crash", checkpoint_every=3)
    with pytest.raises(BeerayError, match="injected worker crash at step 5"):
        train(crashed, baseline=False)
    resumed = train(crashed, resume=True, baseline=False)
    for a, b in zip(_params(ref.model_dir), _params(resumed.model_dir)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    np.testing.assert_allclose([h["loss"] for h in resumed.history[1:]], [h["loss"] for h in ref.history[1:]],
                               rtol=1e-5)
    # The steps after the checkpoint are replayed, not recorded twice.
    assert [r["step"] for r in resumed.steps] == [r["step"] for r in ref.steps]
    np.testing.assert_allclose([r["loss"] for r in resumed.steps], [r["loss"] for r in ref.steps], rtol=1e-5)

    # FailureConfig: the worker group restarts by itself from the newest checkpoint.
    auto = train(_cfg(shop, tiny_model_dir, tmp_path / "auto", checkpoint_every=3, max_failures=1), baseline=False)
    for a, b in zip(_params(ref.model_dir), _params(auto.model_dir)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    # A checkpoint made with another config is refused, not silently mixed.
    with pytest.raises(BeerayError, match="different config.*lr"):
        train(_cfg(shop, tiny_model_dir, tmp_path / "crash", checkpoint_every=3, lr=5e-4), resume=True)
    with pytest.raises(BeerayError, match="already holds a run"):
        train(_cfg(shop, tiny_model_dir, tmp_path / "ref"))


def test_more_workers_than_cpus_is_an_error(ray_session, shop, tiny_model_dir, tmp_path):
    from beeray.trainer import train

    with pytest.raises(BeerayError, match="asks for 3 workers.*cluster has 2 CPU"):
        train(_cfg(shop, tiny_model_dir, tmp_path / "big", num_workers=3))


def test_dead_cluster_address_fails_fast(shop, tmp_path, capsys):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t0 = time.time()
    rc = main(["train", "--data", str(shop), "--out", str(tmp_path / "x"), "--address", f"127.0.0.1:{port}"])
    assert rc == 2 and time.time() - t0 < 30
    assert f"Ray cluster at 127.0.0.1:{port} does not answer" in capsys.readouterr().err


def test_missing_data_folder(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "nope" in capsys.readouterr().err
