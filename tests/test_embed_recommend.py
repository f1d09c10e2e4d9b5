"""beeray embed (Ray Data shards, resumable after a kill, FAISS) and beeray recommend (the evaluator's
ranking), and the catalog reader both use (bad rows named by line)."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from beeray import files
from beeray.cli import main
from beeray.data.items import read_item_texts
from beeray.errors import BeerayError
from tests.helpers import kill_run

BEERAY = [sys.executable, "-m", "beeray.cli"]


# ---------------------------------------------------------------- the catalog reader

def test_bad_rows_are_named_by_line_and_refused_or_skipped(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item_id,text\na,first\n,no id\nb,\nc,third\na,again\nd,fourth\n")
    with pytest.raises(BeerayError) as err:
        read_item_texts(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "3 bad row(s)" in msg
    assert "line 3: missing id" in msg and "line 4: missing text" in msg
    assert "line 6: duplicate id 'a' (first at line 2)" in msg and "--bad-rows skip" in msg
    items = read_item_texts(path, bad_rows="skip")
    assert list(items.ids) == ["a", "c", "d"] and items.texts == ["first", "third", "fourth"]
    assert len(items.skipped) == 3
    # parquet: 1-based rows; ids keep their spelling ("007" stays "007").
    pq_path = tmp_path / "items.parquet"
    pd.DataFrame({"sku": ["007", "008", "007"], "text": ["x", "y", "z"]}).to_parquet(pq_path)
    with pytest.raises(BeerayError, match=r"row 3: duplicate id '007' \(first at row 1\)"):
        read_item_texts(pq_path, id_col="sku")
    with pytest.raises(BeerayError, match="missing column"):
        read_item_texts(pq_path)


def test_embed_cli_refuses_bad_rows_in_one_line_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "items.jsonl"
    path.write_text('{"item_id": "a", "text": "x"}\n{"item_id": "a", "text": "y"}\n')
    assert main(["embed", "--items", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("beeray embed: error:") and "row 2: duplicate id 'a'" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- recommend = the evaluator's ranking

def _unit_rows(n, d, seed):
    emb = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_recommend_ranks_as_the_evaluator_scores():
    from beeray.data.prepared import EvalSplit
    from beeray.evaluator import CBFScorer, score_split
    from beeray.recommender import recommend

    n, k = 500, 20
    emb = _unit_rows(n, 16, 0)
    # The history's items resemble each other: were they candidates, they would rank first.
    for j in (42, 99):
        emb[j] = emb[3] + 0.2 * emb[j]
        emb[j] /= np.linalg.norm(emb[j])
    emb[7] = emb[8] = (emb[3] + emb[11]) / np.linalg.norm(emb[3] + emb[11])  # a tie near the top: catalog order
    ids = np.array([f"i{j}" for j in range(n)], dtype=object)
    history = ["i3", "i42", "i99"]
    recs = recommend(emb, ids, history, k=50)
    got = [r.row for r in recs]

    # 1) Brute force, written out: relu(sum of the history's rows . every other row), best first.
    rows = np.array([3, 42, 99])
    scores = np.maximum(emb[rows].astype(np.float64).sum(0) @ emb.astype(np.float64).T, 0)
    others = np.setdiff1d(np.arange(n), rows)
    order = others[np.lexsort((others, -scores[others]))]
    assert got == order[:50].tolist()
    np.testing.assert_allclose([r.score for r in recs], scores[order[:50]], rtol=1e-12)
    assert not set(got) & set(rows)
    assert got.index(7) + 1 == got.index(8)

    # 2) Through the evaluator: a one-user split whose targets are the recommended top 20 scores
    # recall@20 = ndcg@100 = 1; targets ranked 21..40 score recall@20 = 0.
    def split(target_rows):
        src = sp.csr_matrix((np.ones(rows.size), rows, [0, rows.size]), shape=(1, n))
        tgt = sp.csr_matrix((np.ones(len(target_rows)), target_rows, [0, len(target_rows)]), shape=(1, n))
        return EvalSplit("test", np.array([0]), src, tgt, others, 0)

    top = score_split(CBFScorer(emb), split(got[:k]), bootstrap=0)
    assert top["recall@20"] == pytest.approx(1.0) and top["ndcg@100"] == pytest.approx(1.0)
    assert score_split(CBFScorer(emb), split(got[k:2 * k]), bootstrap=0)["recall@20"] == 0.0

    with pytest.raises(BeerayError, match="no item with id 'nope'"):
        recommend(emb, ids, ["i1", "nope"])


@pytest.mark.slow
def test_recommend_cli_prints_the_top_k_with_texts(shop, tiny_model_dir, capsys):
    from beeray.data.prepared import PreparedData
    from beeray.evaluator import encode_items
    from beeray.models import load_model
    from beeray.recommender import recommend

    assert main(["recommend", "--model", str(tiny_model_dir), "--items", str(shop),
                 "--history", "b000-printer", "b000-toner", "-k", "5"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("rank")):]  # header, rule, rows
    data = PreparedData.load(shop)
    emb = encode_items(load_model(str(tiny_model_dir)), data.texts, show_progress=False)
    want = recommend(emb, data.items["item_id"].to_numpy(dtype=object), ["b000-printer", "b000-toner"], k=5)
    assert [line.split()[1] for line in table[2:7]] == [r.item_id for r in want]
    assert "Printelle PR-864S Laser Printer" in out  # the history's texts are shown too


# ---------------------------------------------------------------- embed: Ray Data, killed, resumed

def _catalog(shop, path, n):
    """n items with distinct texts, made from the shop's texts."""
    items = pd.read_parquet(shop / "items.parquet")
    texts = [f"{items['text'].iloc[j % len(items)]} Variant {j}." for j in range(n)]
    pd.DataFrame({"item_id": [f"x{j:05d}" for j in range(n)], "text": texts}).to_parquet(path)
    return texts


