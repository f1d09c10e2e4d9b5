"""`beeray prepare` end to end: real-data figures, the folder contract, every bad input -> exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import beeray.data.prepare as prep
from beeray.cli import main

from tests.helpers import SHARED_DATA as DATA
from tests.helpers import needs_shared as needs


def _fail(capsys, argv: list[str], *patterns: str) -> str:
    assert main(["prepare", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    for p in patterns:
        assert p in err, err
    return err


@needs("ml-latest-small")
def test_movielens_small_via_cli(tmp_path, capsys):
    out = tmp_path / "ml"
    assert main(["prepare", "movielens", "--input", str(DATA / "ml-latest-small"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6,169" in printed and "51,535" in printed
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["users"], stats["items"], stats["interactions"]) == (659, 6169, 51535)
    assert stats["split"]["val_items"] == stats["split"]["test_items"] == 617
    assert stats["fingerprint"] and stats["beeray_version"]
    items = pq.read_table(out / "items.parquet")
    assert items.schema.field("item_id").type == "string" and items.num_rows == 6169
    users = pq.read_table(out / "users.parquet")
    assert str(users.schema.field("items").type.value_type) == "int32"
    assert str(users.schema.field("timestamps").type.value_type) == "int64"
    assert sum(len(x) for x in users.column("items").to_pylist()) == 51535
    for name in ("train", "train_full"):
        t = pq.read_table(out / f"{name}.parquet")
        assert str(t.schema.field("user").type) == "int32"
    val = pq.read_table(out / "val.parquet")
    assert val.column_names == ["user", "source", "target"]
    split = json.loads((out / "split.json").read_text())
    assert split["kind"] == "item" and split["seed"] == 42 and split["val_candidates"] == split["val_items"]
    # Same inputs and options again: nothing to do.
    assert main(["prepare", "movielens", "--input", str(DATA / "ml-latest-small"), "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out
    # Different options into the same folder: refused, then allowed with --force.
    _fail(capsys, ["movielens", "--input", str(DATA / "ml-latest-small"), "--out", str(out), "--seed", "1"],
          str(out), "different prepared set", "--force")
    assert main(["prepare", "movielens", "--input", str(DATA / "ml-latest-small"), "--out", str(out),
                 "--seed", "1", "--force"]) == 0
    assert json.loads((out / "split.json").read_text())["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp/old folders left


@needs("goodbooks")
def test_goodbooks_subset_via_cli(tmp_path, capsys):
    out = tmp_path / "gb"
    assert main(["prepare", "goodbooks", "--input", str(DATA / "goodbooks" / "ratings_subset.csv"),
                 "--out", str(out), "--val-items", "500", "--test-items", "300"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["users"], stats["items"], stats["interactions"]) == (2669, 9891, 203561)
    assert (stats["split"]["val_items"], stats["split"]["test_items"]) == (500, 300)
    assert stats["dropped"]["interactions_item_without_text"] == 134


@needs("goodbooks")
@needs("ml-latest-small")
def test_goodlens_via_cli(tmp_path):
    out = tmp_path / "gl"
    assert main(["prepare", "goodlens", "--input", f"goodbooks={DATA / 'goodbooks'}",
                 "--input", f"movielens={DATA / 'ml-latest-small'}", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["per_dataset"]["goodbooks"]["items"] == 9891 and stats["per_dataset"]["movielens"]["items"] == 6169
    assert stats["items"] == 9891 + 6169
    items = pd.read_parquet(out / "items.parquet")
    assert items.item_id.is_unique and set(items.dataset) == {"goodbooks", "movielens"}
    split = json.loads((out / "split.json").read_text())
    for name, per in split["per_dataset"].items():
        assert set(items.dataset.iloc[per["test_items"]]) == {name}
    # each dataset keeps its own default size, min(2000, 10% of its catalog): 989 and 617
    assert [len(split["per_dataset"][d]["test_items"]) for d in ("goodbooks", "movielens")] == [989, 617]


@needs("amazon-scientific")
def test_amazon_json_time_split_via_cli(tmp_path):
    out = tmp_path / "sci"
    assert main(["prepare", "amazon-json", "--input", str(DATA / "amazon-scientific"), "--out", str(out),
                 "--split", "time"]) == 0
    split = json.loads((out / "split.json").read_text())
    assert split["kind"] == "time" and "per user" in split["note"] and split["test_candidates"] is None
    users = pq.read_table(out / "users.parquet")
    assert users.column("timestamps").null_count == users.num_rows == 8317


def _generic(tmp_path: Path, ratings: str, items: str) -> list[str]:
    (tmp_path / "r.csv").write_text(ratings)
    (tmp_path / "items.csv").write_text(items)
    return ["generic", "--input", str(tmp_path / "r.csv"), "--items", str(tmp_path / "items.csv"),
            "--out", str(tmp_path / "out"), "--min-user-interactions", "1"]


GOOD_ITEMS = "id,text\n" + "".join(f"{i},text of item {i}\n" for i in range(20))
GOOD_RATINGS = "user_id,item_id,rating\n" + "".join(f"u{u},{(u + k) % 20},5\n" for u in range(10) for k in range(6))


def test_bad_inputs_exit_2(tmp_path, capsys):
    _fail(capsys, ["movielens", "--input", str(tmp_path / "absent"), "--out", str(tmp_path / "o")],
          "absent", "not found")
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "ratings.csv").write_text("userId,movieId,rating\n1,1,5\n")
    _fail(capsys, ["movielens", "--input", str(tmp_path / "ml"), "--out", str(tmp_path / "o")],
          "movies.csv", "not found")
    (tmp_path / "ml" / "movies.csv").write_text("movieId,name\n1,x\n")
    _fail(capsys, ["movielens", "--input", str(tmp_path / "ml"), "--out", str(tmp_path / "o")],
          "movies.csv", "missing column(s) title")
    bad_rating = GOOD_RATINGS + "u3,4,great\n"
    _fail(capsys, _generic(tmp_path, bad_rating, GOOD_ITEMS), "r.csv", "line 62", "'great'", "not a number")
    _fail(capsys, _generic(tmp_path, GOOD_RATINGS + ",4,5\n", GOOD_ITEMS), "r.csv", "line 62", "empty user id")
    _fail(capsys, _generic(tmp_path, GOOD_RATINGS, GOOD_ITEMS + "3,another text\n"),
          "items.csv", "item id '3'", "different texts")
    _fail(capsys, _generic(tmp_path, GOOD_RATINGS, "id,text\n" + "".join(f"{i},\n" for i in range(20))),
          "items.csv", "no item has a non-empty text")
    _fail(capsys, _generic(tmp_path, GOOD_RATINGS.replace(",5\n", ",2\n"), GOOD_ITEMS), "no users left")
    _fail(capsys, _generic(tmp_path, GOOD_RATINGS, GOOD_ITEMS) + ["--val-items", "10", "--test-items", "10"],
          "10 validation + 10 test cold items >= 15 items")
    assert not (tmp_path / "o").exists() and not (tmp_path / "out").exists()


def test_empty_and_duplicate_items_are_dropped_with_warning(tmp_path, capsys):
    items = GOOD_ITEMS + "3,text of item 3\n20,\n"
    argv = _generic(tmp_path, GOOD_RATINGS, items) + ["--val-items", "2", "--test-items", "2"]
    assert main(["prepare", *argv]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "1 item(s) with an empty text" in err and "1 duplicate item row" in err
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["dropped"]["items_empty_text"] == 1 and stats["dropped"]["items_duplicate_id"] == 1
    assert len(stats["warnings"]) == 2


def test_output_folder_that_is_not_a_prepared_set(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    _fail(capsys, _generic(tmp_path, GOOD_RATINGS, GOOD_ITEMS) + ["--val-items", "2", "--test-items", "2"],
          "not a prepared-data folder")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_atomic_write_on_failure(tmp_path, monkeypatch):
    def boom(path, doc):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prep, "write_json", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["prepare", "--out", str(tmp_path / "syn")])
    assert list(tmp_path.iterdir()) == []


def test_atomic_replace_keeps_old_set_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "syn"
    assert main(["prepare", "synthetic", "--out", str(out)]) == 0
    before = (out / "stats.json").read_text()
    monkeypatch.setattr(prep, "_write_lists", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        main(["prepare", "synthetic", "--out", str(out), "--seed", "3", "--force"])
    assert (out / "stats.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "goodlens" in text and "--val-items" in text
