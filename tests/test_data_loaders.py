"""Loaders: each layout read into the common raw form; real-data preprocessing figures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from beeray.data.loaders import (GenericColumns, load_amazon_books, load_amazon_json, load_generic,
                                 load_goodbooks, load_movielens)
from beeray.data.preprocess import combine, preprocess
from beeray.errors import BeerayError

from tests.helpers import SHARED_DATA as DATA
from tests.helpers import needs_shared as needs


@needs("ml-latest-small")
def test_movielens_small_trailing_columns_and_texts():
    raw = load_movielens(DATA / "ml-latest-small")
    assert list(raw.interactions.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert len(raw.interactions) == 100_004
    # The trailing empty columns must not shift anything: first row is user 1, movie 31, 2.5.
    first = raw.interactions.iloc[0]
    assert (first.user_id, first.item_id, first.rating, first.timestamp) == ("1", "31", 2.5, 1260759144)
    texts = dict(zip(raw.items.item_id, raw.items.text))
    assert texts["1"].startswith("Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy.")
    assert "Tags: Pixar" in texts["1"]
    assert all("|" not in t.split("Tags:")[0] for t in raw.items.text)
    data = preprocess(raw)
    assert (data.n_users, data.n_items, len(data.interactions)) == (659, 6169, 51535)
    # Histories come in time order.
    ts = data.interactions.groupby("user")["timestamp"].apply(lambda s: s.is_monotonic_increasing)
    assert ts.all()


@needs("goodbooks")
def test_goodbooks_subset_figures_and_titles():
    raw = load_goodbooks(DATA / "goodbooks")
    assert "rating" in raw.interactions and "timestamp" not in raw.interactions
    text = dict(zip(raw.items.item_id, raw.items.text))
    assert text["1"].startswith("The Hunger Games (The Hunger Games, #1). ")
    data = preprocess(raw)
    assert (data.n_users, data.n_items, len(data.interactions)) == (2669, 9891, 203561)


@needs("amazon-scientific")
def test_amazon_json_positions_and_figures():
    raw = load_amazon_json(DATA / "amazon-scientific")
    assert raw.order_only and "rating" not in raw.interactions
    data = preprocess(raw)
    assert (data.n_users, data.n_items, len(data.interactions)) == (8317, 4344, 58492)
    seq = json.loads((DATA / "amazon-scientific" / "Scientific.inter.json").read_text())["0"]
    first_user = data.interactions[data.interactions.user == 0]
    assert data.items.item_id.to_numpy()[first_user.item.to_numpy()].tolist() == [str(x) for x in seq]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_amazon_books_header_and_headerless(tmp_path):
    rows = "".join(f"A{i % 3},u{u},{5 if (i + u) % 4 else 2},{1000 + i}\n" for u in range(4) for i in range(6))
    desc = tmp_path / "desc.csv"
    pd.DataFrame({"asin": ["A0", "A1", "A2"], "title": ["T0", "T1", "T2"],
                  "description": ["d0", "", "d2"]}).to_csv(desc, index=False)
    with_header = load_amazon_books(_write(tmp_path / "h.csv", "asin,user,rating,timestamp\n" + rows), desc)
    without = load_amazon_books(_write(tmp_path / "n.csv", rows), desc)
    pd.testing.assert_frame_equal(with_header.interactions, without.interactions)
    assert dict(zip(without.items.item_id, without.items.text)) == {"A0": "T0. d0", "A1": "T1", "A2": "T2. d2"}
    assert with_header.interactions.timestamp.dtype == "int64"


def test_generic_custom_columns_and_duplicate_items(tmp_path):
    inter = tmp_path / "clicks.parquet"
    pd.DataFrame({"who": ["a", "a", "b"], "sku": [1, 2, 2]}).to_parquet(inter)
    items = _write(tmp_path / "items.csv", "sku,desc\n1,one\n2,two\n2,two\n3,\n")
    raw = load_generic(inter, items, GenericColumns(user="who", item="sku", item_key="sku", text="desc"))
    assert raw.items.item_id.tolist() == ["1", "2"]
    assert raw.dropped == {"items_empty_text": 1, "items_duplicate_id": 1}
    assert len(raw.warnings) == 2
    assert "rating" not in raw.interactions and raw.interactions.item_id.tolist() == ["1", "2", "2"]


def test_generic_error_messages(tmp_path):
    items = _write(tmp_path / "items.csv", "id,text\n1,x\n")
    bad = _write(tmp_path / "r.csv", "user_id,item_id,rating\nu,1,5\nu,1,five\n")
    with pytest.raises(BeerayError, match=r"r\.csv: line 3: rating 'five'"):
        load_generic(bad, items)
    nan_id = _write(tmp_path / "n.csv", "user_id,item_id\nu,1\n,1\n")
    with pytest.raises(BeerayError, match=r"n\.csv: line 3: empty user id"):
        load_generic(nan_id, items)
    with pytest.raises(BeerayError, match=r"missing column\(s\) item_id"):
        load_generic(_write(tmp_path / "m.csv", "user_id,movie\nu,1\n"), items)
    with pytest.raises(BeerayError, match=r"nope\.csv: file not found"):
        load_generic(tmp_path / "nope.csv", items)
    dup = _write(tmp_path / "dup.csv", "id,text\n1,x\n1,y\n")
    with pytest.raises(BeerayError, match=r"dup\.csv: item id '1' appears 2 times with different texts"):
        load_generic(_write(tmp_path / "ok.csv", "user_id,item_id\nu,1\n"), dup)


def test_combine_namespaces_ids():
    def raw(name):
        inter = pd.DataFrame({"user_id": ["1", "1", "2"], "item_id": ["1", "2", "1"], "rating": [5.0, 5.0, 4.0]})
        items = pd.DataFrame({"item_id": ["1", "2"], "text": [f"{name} one", f"{name} two"]})
        from beeray.data.loaders import RawDataset

        return RawDataset(name, inter, items)

    data = preprocess(combine({"goodbooks": raw("goodbooks"), "movielens": raw("movielens")}),
                      min_user_interactions=1)
    assert data.items.item_id.tolist() == ["goodbooks:1", "goodbooks:2", "movielens:1", "movielens:2"]
    assert data.items.dataset.tolist() == ["goodbooks"] * 2 + ["movielens"] * 2
    assert sorted(data.users.user_id) == ["goodbooks:1", "goodbooks:2", "movielens:1", "movielens:2"]
    assert data.stats()["per_dataset"]["movielens"] == {"users": 2, "items": 2, "interactions": 3}
