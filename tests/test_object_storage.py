"""Object storage (issue 24): `--out s3://...` for prepare, train, tune and embed, against a real S3 API on
127.0.0.1 (moto's server, the `s3` fixture in conftest.py).

What a reader may take as finished is the question throughout: a published folder is finished once its
_COMPLETE.json exists (written last, listing every file's size and SHA-256), an embedding folder too (its
marker written once every shard is). A crash at any point leaves none, and the same command continues.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from pyarrow import fs as pafs
from sentence_transformers import SentenceTransformer

from beeray import files
from beeray.cli import main
from beeray.errors import BeerayError
from tests.helpers import kill_run

BEERAY = [sys.executable, "-m", "beeray.cli"]


@pytest.fixture(scope="module")
def ray_s3(s3):
    """A local Ray started after the `s3` fixture set the AWS variables, so that its workers inherit
    them (a Ray left running by an earlier module would not have them: it is shut down first)."""
    import ray

    from beeray.cluster import init_ray

    ray.shutdown()
    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def _objects(url: str) -> dict[str, pafs.FileInfo]:
    filesystem, root = files.remote_fs(url)
    infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path.removeprefix(root + "/"): i for i in infos if i.type == pafs.FileType.File}


def _folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.bin").write_bytes(os.urandom(3000))
    (root / "sub" / "c.txt").write_text("gamma")
    (root / ".hidden.tmp").write_text("a temporary of an atomic write")
    return root


# ---------------------------------------------------------------- publish / fetch (no Ray)

def test_publish_then_fetch_and_a_crash_mid_upload_leaves_nothing_finished(s3, tmp_path):
    url = f"{s3('pub')}/run"
    local = _folder(tmp_path / "local")
    marker = files.publish(local, url)
    assert set(marker["files"]) == {"a.txt", "sub/b.bin", "sub/c.txt"}  # no temporaries
    assert set(_objects(url)) == {"a.txt", "sub/b.bin", "sub/c.txt", files.MARKER}
    got = files.fetch_dir(url)
    assert (got / "sub" / "b.bin").read_bytes() == (local / "sub" / "b.bin").read_bytes()
    sub = files.fetch_dir(f"{url}/sub")  # a folder inside a published one (a run's model/)
    assert sorted(p.name for p in sub.iterdir() if p.name != files.MARKER) == ["b.bin", "c.txt"]

    # Re-published and killed after one file: the old marker went first, so nothing reads as finished,
    # not even the files of the earlier, finished upload.
    (local / "sub" / "c.txt").write_text("gamma, second version")
    uploaded = []

    def crash_after_one(src, dst):
        if uploaded:
            raise OSError("connection reset (injected)")
        filesystem, _ = files.remote_fs(url)
        with open(src, "rb") as fh, filesystem.open_output_stream(dst) as out:
            out.write(fh.read())
        uploaded.append(dst)

    with pytest.raises(OSError, match="injected"):
        files.publish(local, url, upload=crash_after_one)
    assert files.MARKER not in _objects(url)
    with pytest.raises(BeerayError, match="no finished beeray output"):
        files.fetch_dir(url)
    with pytest.raises(BeerayError, match="no finished beeray output"):
        files.fetch_dir(f"{url}/sub")

    # The same call again finishes it; a copy fetched now has the new file.
    files.publish(local, url)
    assert (files.fetch_dir(url) / "sub" / "c.txt").read_text() == "gamma, second version"

    # An object rewritten after its marker (another writer mid-upload) is caught, not served.
    filesystem, root = files.remote_fs(url)
    with filesystem.open_output_stream(f"{root}/sub/c.txt") as out:
        out.write(b"gamma, third")
    os.environ["BEERAY_CACHE"] = str(tmp_path / "fresh-cache")  # the fixture restores it afterwards
    with pytest.raises(BeerayError, match="differs from its _COMPLETE.json"):
        files.fetch_dir(url)


def test_a_publish_killed_mid_upload_leaves_no_marker(s3, tmp_path):
    """SIGKILL while files are being uploaded: no marker, so no reader takes the folder."""
    url = f"{s3('killed')}/run"
    local = tmp_path / "local"
    local.mkdir()
    for k in range(40):
        (local / f"part-{k:02d}.bin").write_bytes(os.urandom(2000))
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from beeray import files
        filesystem, _ = files.remote_fs({url!r})
        def slow(src, dst):
            with open(src, "rb") as fh, filesystem.open_output_stream(dst) as out:
                out.write(fh.read())
            time.sleep(0.2)
        files.publish(Path({str(local)!r}), {url!r}, upload=slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    deadline = time.time() + 60
    while len(_objects(url)) < 3:
        assert proc.poll() is None and time.time() < deadline, "the upload ended or stalled before 3 files"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    objects = _objects(url)
    assert 3 <= len(objects) < 40 and files.MARKER not in objects
    with pytest.raises(BeerayError, match="no finished beeray output"):
        files.fetch_dir(url)


def test_prepare_publishes_and_train_reads_data_from_the_bucket_url_checks(s3, tmp_path, capsys):
    from beeray.data.prepared import PreparedData

    url = f"{s3('data')}/shop"
    assert main(["prepare", "synthetic", "--out", url]) == 0
    assert files.MARKER in _objects(url)
    data = PreparedData.load(url)  # fetched once into the cache, then read as a folder
    assert data.root.is_relative_to(Path(os.environ["BEERAY_CACHE"])) and data.n_items == 400
    assert PreparedData.load(url).root == data.root  # the same copy while the marker is unchanged
    assert main(["prepare", "synthetic", "--out", url]) == 0  # up to date: published already, kept
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(BeerayError, match="no finished beeray output"):
        PreparedData.load(f"{s3('empty')}/nothing")


# ---------------------------------------------------------------- Ray: train, tune, embed

def _cfg(data, model, out, **kw):
    from beeray.config import train_config

    base = dict(data=str(data), model=str(model), out=str(out), epochs=2, batch_size=64, m=96,
                max_seq_length=24, encode_batch_size=48, lr=1e-3, seed=3, checkpoint_every=3)
    base.update(kw)
    return train_config(None, base)


def _params(model_dir):
    return [p.detach() for p in SentenceTransformer(str(model_dir), device="cpu").parameters()]


@pytest.mark.slow
def test_train_to_s3_killed_worker_resumes_from_the_bucket(s3, ray_s3, tiny_model_dir, capsys, monkeypatch):
    """The CLI end to end with data and run in the bucket: a run whose worker dies continues from the
    bucket's checkpoint (by --resume auto, with the driver's local files gone; by FailureConfig) and is
    published with its marker last. The fault drill fires only in a run that restored no checkpoint,
    so a continuation that started over would crash again."""
    from beeray.train_loop import CRASH_AT_STEP
    from beeray.trainer import train

    bucket = s3("runs")
    data = f"{bucket}/shop"
    assert main(["prepare", "synthetic", "--out", data]) == 0
    url = f"{bucket}/crashed"
    argv = ["train", "--data", data, "--model", str(tiny_model_dir), "--out", url, "--epochs", "2",
            "--batch-size", "64", "--m", "96", "--max-seq-length", "24", "--encode-batch-size", "48",
            "--lr", "1e-3", "--seed", "3", "--checkpoint-every", "3", "--no-baseline", "--resume", "auto"]

    # 1) Rank 0 dies at step 5, after the checkpoint at step 3, and nothing restarts it.
    monkeypatch.setenv(CRASH_AT_STEP, "5")  # the fault drill: rank 0 dies at step 5 unless restored
    assert main(argv) == 2
    assert "injected worker crash at step 5" in capsys.readouterr().err
    objects = _objects(url)
    assert any(k.startswith("ray/train/checkpoint_") and k.endswith("model.safetensors") for k in objects)
    assert "config.json" in objects and files.MARKER not in objects  # started, not finished
    with pytest.raises(BeerayError, match="no finished beeray output"):
        files.fetch_dir(f"{url}/model")

    # 2) The job submitted again, on a machine without the first driver's files: it continues.
    assert not files.staging_dir(url).exists()  # a failed run leaves no staging folder: its state is in the store
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "holds a run: resuming it" in out and f"model: {url}/model" in out
    saved = json.loads(files.Folder(url).read_text("config.json", default=None))
    assert saved["data"] == data and saved["out"] == url  # URLs stay URLs
    listed = json.loads(files.Folder(url).read_text(files.MARKER, default=None))["files"]
    assert {"model/model.safetensors", "model/README.md", "model/beeray_training.json.gz", "metrics.json",
            "history.csv", "history.png", "config.json", "mlflow/mlflow.db"} <= set(listed)
    assert not any(k.startswith("ray/") for k in listed)  # Ray's checkpoints are its own, not the run's files
    assert "model/" + files.MARKER not in _objects(url)  # the model's own marker (for evaluation) is gone
    metrics = json.loads(files.Folder(url).read_text("metrics.json", default=None))
    history = [r for r in csv_rows(files.Folder(url).read_text("history.csv", default=None)) if r["kind"] == "step"]
    assert [int(r["step"]) for r in history] == list(range(1, len(history) + 1))  # replayed, not recorded twice

    # 3) The model reads back from its URL, with the training record evaluate's leak guard needs.
    from beeray.models import load_model
    from beeray.training_record import read

    resumed = load_model(f"{url}/model", device="cpu")
    assert read(f"{url}/model")["item_ids"]

    # 4) FailureConfig: the worker group restarts by itself from the bucket's newest checkpoint, and ends
    # where the resumed run ended.
    auto = train(_cfg(data, tiny_model_dir, f"{bucket}/auto", max_failures=1), baseline=False)
    for a, b in zip(_params(auto.model_dir), resumed.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    assert auto.metrics["trained"]["val"]["ndcg@100"] == pytest.approx(metrics["trained"]["val"]["ndcg@100"], abs=1e-4)

    # 5) --resume auto with another config: refused in one line, the finished run untouched.
    assert main([*argv, "--lr", "5e-4"]) == 2
    assert "different config" in capsys.readouterr().err
    assert files.MARKER in _objects(url)


def csv_rows(text: str) -> list[dict]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.slow
def test_tune_to_s3_publishes_the_search_and_its_final_model(s3, ray_s3, shop, tiny_model_dir, tmp_path):
    from tests.test_tune import _shop_config

    from beeray.tuner import tune

    url = f"{s3('tune')}/search"
    cfg = _shop_config(shop, tiny_model_dir, tmp_path / "placeholder", num_samples=2, max_concurrent_trials=1)
    cfg.train.out = url
    assert "MLFLOW_TRACKING_URI" not in os.environ
    result = tune(cfg, baseline=False)
    assert result.published == url
    # Ray's MLflow callback sets the variable for the whole process; a later run here would log to this
    # search's store (it did: the next test module's runs failed on this staging folder's database).
    assert "MLFLOW_TRACKING_URI" not in os.environ
    objects = _objects(url)
    assert {"tune_results.csv", "best.json", "trials.png", "tune_config.json", files.MARKER} <= set(objects)
    assert any(k.startswith("ray/tune/") for k in objects) and any(k.startswith("ray/trials/") for k in objects)
    assert f"final/{files.MARKER}" in objects  # the retrain published by its own run, before the search's
    best = json.loads(files.Folder(url).read_text("best.json", default=None))
    assert best["final"]["out"] == f"{url}/final"
    assert SentenceTransformer(str(files.fetch_dir(f"{url}/final/model")), device="cpu").encode(["x"]).shape == (1, 32)
    # --resume auto on the finished search: it is kept and the final model is not trained again.
    again = tune(cfg, resume="auto", baseline=False)
    assert again.final_metrics == result.final_metrics


@pytest.mark.slow
def test_embed_to_s3_killed_midway_keeps_its_shards(s3, shop, tiny_model_dir, tmp_path):
    import pandas as pd

    from beeray.embedding import MANIFEST, load_embeddings
    from beeray.evaluator import encode_items
    from beeray.models import load_model

    n, size = 3000, 50
    items = pd.read_parquet(shop / "items.parquet")
    texts = [f"{items['text'].iloc[j % len(items)]} Variant {j}." for j in range(n)]
    catalog = tmp_path / "catalog.parquet"
    pd.DataFrame({"item_id": [f"x{j:05d}" for j in range(n)], "text": texts}).to_parquet(catalog)
    url = f"{s3('emb')}/catalog"
    cmd = [*BEERAY, "embed", "--model", str(tiny_model_dir), "--items", str(catalog), "--out", url,
           "--shard-size", str(size), "--workers", "2", "--batch-size", "2"]
    run_id = uuid.uuid4().hex
    env = {**os.environ, "RAY_ADDRESS": "", "BEERAY_TEST_RUN": run_id}

    def shards() -> dict[str, object]:
        return {k: v.mtime for k, v in _objects(url).items() if k.startswith("shards/part-")}

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while len(shards()) < 3:
        assert proc.poll() is None and time.time() < deadline, "embed ended or stalled before 3 shards"
        time.sleep(0.1)
    kill_run(proc.pid, f"BEERAY_TEST_RUN={run_id}")
    proc.wait()
    kept = shards()
    total = n // size
    assert 3 <= len(kept) < total, f"{len(kept)} of {total} shards: the kill came too late to test resuming"
    assert files.Folder(url).is_file(MANIFEST) and not files.Folder(url).is_complete()  # started, not finished
    with pytest.raises(BeerayError, match="did not finish"):
        load_embeddings(url)

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(kept)} already done, {total - len(kept)} to encode" in done.stdout
    after = shards()
    assert len(after) == total and all(after[k] == kept[k] for k in kept)  # kept, not uploaded again
    ids, emb = load_embeddings(url)
    assert list(ids) == [f"x{j:05d}" for j in range(n)]
    want = encode_items(load_model(str(tiny_model_dir)), texts, show_progress=False)
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-5)


def test_one_object_store_client_per_bucket_and_credentials(s3, monkeypatch):
    """files.remote_fs builds one pyarrow filesystem per store, bucket and credentials in a process, not
    one per call (a Folder, a publish, a fetch each used to build their own)."""
    bucket = s3("clients")
    first, path = files.remote_fs(f"{bucket}/run/model")
    again, other = files.remote_fs(f"{bucket}/run/ray/")
    assert first is again and (path, other) == ("clients/run/model", "clients/run/ray")
    assert files.Folder(f"{bucket}/run").fs is first
    assert files.remote_fs(f"{s3('clients-2')}/run")[0] is not first  # another bucket
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "another-key")
    assert files.remote_fs(f"{bucket}/run")[0] is not first  # other credentials: another client
