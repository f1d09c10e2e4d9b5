"""Baselines: each one learns on small synthetic data, and all of them go through the encoders' evaluator."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beeray.baselines import BASELINES, evaluate_baseline, parse_params
from beeray.baselines.oracle import PopularityOracle
from beeray.cli import main
from beeray.data.prepare import PrepareOptions, prepare_synthetic
from beeray.data.prepared import PreparedData
from beeray.errors import BeerayError
from beeray.evaluator import encode_items, evaluate, score_split
from beeray.models import load_model
from tests.helpers import tokens

FAST = {"bootstrap": 50}


class RandomScorer:
    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def scores(self, source, candidates):
        return self.rng.random((source.shape[0], candidates.size))


@pytest.fixture(scope="module")
def shop_time(tmp_path_factory):
    """The synthetic shop on a time split: items bought together in bundles, learnable from interactions."""
    out = tmp_path_factory.mktemp("shop_time") / "prepared"
    prepare_synthetic(out, options=PrepareOptions(split="time"))
    return PreparedData.load(out)


@pytest.fixture(scope="module")
def shop_items(tmp_path_factory):
    out = tmp_path_factory.mktemp("shop_items") / "prepared"
    prepare_synthetic(out, options=PrepareOptions(val_items=60, test_items=60))
    return PreparedData.load(out)


def bag_of_words(data: PreparedData, dim: int = 256) -> np.ndarray:
    """A deterministic text embedding (hashed words), unit rows: text baselines without a transformer."""
    vocab = sorted({w for t in data.texts for w in tokens(t)})
    index = {w: i % dim for i, w in enumerate(vocab)}
    emb = np.zeros((data.n_items, dim), dtype=np.float32)
    for row, text in enumerate(data.texts):
        for w in tokens(text):
            emb[row, index[w]] += 1.0
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def ndcg(scorer, data, which="test"):
    return score_split(scorer, data.eval_split(which), bootstrap=0)["ndcg@100"]


# Small, fixed settings: the tests check that each model learns, not which settings are best.
CF_PARAMS = {"popularity": {}, "itemknn": {"K": 50}, "ease": {"l2": 50.0}, "als": {"factors": 32, "alpha": 10.0},
             "elsa": {"factors": 32, "lr": 0.05, "epochs": 30, "batch_size": 128}}


@pytest.mark.parametrize("name", ["itemknn", "ease", "als", "elsa"])
def test_collaborative_baselines_learn(shop_time, name):
    res = evaluate_baseline(name, shop_time, "test", params=CF_PARAMS[name], log=lambda m: None, **FAST)
    random_ndcg = ndcg(RandomScorer(), shop_time)
    popularity = evaluate_baseline("popularity", shop_time, "test", log=lambda m: None, **FAST)["ndcg@100"]
    # The shop's users buy bundles: co-consumption, not popularity, predicts what comes next.
    assert res["ndcg@100"] > 2 * random_ndcg and res["ndcg@100"] > popularity + 0.05, (res["ndcg@100"], popularity)
    # the fixed settings stay; the rest were searched on their ladders or are defaults
    cls = BASELINES[name]
    assert res["params"].keys() == {**cls.defaults, **CF_PARAMS[name]}.keys()
    for key, value in res["params"].items():
        want = CF_PARAMS[name].get(key, cls.defaults.get(key))
        assert value == want or (key in cls.grid and key not in CF_PARAMS[name] and value in cls.grid[key]), key
    assert res["users"] == score_split(RandomScorer(), shop_time.eval_split("test"), bootstrap=0)["users"]


def test_validation_search_picks_the_best_configuration(shop_time):
    res = evaluate_baseline("itemknn", shop_time, "val", log=lambda m: None, **FAST)
    values = [s["val_ndcg@100"] for s in res["search"]]
    assert len(values) > 1
    best = res["search"][int(np.argmax(values))]["params"]
    assert res["params"]["K"] == best["K"] and res["ndcg@100"] == pytest.approx(max(values), abs=1e-12)
    # the choice is an interior optimum (both neighbours on the ladder tried) or reported as an edge
    ladder, tried = BASELINES["itemknn"].grid["K"], {s["params"]["K"] for s in res["search"]}
    i = ladder.index(best["K"])
    assert {ladder[j] for j in (i - 1, i + 1) if 0 <= j < len(ladder)} <= tried
    assert ("K" in res["edges"]) == (i in (0, len(ladder) - 1))


def test_a_baseline_goes_through_the_encoders_evaluator(shop_items, tiny_model_dir):
    """cbf+popularity with lambda 0 ranks exactly like the encoder's CBF (its per-user scaling does not
    change a ranking): the same metrics, stderr and users to the last digit."""
    model = load_model(str(tiny_model_dir))
    want = evaluate(model, shop_items, "test", show_progress=False, bootstrap=200)

    def embeddings():
        return encode_items(model, shop_items.texts, show_progress=False)

    got = evaluate_baseline("cbf+popularity", shop_items, "test", params={"lam": 0.0, "alpha": 1.0},
                            item_embeddings=embeddings, log=lambda m: None, bootstrap=200)
    for key in ("recall@20", "recall@50", "ndcg@100", "users", "excluded_users", "stderr"):
        assert got[key] == want[key], key


def test_text_popularity_recovers_popularity_written_in_the_text(tmp_path):
    """Items whose text says 'bestseller' are bought by most users: a ridge on the text embeddings finds it."""
    rng = np.random.default_rng(0)
    n_items, n_users = 800, 400
    best = rng.random(n_items) < 0.2
    words = "red blue green lamp chair table sofa rug shelf desk vase mirror".split()
    texts = [("bestseller " if b else "") + " ".join(rng.choice(words, 4)) for b in best]
    p = np.where(best, 0.5, 0.01)
    user_items = [np.flatnonzero(rng.random(n_items) < p) for _ in range(n_users)]
    data = write_item_split(tmp_path / "pop", texts, user_items, seed=1, cold=150)
    emb = bag_of_words(data)
    res = evaluate_baseline("text-popularity", data, "test", item_embeddings=lambda: emb, log=lambda m: None, **FAST)
    random_ndcg = ndcg(RandomScorer(), data)
    assert res["ndcg@100"] > 1.5 * random_ndcg and res["recall@20"] > 2 * score_split(
        RandomScorer(), data.eval_split("test"), bootstrap=0)["recall@20"]


def write_series(path, *, n_items: int, n_groups: int, n_users: int, words: list[str], words_per_text: int,
                 per_user: int, cold: int):
    """An item split where users buy within one or two product series and an item's text names its series."""
    rng = np.random.default_rng(0)
    group = rng.integers(n_groups, size=n_items)
    texts = [f"series{g} " + " ".join(rng.choice(words, words_per_text)) for g in group]
    users = []
    for _ in range(n_users):
        pool = np.flatnonzero(np.isin(group, rng.choice(n_groups, size=rng.integers(1, 3), replace=False)))
        users.append(np.sort(rng.choice(pool, size=min(per_user, pool.size), replace=False)))
    return write_item_split(path, texts, users, seed=1, cold=cold)