def _shards(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "shards").glob("part-*.parquet")}


@pytest.mark.slow
def test_embed_killed_midway_resumes_without_reencoding(shop, tiny_model_dir, tmp_path):
    from beeray.embedding import INDEX, load_embeddings
    from beeray.evaluator import encode_items
    from beeray.models import load_model

    n, size = 6000, 50
    catalog = tmp_path / "catalog.parquet"
    texts = _catalog(shop, catalog, n)
    out = tmp_path / "emb"
    cmd = [*BEERAY, "embed", "--model", str(tiny_model_dir), "--items", str(catalog), "--out", str(out),
           "--shard-size", str(size), "--workers", "2", "--batch-size", "2", "--faiss"]
    run_id = uuid.uuid4().hex  # in the environment of the driver, its local Ray and the actors: kill_run finds them
    env = {**os.environ, "RAY_ADDRESS": "", "BEERAY_TEST_RUN": run_id}
    # 1) Killed (SIGKILL: the driver, its local Ray and the encoder actors) once a few shards are written.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while len(_shards(out)) < 3 if (out / "shards").exists() else True:
        assert proc.poll() is None and time.time() < deadline, "embed ended or stalled before 3 shards"
        time.sleep(0.05)
    kill_run(proc.pid, f"BEERAY_TEST_RUN={run_id}")  # returns once no process of the run is left to finish a shard
    proc.wait()
    kept = _shards(out)
    total = n // size
    assert 3 <= len(kept) < total, f"{len(kept)} of {total} shards: the kill came too late to test resuming"
    assert (out / "embed.json").is_file() and not (out / files.MARKER).exists()  # started, not finished
    with pytest.raises(BeerayError, match="did not finish"):
        load_embeddings(out)

    # 2) The same command again: the finished shards stay as they are; only the rest is encoded.
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(kept)} already done, {total - len(kept)} to encode" in done.stdout
    after = _shards(out)
    assert len(after) == total and all(after[name] == kept[name] for name in kept)  # not rewritten
    manifest = json.loads((out / "embed.json").read_text())
    assert (out / files.MARKER).is_file() and manifest["encoded_this_run"] == n - len(kept) * size

    # 3) The result is the model's unit-norm embedding of every item, in catalog order.
    ids, emb = load_embeddings(out)
    assert list(ids) == [f"x{j:05d}" for j in range(n)]
    want = encode_items(load_model(str(tiny_model_dir)), texts, show_progress=False)
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-5)

    # 4) The FAISS index finds an item's nearest neighbours as recommend ranks them.
    import faiss

    from beeray.recommender import recommend

    index = faiss.read_index(str(out / INDEX))
    assert index.ntotal == n
    _, nn = index.search(emb[[123]], 11)
    recs = recommend(emb, ids, ["x00123"], k=10)
    assert [ids[j] for j in nn[0] if j != 123][:10] == [r.item_id for r in recs]


