"""Splits named by a digest (issue 31): `beeray prepare` records a SHA-256 of the split that depends on
its content only, writes the cold items as ids (split_items.tsv), and `--split-items` reproduces a split
from such a file, or refuses one line naming the file and line."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beeray.cli import main
from beeray.data.prepared import SPLIT_ITEMS, PreparedData, split_digest
from tests.helpers import SHARED_DATA, needs_shared


def _prepare(out, *extra) -> dict:
    assert main(["prepare", "synthetic", "--out", str(out), *extra]) == 0
    return json.loads((out / "split.json").read_text())


def _table(folder, name):
    return pq.read_table(folder / f"{name}.parquet")


def test_split_items_round_trip_and_the_digest_names_the_split(tmp_path, capsys):
    first = _prepare(tmp_path / "a")
    assert len(first["digest"]) == 64
    assert json.loads((tmp_path / "a" / "stats.json").read_text())["split"]["digest"] == first["digest"]
    assert f"split digest  sha256:{first['digest']}" in capsys.readouterr().out
    # Another seed draws other cold items: another digest.
    other = _prepare(tmp_path / "b", "--seed", "7")
    assert other["test_items"] != first["test_items"] and other["digest"] != first["digest"]
    # The first split's file, with the other seed: the first split again, file for file.
    again = _prepare(tmp_path / "c", "--seed", "7", "--split-items", str(tmp_path / "a" / SPLIT_ITEMS))
    assert (again["val_items"], again["test_items"], again["digest"]) == \
        (first["val_items"], first["test_items"], first["digest"])
    for name in ("train", "train_full", "val", "test"):
        assert _table(tmp_path / "c", name).equals(_table(tmp_path / "a", name))
    assert (tmp_path / "c" / SPLIT_ITEMS).read_text() == (tmp_path / "a" / SPLIT_ITEMS).read_text()
    assert "as given (--split-items)" in again["note"]


def _permute_items(src, dst, seed=0):
    """The same prepared set with its items in another order (indices remapped in every file)."""
    shutil.copytree(src, dst)
    items = _table(src, "items")
    perm = np.random.default_rng(seed).permutation(items.num_rows)  # new row r holds old item perm[r]
    new_index = np.argsort(perm)
    pq.write_table(items.take(pa.array(perm)), dst / "items.parquet")
    for name, cols in (("train", ["items"]), ("train_full", ["items"]), ("val", ["source", "target"]),
                       ("test", ["source", "target"])):
        table = _table(src, name)
        for col in cols:
            lists = [new_index[np.asarray(x, dtype=np.int64)].tolist()[::-1] for x in table.column(col).to_pylist()]
            table = table.set_column(table.schema.get_field_index(col), col, pa.array(lists, table.schema.field(col).type))
        pq.write_table(table.take(pa.array(np.arange(table.num_rows)[::-1])), dst / f"{name}.parquet")
    split = json.loads((src / "split.json").read_text())
    for key in ("val_items", "test_items", "val_candidates", "test_candidates"):
        split[key] = sorted(new_index[split[key]].tolist())
    split.pop("digest")
    (dst / "split.json").write_text(json.dumps(split))


def test_the_digest_depends_on_the_content_not_the_row_order(tmp_path):
    _prepare(tmp_path / "a")
    recorded = PreparedData.load(tmp_path / "a").split_digest
    _permute_items(tmp_path / "a", tmp_path / "p")
    assert not _table(tmp_path / "p", "items").equals(_table(tmp_path / "a", "items"))
    assert PreparedData.load(tmp_path / "p").split_digest == recorded  # computed: split.json has none
    # One interaction fewer in one list: another split.
    train = _table(tmp_path / "p", "train")
    lists = train.column("items").to_pylist()
    lists[0] = lists[0][1:]
    pq.write_table(train.set_column(1, "items", pa.array(lists, train.schema.field("items").type)),
                   tmp_path / "p" / "train.parquet")
    assert split_digest(tmp_path / "p") != recorded


@pytest.mark.parametrize("line, problem", [
    ("test\tno-such-item", "line 3: item 'no-such-item' is not in the catalog after preprocessing"),
    ("val\t{first}", "line 4: item '{first}' already listed on line 3"),
    ("cold {first}", "line 3: expected 'val' or 'test', a tab and an item id"),
])
def test_a_bad_split_items_file_is_one_line_naming_file_and_line(tmp_path, capsys, line, problem):
    _prepare(tmp_path / "a")
    lines = (tmp_path / "a" / SPLIT_ITEMS).read_text().splitlines()
    first = lines[2].split("\t")[1]
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join([*lines[:2], line.format(first=first), *lines[2:]]) + "\n")
    capsys.readouterr()
    assert main(["prepare", "synthetic", "--out", str(tmp_path / "b"), "--split-items", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"beeray prepare: error: {bad} {problem.format(first=first)}"), err
    assert len(err.splitlines()) == 1 and not (tmp_path / "b").exists()
    assert main(["prepare", "synthetic", "--out", str(tmp_path / "t"), "--split", "time", "--split-items",
                 str(bad)]) == 2
    assert "does not apply to --split time" in capsys.readouterr().err


@needs_shared("ml-latest-small")
def test_the_published_movielens_split_reproduces(tmp_path):
    """docs/splits/ml-latest-small.tsv, the split docs/results.md scores MovieLens on, rebuilt from the
    shared data with another seed: the digest recorded in the file's header comes back."""
    from pathlib import Path

    published = Path(__file__).resolve().parents[1] / "docs" / "splits" / "ml-latest-small.tsv"
    recorded = published.read_text().splitlines()[0].rsplit("digest ", 1)[1]
    out = tmp_path / "ml"
    assert main(["prepare", "movielens", "--input", str(SHARED_DATA / "ml-latest-small"), "--out", str(out),
                 "--seed", "1", "--split-items", str(published)]) == 0
    assert json.loads((out / "split.json").read_text())["digest"] == recorded
