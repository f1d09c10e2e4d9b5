"""goodlens the paper's way (issue 22): each dataset keeps its own cold items, per-dataset results from
`evaluate` and `compare`, and the guard that refuses to score a model on cold items it trained on."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from beeray import training_record
from beeray.cli import main
from beeray.data.prepare import prepare
from beeray.data.prepared import PreparedData
from tests.helpers import SHARED_DATA, needs_shared

FAST = ["--bootstrap", "50", "--batch-size", "32", "--device", "cpu"]
METRICS = ("recall@20", "recall@50", "ndcg@100")


def movielens_folder(root: Path, n_users: int = 80, n_movies: int = 120, seed: int = 0) -> Path:
    """A small MovieLens-layout folder (ratings.csv, movies.csv) with random ratings."""
    rng = np.random.default_rng(seed)
    genres = ["Comedy", "Drama", "Action", "Horror", "Romance", "Sci-Fi"]
    root.mkdir(parents=True)
    rows = [(u, int(m) + 1, float(rng.choice([3.0, 4.0, 4.5, 5.0])), 10_000 + 7 * k)
            for k, (u, m) in enumerate((u, m) for u in range(1, n_users + 1)
                                       for m in rng.choice(n_movies, 14, replace=False))]
    pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(root / "ratings.csv", index=False)
    pd.DataFrame({"movieId": np.arange(1, n_movies + 1),
                  "title": [f"Film number {m} ({1950 + m % 60})" for m in range(1, n_movies + 1)],
                  "genres": ["|".join(rng.choice(genres, 2, replace=False)) for _ in range(n_movies)]}
                 ).to_csv(root / "movies.csv", index=False)
    return root


def cold_ids(folder: Path, which: str, part: str | None = None) -> set[str]:
    data = PreparedData.load(folder)
    return set(data.qualified_ids(data.cold_items(which, part)))


def trained_ids(folder: Path, full: bool) -> set[str]:
    data = PreparedData.load(folder)
    return set(data.qualified_ids(data.train_items(full)))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A generated MovieLens folder and the synthetic shop, each prepared alone and together (goodlens)."""
    root = tmp_path_factory.mktemp("goodlens")
    ml_raw = movielens_folder(root / "raw-ml")
    (root / "raw-shop").mkdir()  # the shop is generated; goodlens still wants a path per part
    assert main(["prepare", "movielens", "--input", str(ml_raw), "--out", str(root / "ml")]) == 0
    assert main(["prepare", "synthetic", "--out", str(root / "shop")]) == 0
    assert main(["prepare", "goodlens", "--input", f"movielens={ml_raw}", "--input", f"synthetic={root / 'raw-shop'}",
                 "--out", str(root / "gl")]) == 0
    return {"root": root, "ml": root / "ml", "shop": root / "shop", "gl": root / "gl"}


# ---------------------------------------------------------------- 1. each dataset keeps its own split

def test_goodlens_parts_have_the_single_dataset_cold_items(folders):
    gl = PreparedData.load(folders["gl"])
    assert gl.parts == ["movielens", "synthetic"]
    for part, single in (("movielens", folders["ml"]), ("synthetic", folders["shop"])):
        for which in ("val", "test"):
            assert cold_ids(folders["gl"], which, part) == cold_ids(single, which), (part, which)
            # the same users are scored, with the same exclusions, as on the dataset alone
            mine, alone = gl.eval_split(which, part), PreparedData.load(single).eval_split(which)
            assert (len(mine.user), mine.excluded_users) == (len(alone.user), alone.excluded_users)
            assert mine.target.nnz == alone.target.nnz and mine.source.nnz == alone.source.nnz
        # nothing the goodlens folder trains on is a test cold item of the dataset alone
        assert not cold_ids(single, "test") & trained_ids(folders["gl"], full=True)
        assert not cold_ids(single, "val") & trained_ids(folders["gl"], full=False)
    stats = json.loads((folders["gl"] / "stats.json").read_text())
    assert stats["per_dataset"]["movielens"]["test_items"] == json.loads(
        (folders["ml"] / "stats.json").read_text())["split"]["test_items"]


