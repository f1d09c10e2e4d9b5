"""Faults a user meets, each as the fault probe of issue 30 met it: a model changed in place under its
embeddings, two runs given one --out, object-storage setup errors, an object store that goes away
mid-upload, a full disk, a torn file, and exit codes that must be 2 every time."""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beeray import files
from beeray.cli import main
from beeray.errors import BeerayError

BEERAY = [sys.executable, "-m", "beeray.cli"]


def _beeray(*args, env=None, timeout=300, **kw):
    return subprocess.run([*BEERAY, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


def _one_line(res, command: str) -> str:
    """The single line of a user error (exit 2), with nothing else on stderr."""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith(f"beeray {command}: error: "), res.stderr[-3000:]
    return lines[0]


def _perturbed_copy(src: Path, dst: Path, scale: float = 0.01, seed: int = 0) -> None:
    """`dst` = the model of `src` with its weights changed (saved where it already is, if dst == src)."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(src), device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    model.save(str(dst))


# ---------------------------------------------------------------- 1. a model is its content

def test_fingerprint_follows_the_weights_not_the_path(tiny_model_dir, tmp_path):
    from beeray.models import model_fingerprint

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_model_dir, a)
    shutil.copytree(tiny_model_dir, b)
    before = model_fingerprint(str(a))
    assert before.startswith("sha256:") and before == model_fingerprint(str(b))  # same bytes, other place
    (a / "README.md").write_text("a new card")  # the card does not change what the model computes
    assert model_fingerprint(str(a)) == before
    _perturbed_copy(a, a)  # retrained in place
    assert model_fingerprint(str(a)) != before
    assert model_fingerprint("sentence-transformers/not-installed-here").startswith("hf:")


def test_embed_reencodes_a_model_changed_in_place_and_recommend_refuses_another(ray_session, shop, tiny_model_dir,
                                                                                tmp_path, capsys):
    from beeray.data.items import read_item_texts
    from beeray.embedding import embed, load_embeddings
    from beeray.evaluator import encode_items
    from beeray.models import load_model, model_fingerprint

    model, out = tmp_path / "model", tmp_path / "emb"
    shutil.copytree(tiny_model_dir, model)
    items = read_item_texts(shop / "items.parquet")
    logs: list[str] = []
    embed(str(model), items, out, workers=1, log=logs.append)
    old_ids, old = load_embeddings(out)
    _perturbed_copy(model, model)
    first = len(logs)
    embed(str(model), items, out, workers=1, log=logs.append)
    again = logs[first:]
    assert any("re-encoding every shard" in line for line in again), again
    assert any("0 already done, 1 to encode" in line for line in again), again
    manifest = json.loads((out / "embed.json").read_text())
    assert manifest["model_fingerprint"] == model_fingerprint(str(model))
    ids, emb = load_embeddings(out, model=str(model))
    want = encode_items(load_model(str(model)), items.texts, show_progress=False)
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-5)  # the changed model's vectors, all of them
    assert np.abs(emb - old).max() > 1e-3  # and not the old ones
    with pytest.raises(BeerayError, match="embeddings of another model"):
        load_embeddings(out, model=str(tiny_model_dir))
    assert main(["recommend", "--embeddings", str(out), "--model", str(tiny_model_dir), "--items", str(shop),
                 "--history", str(ids[0])]) == 2
    assert "embeddings of another model" in capsys.readouterr().err


# ---------------------------------------------------------------- 2. one run per output folder

HOLD = """
import sys, time
from beeray import files
with files.run_lock(sys.argv[1], "run"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_one_folder_is_refused_and_a_dead_holders_lock_taken_over(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="beeray")
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BeerayError) as err:
            with files.run_lock(out, "run"):
                pass
        msg = str(err.value)
        assert "\n" not in msg and f"pid {holder.pid}" in msg and "in use by another beeray run" in msg
    finally:
        holder.kill()
        holder.wait()
    with files.run_lock(out, "run"):  # the holder died without letting go: its lock is taken over
        assert json.loads((out / files.LOCK).read_text())["pid"] == os.getpid()
    assert f"taking over the lock left by pid {holder.pid}" in caplog.text


def test_an_object_storage_lock_refuses_a_live_holder_and_takes_over_a_dead_one(s3, caplog):
    caplog.set_level(logging.INFO, logger="beeray")
    uri = f"{s3('locks')}/run"
    other = {"pid": 1, "host": "another-host", "started": "2026-12-03T00:00:00Z", "token": "t"}
    files.Folder(uri).write_text(files.REMOTE_LOCK, json.dumps({**other, "heartbeat": time.time()}))
    with pytest.raises(BeerayError, match="in use by another beeray run \\(pid 1 on host another-host"):
        with files.run_lock(uri, "run"):
            pass
    files.Folder(uri).write_text(files.REMOTE_LOCK, json.dumps({**other, "heartbeat": time.time() - files.STALE_S - 1}))
    with files.run_lock(uri, "run"):
        assert json.loads(files.Folder(uri).read_text(files.REMOTE_LOCK, default=None))["pid"] == os.getpid()
    assert "taking over the lock left by pid 1 on host another-host" in caplog.text
    assert files.Folder(uri).read_text(files.REMOTE_LOCK, default=None) is None  # released at the end


def test_two_trains_into_one_out_the_second_is_refused(shop, tiny_model_dir, tmp_path):
    from tests.helpers import kill_run

    out = tmp_path / "run"
    args = ["train", "--data", shop, "--model", tiny_model_dir, "--out", out, "--epochs", "1", "--batch-size", "64",
            "--m", "96", "--max-seq-length", "24", "--no-tracking", "--no-baseline"]
    env = {**os.environ, "RAY_ADDRESS": "", "BEERAY_TEST_RUN": "two-trains"}
    first = subprocess.Popen([*BEERAY, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while not ((out / files.LOCK).is_file() and f'"pid": {first.pid}' in (out / files.LOCK).read_text()):
            assert first.poll() is None and time.time() < deadline, "the first run ended before it held its folder"
            time.sleep(0.05)
        second = _beeray(*args, timeout=120)
        line = _one_line(second, "train")
        assert f"in use by another beeray run (pid {first.pid}" in line
    finally:
        kill_run(first.pid, "BEERAY_TEST_RUN=two-trains")
        first.wait()


CREATE_STORE = """
import sys
from beeray.config import TrainConfig
from beeray import tracking
cfg = TrainConfig(data="d", out=sys.argv[1], tracking="mlflow")
client, experiment = tracking._client(cfg)
print(experiment)
"""


def test_runs_sharing_one_mlflow_store_create_it_once(tmp_path):
    """Sibling runs share <parent>/mlflow.db: started at once, each finds one store and one experiment."""
    procs = [subprocess.Popen([sys.executable, "-c", CREATE_STORE, str(tmp_path / f"run{i}")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
             for i in range(3)]
    results = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1  # one experiment, the same id for all


# ---------------------------------------------------------------- 3. object storage: setup errors in one line

def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_auth(tmp_path_factory):
    """moto checking keys (after its first 4 requests: the bucket, an IAM user, its key and its rights).
    One per test: it points the AWS variables at itself while it lives, and the module's `s3` server must
    have them back for the tests after it."""
    import boto3

    from benchmarks.local_s3 import local_s3

    root = tmp_path_factory.mktemp("s3-auth")
    env = {"BEERAY_STAGING": str(root / "staging"), "BEERAY_CACHE": str(root / "cache")}
    with local_s3(env, server_env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as bucket:
        uri = bucket("faults")
        iam = boto3.client("iam", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        iam.create_user(UserName="beeray")
        key = iam.create_access_key(UserName="beeray")["AccessKey"]
        iam.put_user_policy(UserName="beeray", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        yield {"uri": uri, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"], "staging": root / "staging"}


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["wrong secret", "no such bucket", "closed port"])
def test_object_storage_setup_errors_are_one_line_before_anything_runs(s3_auth, shop, tiny_model_dir, fault):
    env = {"AWS_ACCESS_KEY_ID": s3_auth["key"], "AWS_SECRET_ACCESS_KEY": s3_auth["secret"]}
    uri = f"{s3_auth['uri']}/run"
    if fault == "wrong secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
        words = ["access denied", f"key {s3_auth['key']}", "bucket faults"]
    elif fault == "no such bucket":
        uri = "s3://no-such-bucket-here/run"
        words = ["the bucket does not exist", "bucket no-such-bucket-here"]
    else:
        endpoint = f"http://127.0.0.1:{_free_port()}"
        env["AWS_ENDPOINT_URL"] = endpoint
        words = ["the object store does not answer", f"endpoint {endpoint}"]
    res = _beeray("train", "--data", shop, "--model", tiny_model_dir, "--out", uri, "--no-tracking",
                  env={**env, "RAY_ADDRESS": ""}, timeout=180)
    line = _one_line(res, "train")
    assert all(w in line for w in words), line
    assert env["AWS_SECRET_ACCESS_KEY"] not in line
    staging = s3_auth["staging"]
    assert not staging.exists() or not any(p.is_dir() for p in staging.iterdir())  # no staging folder left


# ---------------------------------------------------------------- 4. the store goes away mid-upload

def _checkpoint(folder: Path, step: int) -> Path:
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.safetensors").write_bytes(os.urandom(200_000))
    (folder / "optimizer.pt").write_bytes(os.urandom(50_000))
    (folder / "state.json").write_text(json.dumps({"epoch": 1, "step_in_epoch": 0, "global_step": step}))
    return folder


class Outage:
    """A TCP relay on 127.0.0.1 in front of the S3 server: `down()` closes its port and every connection
    through it (the store as a client sees a server stopped: connection refused), `up()` listens again on
    the same port. A real store keeps its objects across a restart; moto restarted would forget them."""

    def __init__(self, target_port: int):
        import socket

        self.target, self.socket_mod, self.conns = target_port, socket, []
        self.port = _free_port()
        self.up()

    def up(self) -> None:
        self.server = self.socket_mod.create_server(("127.0.0.1", self.port), reuse_port=True)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def down(self) -> None:
        self.server.close()
        for conn in self.conns:
            conn.close()
        self.conns = []

    def _accept(self, server) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = self.socket_mod.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass


@pytest.mark.slow
def test_a_checkpoint_upload_survives_the_store_going_away_for_20_s(s3, tmp_path, monkeypatch):
    """The store stops answering (its port closed) for 20 s, longer than pyarrow's own retries last, while
    a checkpoint is uploaded: persist retries with backoff and, once the store is back, lands every file."""
    from pyarrow import fs as pafs

    from beeray.checkpoint import persist

    uri = s3("ckpts")
    relay = Outage(s3.port)
    filesystem = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{relay.port}", region="us-east-1",
                                   access_key="testing", secret_key="testing")
    root = uri.removeprefix("s3://")
    src = _checkpoint(tmp_path / "ckpt", 7)
    logs: list[str] = []
    relay.down()
    done: list = []
    thread = threading.Thread(target=lambda: done.append(
        persist(src, f"{root}/run/checkpoint_1", filesystem, attempts=6, first_wait_s=1.0, log=logs.append)))
    thread.start()
    time.sleep(20.0)
    relay.up()
    thread.join(timeout=120)
    assert done == [None], logs
    for rel in ("model/model.safetensors", "optimizer.pt", "state.json"):
        with filesystem.open_input_stream(f"{root}/run/checkpoint_1/{rel}") as fh:
            assert fh.read() == (src / rel).read_bytes()
    assert logs and all("retrying in" in line for line in logs)
    relay.down()


def test_a_store_that_refuses_is_not_retried(s3, tmp_path):
    from beeray.checkpoint import persist

    uri = s3("refuses")
    filesystem, _ = files.remote_fs(uri)
    logs: list[str] = []
    t0 = time.time()
    with pytest.raises(OSError):
        persist(_checkpoint(tmp_path / "ckpt", 1), "no-such-bucket-x/run/checkpoint_1", filesystem, log=logs.append)
    assert logs == [] and time.time() - t0 < 60


# ---------------------------------------------------------------- 5. full disk, torn checkpoints

def _fsize_limit(limit: int):
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_prepare_on_a_full_disk_is_one_line_and_leaves_no_torn_file(tmp_path):
    out = tmp_path / "shop"
    res = _beeray("prepare", "synthetic", "--out", out, preexec_fn=_fsize_limit(16_000), timeout=300)
    line = _one_line(res, "prepare")
    assert "file size limit reached writing" in line and str(out) in line
    for path in out.rglob("*") if out.exists() else []:  # whatever is there was finished
        if path.is_file() and path.suffix == ".parquet":
            pq.read_metadata(path)
    assert not [p for p in out.rglob("*.tmp")] if out.exists() else True


def test_a_checkpoint_copy_that_fails_leaves_nothing_under_a_checkpoint_name(tmp_path, monkeypatch):
    from beeray import checkpoint

    src = _checkpoint(tmp_path / "ckpt", 3)
    experiment = tmp_path / "ray" / "train"
    experiment.mkdir(parents=True)
    real = shutil.copyfile
    copied: list = []

    def fill_up(a, b, **kw):  # the disk fills after the first file
        if copied:
            raise OSError(errno.ENOSPC, "No space left on device", str(b))
        copied.append(a)
        return real(a, b, **kw)

    monkeypatch.setattr(shutil, "copyfile", fill_up)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.persist(src, str(experiment / "checkpoint_1"), None, log=print)
    assert list(experiment.iterdir()) == []  # no folder that Ray, or --resume, would take for a checkpoint


def test_resume_skips_torn_checkpoints_and_the_failure_says_where_to_resume(tmp_path, capsys):
    from beeray import checkpoint
    from beeray.config import TrainConfig
    from beeray.trainer import failure_message

    out = tmp_path / "run"
    experiment = out / "ray" / "train"
    _checkpoint(experiment / "checkpoint_a", 3)
    _checkpoint(experiment / "checkpoint_b", 6)
    (experiment / "checkpoint_c" / "model").mkdir(parents=True)  # torn: no state.json
    shutil.copytree(experiment / "checkpoint_a", experiment / ".checkpoint_d.tmp-1234")  # torn: never renamed
    assert checkpoint.last_saved(str(experiment)).global_step == 6
    cause = OSError(errno.ENOSPC, "No space left on device", str(experiment / "checkpoint_e" / "optimizer.pt"))
    try:
        try:
            raise cause
        except OSError as exc:
            raise RuntimeError("Training failed") from exc
    except RuntimeError as wrapped:
        msg = failure_message(wrapped, TrainConfig(data="d", out=str(out)))
    lines = msg.splitlines()
    assert len(lines) == 3 and "no space left on the device writing" in lines[0] and "MB free there" in lines[0]
    assert "step 6" in lines[1] and f"beeray train --out {out} --resume" in lines[2]
    checkpoint.remove_torn(str(experiment))
    assert sorted(p.name for p in experiment.iterdir()) == ["checkpoint_a", "checkpoint_b"]
    assert capsys.readouterr().out.count("skipping the torn checkpoint") == 2


# ---------------------------------------------------------------- 6. torn files in a prepared folder

@pytest.mark.parametrize("name", ["items.parquet", "train.parquet", "stats.json"])
def test_a_truncated_file_in_a_prepared_folder_is_named_in_one_line(shop, tmp_path, capsys, name):
    data = tmp_path / "data"
    shutil.copytree(shop, data)
    path = data / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert main(["evaluate", "--data", str(data), "--baseline", "popularity", "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and ("truncated or corrupt" in err or "not valid JSON" in err)


# ---------------------------------------------------------------- 7. exit codes: 2, every time

def _embeddings(folder: Path) -> None:
    """A finished `beeray embed` folder, written directly (no model, no Ray)."""
    emb = np.eye(4, dtype=np.float32)
    flat = pa.array(emb.reshape(-1), pa.float32())
    (folder / "shards").mkdir(parents=True)
    pq.write_table(pa.table({"item_id": ["a", "b", "c", "d"], "embedding": pa.FixedSizeListArray.from_arrays(flat, 4)}),
                   folder / "shards" / "part-00000.parquet")
    (folder / "embed.json").write_text(json.dumps({"shards": ["x"], "rows": 4}))
    files.Folder(folder).mark_complete({"manifest": "embed.json", "rows": 4})


@pytest.mark.parametrize("history,k", [(["NOPE"], "5"), ([""], "5"), (["a"], "-3")])
def test_user_errors_exit_2_every_time(tmp_path, history, k):
    _embeddings(tmp_path / "emb")
    codes = [_beeray("recommend", "--embeddings", tmp_path / "emb", "--history", *history, "-k", k, timeout=120)
             for _ in range(10)]
    assert [c.returncode for c in codes] == [2] * 10, [c.stderr[-500:] for c in codes if c.returncode != 2]
    for c in codes:
        _one_line(c, "recommend")


# ---------------------------------------------------------------- 8. the smaller ones

@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_nul_bytes_are_refused_with_file_row_and_column_in_every_format(tmp_path, fmt):
    from beeray.data.items import read_item_texts

    df = pd.DataFrame({"item_id": ["a", "b", "c"], "text": ["fine", "nul\x00byte", "\x00\x00"]})
    path = tmp_path / f"items.{fmt}"
    if fmt in ("csv", "tsv"):
        df.to_csv(path, index=False, sep="," if fmt == "csv" else "\t")
        where = "line 3, column text"
    elif fmt == "parquet":
        df.to_parquet(path)
        where = "row 2, column text"
    else:
        df.to_json(path, orient="records", lines=True)
        where = "row 2, column text"
    with pytest.raises(BeerayError) as err:
        read_item_texts(path)
    assert str(path) in str(err.value) and where in str(err.value) and "NUL" in str(err.value)


def test_max_seq_length_is_bounded_by_the_models_positions(tiny_model_dir):
    from beeray.models import load_model, set_max_seq_length

    model = load_model(str(tiny_model_dir))
    set_max_seq_length(model, 512)
    assert model.max_seq_length == 512
    with pytest.raises(BeerayError, match="max_seq_length 100000: the model has 512 token positions"):
        set_max_seq_length(model, 100_000)


def test_a_bad_value_names_the_flag_it_came_from(tmp_path):
    from beeray.cli import build_parser
    from beeray.commands.train import config_from_args

    config = tmp_path / "c.yaml"
    config.write_text("lr: 0.001\nepochs: 2\n")

    def error(*argv):
        with pytest.raises(BeerayError) as err:
            config_from_args(build_parser().parse_args(["train", "--config", str(config), *argv]))
        return str(err.value)

    assert error("--epochs", "0").startswith("--epochs: epochs must be > 0")
    assert error("--set", "lr=-1").startswith("--set lr: lr must be > 0")
    assert error("--set", "m=many").startswith("--set m: m must be int")
    config.write_text("lr: -1\n")
    assert error().startswith(f"{config}: lr must be > 0")


def test_outputs_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        files.write_json(tmp_path / "a.json", {"x": 1})
        with files.atomic_path(tmp_path / "b.parquet") as tmp:
            pq.write_table(pa.table({"x": [1]}), tmp)
        folder = files.Folder(tmp_path / "emb")
        folder.write_text("embed.json", "{}")
        os.umask(0o077)
        files.write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    for name in ("a.json", "b.parquet", "emb/embed.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