def test_heater_learns_cold_items_from_text(tmp_path):
    """Users buy within one or two product series, and an item's text names its series: Heater must map a
    cold item's text into the collaborative space next to its series."""
    data = write_series(tmp_path / "series", n_items=600, n_groups=20, n_users=600, per_user=12, cold=150,
                        words="red blue green lamp chair table sofa rug shelf desk vase mirror".split(),
                        words_per_text=4)
    emb = bag_of_words(data)
    res = evaluate_baseline("heater", data, "test", params={"epochs": 10, "factors": 32},
                            item_embeddings=lambda: emb, log=lambda m: None, **FAST)
    assert res["ndcg@100"] > 2 * ndcg(RandomScorer(), data), res["ndcg@100"]


def test_oracle_is_a_sort_of_target_counts(shop_items):
    split = shop_items.eval_split("test")
    oracle = PopularityOracle(split.target)
    counts = np.asarray((split.target > 0).sum(axis=0)).ravel()
    scores = oracle.scores(split.source[:3], split.candidates)
    assert np.array_equal(scores[0], counts[split.candidates]) and (scores == scores[0]).all()
    assert "popularity-oracle" not in BASELINES


def test_bad_baseline_input(shop_items, capsys, tmp_path):
    with pytest.raises(BeerayError, match="unknown baseline 'knn'"):
        evaluate_baseline("knn", shop_items, "test")
    with pytest.raises(BeerayError, match="never selectable"):
        evaluate_baseline("popularity-oracle", shop_items, "test")
    with pytest.raises(BeerayError, match="none of the 60 val candidates .* has a training interaction"):
        evaluate_baseline("ease", shop_items, "test")
    with pytest.raises(BeerayError, match="K must be int"):
        parse_params("itemknn", ["K=many"])
    with pytest.raises(BeerayError, match="not KEY=VALUE"):
        parse_params("itemknn", ["neighbours=5"])
    assert parse_params("ease", ["l2=100"]) == {"l2": 100.0}
    for argv, message in [(["--baseline", "knn"], "unknown baseline 'knn'"),
                          (["--baseline", "ease"], "has a training interaction"),
                          (["--baseline", "itemknn", "--param", "itemknn.K=x"], "K must be int"),
                          (["--baseline", "ease", "--param", "als.factors=8"], "--param als.factors=8: no --baseline als")]:
        assert main(["evaluate", "--data", str(shop_items.root), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.search(re.escape(message), err), err


def test_cli_baselines_and_encoders_in_one_table(shop_time, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "table.json"
    assert main(["compare", "--data", str(shop_time.root), "--model", str(tiny_model_dir), "--baseline", "popularity",
                 "--baseline", "itemknn", "--param", "itemknn.K=50", "--bootstrap", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "baseline:itemknn" in printed and "popularity oracle" in printed
    doc = json.loads(out.read_text())
    label = next(iter(doc["datasets"]))
    rows = doc["results"]
    assert set(rows) == {str(tiny_model_dir), "baseline:popularity", "baseline:itemknn"}
    assert rows["baseline:itemknn"][label]["params"]["K"] == 50
    assert "oracle" in doc and doc["oracle"][label]["ndcg@100"] > 0


def write_item_split(root, texts, user_items, seed=0, cold=40):
    """A prepared item-split folder from texts and users' item lists (the contract `beeray prepare` writes)."""
    rng = np.random.default_rng(seed)
    n_items = len(texts)
    root.mkdir(parents=True, exist_ok=True)
    perm = rng.permutation(n_items)
    val_items, test_items = np.sort(perm[:cold]), np.sort(perm[cold:2 * cold])
    pq.write_table(pa.table({"item_id": [f"i{i}" for i in range(n_items)], "text": texts}), root / "items.parquet")
    pq.write_table(pa.table({"user_id": [f"u{u}" for u in range(len(user_items))],
                             "items": pa.array([x.tolist() for x in user_items], pa.list_(pa.int32())),
                             "timestamps": pa.array([None] * len(user_items), pa.list_(pa.int64()))}),
                   root / "users.parquet")
    is_val, is_test = np.isin(np.arange(n_items), val_items), np.isin(np.arange(n_items), test_items)

    def lists(keep):
        rows = [(u, [int(i) for i in its if keep[i]]) for u, its in enumerate(user_items)]
        rows = [(u, its) for u, its in rows if its]
        return pa.table({"user": pa.array([u for u, _ in rows], pa.int32()),
                         "items": pa.array([its for _, its in rows], pa.list_(pa.int32()))})

    pq.write_table(lists(~(is_val | is_test)), root / "train.parquet")
    pq.write_table(lists(~is_test), root / "train_full.parquet")
    for name, held in (("val", is_val), ("test", is_test)):
        rows = [(u, [int(i) for i in its if not (is_val[i] or is_test[i])], [int(i) for i in its if held[i]])
                for u, its in enumerate(user_items)]
        rows = [r for r in rows if r[1] and r[2]]
        pq.write_table(pa.table({"user": pa.array([r[0] for r in rows], pa.int32()),
                                 "source": pa.array([r[1] for r in rows], pa.list_(pa.int32())),
                                 "target": pa.array([r[2] for r in rows], pa.list_(pa.int32()))}),
                       root / f"{name}.parquet")
    split = {"kind": "item", "seed": seed, "val_items": val_items.tolist(), "test_items": test_items.tolist(),
             "val_candidates": val_items.tolist(), "test_candidates": test_items.tolist(),
             "val_excluded_users": 0, "test_excluded_users": 0}
    (root / "split.json").write_text(json.dumps(split))
    (root / "stats.json").write_text(json.dumps({"dataset": "synthetic-popularity", "items": n_items,
                                                 "users": len(user_items)}))
    return PreparedData.load(root)