@needs_shared("goodbooks", "ml-latest-small")
def test_goodlens_real_data_keeps_each_dataset_split(tmp_path):
    """The issue's measurement: 489 of the 617 ml-latest-small test cold items were warm in the goodlens
    train.parquet (553 in train_full.parquet); now none, and both parts' cold items are the single folders'."""
    singles = {"movielens": prepare("movielens", tmp_path / "ml", SHARED_DATA / "ml-latest-small", quiet=True).out,
               "goodbooks": prepare("goodbooks", tmp_path / "gb", SHARED_DATA / "goodbooks", quiet=True).out}
    gl = prepare("goodlens", tmp_path / "gl", inputs={k: SHARED_DATA / v for k, v in
                                                      (("goodbooks", "goodbooks"), ("movielens", "ml-latest-small"))},
                 quiet=True).out
    for part, single in singles.items():
        for which in ("val", "test"):
            assert cold_ids(gl, which, part) == cold_ids(single, which), (part, which)
        assert len(cold_ids(single, "test")) == {"movielens": 617, "goodbooks": 989}[part]
        assert not cold_ids(single, "test") & trained_ids(gl, full=False)
        assert not cold_ids(single, "test") & trained_ids(gl, full=True)


# ---------------------------------------------------------------- 2. per-dataset evaluation