def test_a_float16_shard_reads_back_as_the_models_embeddings(tiny_model_dir, tmp_path):
    """One encoder actor's work, called in-process: the shard file holds float16 and reads back as
    float32 rows equal to the model's unit-norm embeddings up to float16 rounding."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beeray.embedding import ShardEncoder, _read_shards, shard_path
    from beeray.evaluator import encode_items
    from beeray.models import load_model

    texts = ["a laser printer", "black toner cartridge", "a tent for two"]
    encoder = ShardEncoder(str(tiny_model_dir), str(tmp_path), "float16", 2, False)
    done = encoder(pa.table({"shard": [3], "ids": [["p", "t", "c"]], "texts": [texts]}))
    assert done["shard"].tolist() == [3] and done["rows"].tolist() == [3]
    assert pq.read_schema(shard_path(tmp_path, 3)).field("embedding").type.value_type == pa.float16()
    (tmp_path / "shards" / "part-00000.parquet").symlink_to(shard_path(tmp_path, 3))
    ids, emb = _read_shards(tmp_path, 1)
    want = encode_items(load_model(str(tiny_model_dir)), texts, show_progress=False)
    assert list(ids) == ["p", "t", "c"] and emb.dtype == np.float32
    np.testing.assert_allclose(emb, want, rtol=0, atol=2e-3)


@pytest.mark.parametrize(("precision", "atol", "min_cos"), [("fp32", 1e-6, 1 - 1e-6), ("bf16", 5e-3, 0.9995),
                                                            ("fp16", 1e-3, 0.99999)])
def test_embed_precision_matches_model_encode_within_its_tolerance(tiny_model_dir, tmp_path, precision, atol,
                                                                   min_cos):
    """An encoder actor under autocast gives unit-norm float32 rows equal to `model.encode` in
    float32 up to the precision's rounding: fp32 to 1e-6; bf16 (8 mantissa bits) to 5e-3 per value
    and cosine >= 0.9995; fp16 (11 bits) to 1e-3 and cosine >= 0.99999. (all-MiniLM-L6-v2 on 64
    Goodbooks descriptions, CPU: bf16 1.2e-3 and 0.99997, fp16 1.8e-4 and 0.9999995.)"""
    from beeray.embedding import ShardEncoder
    from beeray.evaluator import encode_items
    from beeray.models import load_model

    texts = [f"item {i}: " + " ".join(["laser printer", "black toner", "a tent for two", "lens cap"][: 1 + i % 4])
             for i in range(37)]
    encoder = ShardEncoder(str(tiny_model_dir), str(tmp_path), "float32", 8, False, precision=precision, cpus=2)
    assert encoder.precision == precision
    got = encoder.encode(texts)
    model = load_model(str(tiny_model_dir))
    model.eval()
    want = encode_items(model, texts, show_progress=False)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    assert (got * want).sum(axis=1).min() >= min_cos
    if precision != "fp32":  # autocast really ran: not the float32 result
        assert np.abs(got - want).max() > 1e-6


def test_embed_refuses_to_mix_precisions_in_one_folder(tmp_path):
    """Shards encoded at one precision are not continued at another (the manifest records it)."""
    from beeray.data.items import read_item_texts
    from beeray.embedding import MANIFEST, embed

    catalog = tmp_path / "items.csv"
    catalog.write_text("item_id,text\na,a laser printer\nb,black toner\n")
    items = read_item_texts(str(catalog), "item_id", "text", "refuse")
    out = tmp_path / "emb"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"model": "m", "shard_size": 100_000, "dtype": "float32", "shards": []}))
    with pytest.raises(BeerayError, match=r"another precision \(precision='fp32'\)"):
        embed("m", items, out, precision="bf16")
