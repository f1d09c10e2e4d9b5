"""The live catalogue behind `beeray serve` (beeray/catalog.py): writes persisted before they count, the
same rows on every copy, nothing lost on reopening, another model's or a torn catalogue refused."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from beeray.catalog import Catalog, segment_name
from beeray.errors import BeerayError
from beeray.recommender import recommend

DIM = 8


def unit(rng, n):
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def same(a: Catalog, b: Catalog) -> None:
    assert (a.version, a.ids, a.texts) == (b.version, b.ids, b.texts)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    np.testing.assert_array_equal(a.new, b.new)


def test_writes_persist_replace_delete_and_reopen_identically(tmp_path):
    rng = np.random.default_rng(0)
    cat = Catalog.open(tmp_path / "cat", "m", "fp1", DIM)
    assert cat.version == 0 and len(cat) == 0
    v1 = cat.put([f"i{j}" for j in range(6)], [f"text {j}" for j in range(6)], unit(rng, 6), new=False)
    replaced = unit(rng, 1)
    v2 = cat.put(["i2", "n1"], ["changed", "brand new"], np.vstack([replaced, unit(rng, 1)]))
    v3 = cat.delete(["i0"])
    assert (v1, v2, v3) == (1, 2, 3) and len(cat) == 6
    assert cat.ids[0] == "n1" and cat.row["n1"] == 0  # the last row moved into the deleted one's place
    assert cat.texts[cat.row["i2"]] == "changed"
    np.testing.assert_array_equal(cat.vectors[cat.row["i2"]], replaced[0])
    assert cat.new.tolist() == [True, False, True, False, False, False]  # n1, and i2 rewritten while serving
    same(cat, Catalog.open(tmp_path / "cat", "m", "fp1", DIM))  # a restart: every acknowledged write


def test_a_new_item_is_recommended_at_once_and_scored_as_beeray_recommend(tmp_path):
    rng = np.random.default_rng(1)
    cat = Catalog.open(tmp_path / "cat", "m", "fp1", DIM)
    base = unit(rng, 20)
    cat.put([f"i{j}" for j in range(20)], [str(j) for j in range(20)], base, new=False)
    # an item whose vector is the history item's: it ranks first as soon as it is written
    cat.put(["twin"], ["the same text"], base[3:4])
    recs = cat.recommend(["i3"], k=5)
    assert recs[0].item_id == "twin"
    offline = recommend(cat.vectors, np.asarray(cat.ids, dtype=object), ["i3"], k=5)
    assert [(r.item_id, r.score) for r in recs] == [(r.item_id, r.score) for r in offline]
    assert [r.item_id for r in cat.recommend(["i3"], k=3, only_new=True)] == ["twin"]
    assert "i3" in [r.item_id for r in cat.recommend(["i3"], k=21, exclude_history=False)]


def test_another_models_catalogue_and_a_torn_segment_are_refused(tmp_path):
    rng = np.random.default_rng(2)
    cat = Catalog.open(tmp_path / "cat", "m", "fp1", DIM)
    cat.put(["a", "b"], ["x", "y"], unit(rng, 2))
    with pytest.raises(BeerayError, match="catalogue of another model .*not of m2 \\(fp2\\)"):
        Catalog.open(tmp_path / "cat", "m2", "fp2", DIM)
    cat.put(["c"], ["z"], unit(rng, 1))
    segment = tmp_path / "cat" / segment_name(2)
    segment.write_bytes(segment.read_bytes()[:-20])  # torn: its footer gone
    with pytest.raises(BeerayError) as err:
        Catalog.open(tmp_path / "cat", "m", "fp1", DIM)
    assert "000000002.parquet: a torn or unreadable catalogue segment" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(BeerayError, match="no item with id 'nope'"):
        cat.delete(["nope"])
    with pytest.raises(BeerayError, match="expected one 8-dimensional vector per item"):
        cat.put(["d"], ["w"], np.zeros((1, 3), np.float32))
    assert cat.version == 2  # refused writes wrote nothing


def test_concurrent_writers_to_one_id_end_in_one_consistent_version(tmp_path):
    """Two catalogue copies (two processes' worth) write the same id at once: each write gets its own
    version, none is lost, and every copy ends with the later one."""
    rng = np.random.default_rng(3)
    Catalog.open(tmp_path / "cat", "m", "fp1", DIM).put(["a"], ["start"], unit(rng, 1))
    writers = [Catalog.open(tmp_path / "cat", "m", "fp1", DIM) for _ in range(2)]
    vectors = [unit(rng, 25) for _ in writers]
    done: list[list[int]] = [[], []]

    def write(w: int) -> None:
        for j in range(25):
            done[w].append(writers[w].put(["a"], [f"writer {w} write {j}"], vectors[w][j:j + 1]))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = sorted(done[0] + done[1])
    assert versions == list(range(2, 52))  # every write its own version, none overwritten
    final = Catalog.open(tmp_path / "cat", "m", "fp1", DIM)
    last = 0 if done[0][-1] > done[1][-1] else 1
    assert final.version == 51 and final.texts == [f"writer {last} write 24"]
    for w in writers:
        w.refresh()
        same(w, final)