def test_evaluate_gives_a_labelled_result_per_dataset_and_the_joint(folders, tiny_model_dir, capsys):
    out = folders["root"] / "eval.json"
    assert main(["evaluate", "--data", str(folders["gl"]), "--model", str(tiny_model_dir), "--split", "test",
                 "--baseline", "text-popularity", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    got = json.loads(out.read_text())
    assert [(r["model"], r["part"]) for r in got] == [
        (str(tiny_model_dir), "movielens"), ("baseline:text-popularity", "movielens"),
        (str(tiny_model_dir), "synthetic"), ("baseline:text-popularity", "synthetic"),
        (str(tiny_model_dir), "joint"), ("baseline:text-popularity", "joint")]
    for label in ("movielens", "synthetic", "joint"):
        assert f"{folders['gl']}:{label} — test split" in printed
    # A part scores what the dataset alone scores: same users, same candidates, same metrics.
    for part, single in (("movielens", folders["ml"]), ("synthetic", folders["shop"])):
        alone_out = folders["root"] / f"eval-{part}.json"
        assert main(["evaluate", "--data", str(single), "--model", str(tiny_model_dir), "--split", "test",
                     "--out", str(alone_out), *FAST]) == 0
        alone = json.loads(alone_out.read_text())
        mine = next(r for r in got if r["part"] == part and r["model"] == str(tiny_model_dir))
        assert (mine["users"], mine["excluded_users"]) == (alone["users"], alone["excluded_users"])
        for m in METRICS:
            assert mine[m] == pytest.approx(alone[m], abs=1e-6), (part, m)
    joint = [r for r in got if r["part"] == "joint"][0]
    parts = [r for r in got if r["part"] != "joint" and r["model"] == joint["model"]]
    assert joint["users"] == sum(r["users"] for r in parts)


def test_time_split_parts_rank_their_own_catalog(folders):
    root = folders["root"]
    out = root / "gl-time"
    assert main(["prepare", "goodlens", "--input", f"movielens={root / 'raw-ml'}", "--input",
                 f"synthetic={root / 'raw-shop'}", "--split", "time", "--out", str(out)]) == 0
    data = PreparedData.load(out)
    ds = data.items["dataset"].to_numpy()
    for which in ("val", "test"):
        whole = data.eval_split(which)
        parts = {p: data.eval_split(which, p) for p in data.parts}
        for part, split in parts.items():
            assert np.array_equal(split.candidates, np.flatnonzero(ds == part))
            assert set(ds[split.target.indices]) <= {part}  # mixed clocks: a part may have no test period
        assert sorted(np.concatenate([s.user for s in parts.values()]).tolist()) == sorted(whole.user.tolist())
        assert sum(s.excluded_users for s in parts.values()) == whole.excluded_users


def test_compare_labels_each_part_and_scores_a_single_dataset_model_on_them(folders, tiny_model_dir):
    out = folders["root"] / "table.csv"
    assert main(["compare", "--data", str(folders["gl"]), "--data", str(folders["ml"]),
                 "--model", str(tiny_model_dir), "--out", str(out), *FAST]) == 0
    (row,) = list(csv.DictReader(out.open()))
    for label in ("goodlens:movielens", "goodlens:synthetic", "goodlens:joint", "movielens"):
        assert f"{label}/recall@20" in row and f"{label}/users" in row
    assert float(row["goodlens:movielens/ndcg@100"]) == pytest.approx(float(row["movielens/ndcg@100"]), abs=1e-6)
    assert row["goodlens:movielens/users"] == row["movielens/users"]


# ---------------------------------------------------------------- 3. the leak guard

def recorded_model(src: Path, dst: Path, data: Path, full: bool) -> str:
    """A copy of a model folder with the training record `beeray train` on `data` would write."""
    shutil.copytree(src, dst)
    training_record.write(dst, training_record.build(PreparedData.load(data), full, str(src)))
    return str(dst)


@pytest.fixture(scope="module")
def models(folders, tiny_model_dir):
    root = folders["root"] / "models"
    return {"zero-shot": str(tiny_model_dir),
            "ml-full": recorded_model(tiny_model_dir, root / "ml-full", folders["ml"], full=True),
            "gl": recorded_model(tiny_model_dir, root / "gl", folders["gl"], full=False),
            "shop-full": recorded_model(tiny_model_dir, root / "shop-full", folders["shop"], full=True)}


def _refused(capsys, argv: list[str], *patterns: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    for p in patterns:
        assert p in err, err
    return err


def test_record_is_small_compressed_json_of_qualified_ids(folders, models):
    path = Path(models["ml-full"]) / training_record.RECORD
    record = json.loads(gzip.decompress(path.read_bytes()))  # plain JSON: nothing executes on reading
    data = PreparedData.load(folders["ml"])
    assert record["item_ids"] == sorted(data.qualified_ids(data.train_items(full=True)))
    assert all(i.startswith("movielens:") for i in record["item_ids"])
    (source,) = record["trained_on"]
    assert source["fingerprint"] == data.stats["fingerprint"] and source["file"] == "train_full.parquet"
    gl_ids = training_record.read(models["gl"])["item_ids"]
    assert {i.split(":")[0] for i in gl_ids} == {"movielens", "synthetic"}


def test_guard_refuses_scoring_a_model_on_cold_items_it_trained_on(folders, models, capsys):
    ml, n_val = folders["ml"], len(cold_ids(folders["ml"], "val"))
    # train_full holds the validation cold items: scoring that model on them is refused, on the folder
    # itself and on goodlens's movielens part (ids match across folders), by evaluate and compare alike
    _refused(capsys, ["evaluate", "--data", str(ml), "--model", models["ml-full"], "--split", "val", *FAST],
             f"{models['ml-full']} trained on {n_val} of the {n_val} val cold items of {ml}", "--allow-trained-items")
    _refused(capsys, ["evaluate", "--data", str(folders["gl"]), "--model", models["ml-full"], "--split", "val",
                      *FAST], f"trained on {n_val} of the {n_val} val cold items of {folders['gl']} (its movielens part)")
    _refused(capsys, ["compare", "--data", str(folders["shop"]), "--data", str(ml), "--model", models["ml-full"],
                      "--split", "val", *FAST], "val cold items of")
    # a text baseline ranks with --text-model's embeddings: the same guard
    _refused(capsys, ["evaluate", "--data", str(ml), "--baseline", "text-popularity", "--text-model",
                      models["ml-full"], "--split", "val", *FAST], "trained on")


def test_guard_allows_zero_shot_cross_dataset_and_unseen_items(folders, models, capsys):
    out = folders["root"] / "allowed.json"
    # zero-shot (no record), cross-dataset (the shop's model on movies), the goodlens model on the
    # single dataset's test items, and the full-train model on test: nothing overlaps
    assert main(["evaluate", "--data", str(folders["ml"]), "--model", models["zero-shot"], "--model",
                 models["shop-full"], "--model", models["gl"], "--model", models["ml-full"], "--split", "test",
                 "--out", str(out), *FAST]) == 0
    got = {r["model"]: r for r in json.loads(out.read_text())}
    assert "trained_cold_items" not in got[models["zero-shot"]]
    for name in ("shop-full", "gl", "ml-full"):
        assert got[models[name]]["trained_cold_items"] == 0
    assert "(!)" not in capsys.readouterr().out
    # the goodlens model on the shop's own test items too (a joint draw would have trained on some)
    assert main(["evaluate", "--data", str(folders["shop"]), "--model", models["gl"], "--split", "test",
                 "--out", str(out), *FAST]) == 0
    assert json.loads(out.read_text())["trained_cold_items"] == 0


def test_override_scores_and_labels_the_trained_items(folders, models, capsys):
    out = folders["root"] / "override.csv"
    n_val = len(cold_ids(folders["ml"], "val"))
    assert main(["evaluate", "--data", str(folders["ml"]), "--model", models["ml-full"], "--model",
                 models["zero-shot"], "--split", "val", "--allow-trained-items", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    rows = {r["model"]: r for r in csv.DictReader(out.open())}
    assert int(rows[models["ml-full"]]["trained_cold_items"]) == n_val == int(rows[models["ml-full"]]["cold_items"])
    assert rows[models["zero-shot"]]["trained_cold_items"] == ""
    assert f"{models['ml-full']} (!)" in printed
    assert f"(!) {models['ml-full']} trained on {n_val} of the {n_val} val cold items scored here" in printed


def test_make_results_stops_on_the_guard_with_its_line(folders, models):
    spec = importlib.util.spec_from_file_location("results", Path(__file__).resolve().parents[1] / "experiments"
                                                  / "results.py")
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    cmd = [*results.BEERAY, "compare", "--data", str(folders["ml"]), "--model", models["ml-full"], "--split", "val",
           *FAST]
    with pytest.raises(SystemExit, match="trained on .* val cold items"):
        results.run(cmd, folders["root"] / "results-compare.log")


@pytest.mark.slow
def test_train_writes_the_record_the_guard_reads(ray_session, shop, tiny_model_dir, tmp_path, capsys):
    """`beeray train --full-train` records its catalog (warm + validation cold items): evaluate then
    refuses its validation split and scores its test split."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(shop), "--model", str(tiny_model_dir), "--out", str(out), "--epochs", "1",
                 "--batch-size", "256", "--m", "64", "--max-seq-length", "16", "--encode-batch-size", "64",
                 "--full-train", "--no-eval", "--no-baseline", "--no-tracking"]) == 0
    data = PreparedData.load(shop)
    record = training_record.read(out / "model")
    assert record["item_ids"] == sorted(data.qualified_ids(data.train_items(full=True)))
    assert record["trained_on"][-1]["fingerprint"] == data.stats["fingerprint"]
    capsys.readouterr()
    n_val = len(data.cold_items("val"))
    _refused(capsys, ["evaluate", "--data", str(shop), "--model", str(out / "model"), "--split", "val", *FAST],
             f"trained on {n_val} of the {n_val} val cold items")
    assert main(["evaluate", "--data", str(shop), "--model", str(out / "model"), "--split", "test", *FAST]) == 0
