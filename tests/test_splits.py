"""Split protocol (docs/method.md §4, §5) and the prepared folder's reader."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from beeray.data.loaders import RawDataset, load_dataset
from beeray.data.prepare import PrepareOptions, prepare_synthetic
from beeray.data.prepared import PreparedData
from beeray.data.preprocess import combine, preprocess
from beeray.data.splits import default_cold_size, item_split, time_split
from beeray.errors import BeerayError
from tests.helpers import train_matrix


@pytest.fixture(scope="module")
def shop():
    return preprocess(load_dataset("synthetic", None))


def _flat(series) -> set[int]:
    return {int(x) for xs in series for x in xs}


def test_item_split_properties(shop):
    s = item_split(shop, seed=7)
    n = shop.n_items
    assert default_cold_size(n) == 40 and len(s.val_items) == len(s.test_items) == 40
    val, test = set(s.val_items), set(s.test_items)
    assert len(val) == 40 and len(test) == 40 and not val & test  # distinct, disjoint
    assert s.val_candidates == s.val_items and s.test_candidates == s.test_items
    cold = val | test
    assert not _flat(s.train["items"]) & cold
    assert not _flat(s.train_full["items"]) & test
    assert _flat(s.train_full["items"]) & val  # final model may train on validation cold items
    for ev, own in ((s.val, val), (s.test, test)):
        assert not _flat(ev.frame["source"]) & cold
        assert _flat(ev.frame["target"]) <= own
        assert all(len(x) for x in ev.frame["source"]) and all(len(x) for x in ev.frame["target"])
    # Every user with an interaction on a test cold item is either evaluated or counted as excluded.
    inter = shop.interactions
    has_test = set(inter.loc[inter.item.isin(test), "user"])
    assert len(s.test.frame) + s.test.excluded_users == len(has_test)


def test_item_split_seeded_and_sized(shop):
    a, b, c = item_split(shop, seed=1), item_split(shop, seed=1), item_split(shop, seed=2)
    assert a.val_items == b.val_items and a.test_items == b.test_items
    assert a.val_items != c.val_items
    d = item_split(shop, val_items=10, test_items=25, seed=1)
    assert (len(d.val_items), len(d.test_items)) == (10, 25)
    with pytest.raises(BeerayError, match="400 items"):
        item_split(shop, val_items=200, test_items=200)


def test_item_split_keeps_bundles_partly_warm(shop):
    groups = shop.items["group"].to_numpy()
    for seed in range(5):
        s = item_split(shop, seed=seed, groups=groups)
        cold = np.zeros(shop.n_items, bool)
        cold[s.val_items + s.test_items] = True
        warm_per_group = pd.Series(~cold).groupby(groups).sum()
        assert (warm_per_group >= 1).all()


def test_excluded_users_have_no_source():
    # user "a" only touches items that will be cold -> excluded, counted.
    inter = pd.DataFrame({"user_id": ["a", "b", "b", "b"], "item_id": ["1", "1", "2", "3"]})
    items = pd.DataFrame({"item_id": [str(i) for i in range(1, 5)] + ["x"], "text": list("abcde")})
    inter = pd.concat([inter, pd.DataFrame({"user_id": ["c"] * 3, "item_id": ["2", "3", "4"]})])
    data = preprocess(RawDataset("t", inter.reset_index(drop=True), items), min_user_interactions=1)
    item1 = int(np.flatnonzero(data.items.item_id == "1")[0])
    for seed in range(50):
        s = item_split(data, val_items=1, test_items=1, seed=seed)
        if s.test_items == [item1]:
            assert s.test.excluded_users == 1 and len(s.test.frame) == 1
            return
    pytest.fail("no seed put item 1 into the test split")


def _timed(n_users=30, per_user=10, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", f"i{rng.integers(60)}", 5.0, int(rng.integers(0, 10_000)))
            for u in range(n_users) for _ in range(per_user)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(60)], "text": [f"t{i}" for i in range(60)]})
    return preprocess(RawDataset("t", inter, items), min_user_interactions=1)


def test_time_split_global():
    data = _timed()
    s = time_split(data)
    t_val, t_test = s.extra["val_start"], s.extra["test_start"]
    ts = data.interactions.timestamp.to_numpy()
    assert abs((ts >= t_test).mean() - 0.2) < 0.03 and abs(((ts >= t_val) & (ts < t_test)).mean() - 0.2) < 0.03
    assert s.val_candidates is None and s.test_candidates is None
    inter = data.interactions.set_index(["user", "item"])["timestamp"]
    for _, row in s.test.frame.iterrows():
        assert all(inter[(row.user, i)] < t_test for i in row.source)
        assert all(inter[(row.user, i)] >= t_test for i in row.target)
    for _, row in s.val.frame.iterrows():
        assert all(inter[(row.user, i)] < t_val for i in row.source)
        assert all(t_val <= inter[(row.user, i)] < t_test for i in row.target)
    train = {(u, i) for u, xs in zip(s.train.user, s.train["items"]) for i in xs}
    assert all(inter[k] < t_val for k in train)
    full = {(u, i) for u, xs in zip(s.train_full.user, s.train_full["items"]) for i in xs}
    assert all(inter[k] < t_test for k in full) and train < full


def test_time_split_per_user_order(tmp_path):
    import json

    (tmp_path / "X.inter.json").write_text(json.dumps({"a": list(range(10)), "b": [3, 2, 1, 0, 9]}))
    (tmp_path / "X.item.json").write_text(json.dumps({str(i): {"title": f"item {i}"} for i in range(10)}))
    data = preprocess(load_dataset("amazon-json", tmp_path))
    s = time_split(data)
    assert "per user" in s.note
    ids = data.items.item_id.to_numpy()
    test = {data.users.user_id[u]: (ids[src].tolist(), ids[tgt].tolist())
            for u, src, tgt in zip(s.test.frame.user, s.test.frame.source, s.test.frame.target)}
    assert test["a"] == ([str(i) for i in range(8)], ["8", "9"])
    assert test["b"] == (["3", "2", "1", "0"], ["9"])
    with pytest.raises(BeerayError, match="needs timestamps"):
        time_split(preprocess(RawDataset("t", pd.DataFrame({"user_id": ["a"], "item_id": ["1"]}),
                                         pd.DataFrame({"item_id": ["1"], "text": ["x"]})), min_user_interactions=1))


def test_goodlens_parts_draw_their_own_cold_items():
    """Each dataset of a goodlens catalog gets the cold items its item split alone gives (same seed, the
    sizes per dataset), not a share of one draw over the joint catalog."""
    def raw(name, n_items, seed):
        rng = np.random.default_rng(seed)
        inter = pd.DataFrame({"user_id": [str(u) for u in range(40) for _ in range(8)],
                              "item_id": [str(rng.integers(n_items)) for _ in range(320)]})
        return RawDataset(name, inter, pd.DataFrame({"item_id": [str(i) for i in range(n_items)],
                                                     "text": [f"{name} {i}" for i in range(n_items)]}))

    raws = {"goodbooks": raw("goodbooks", 150, 0), "movielens": raw("movielens", 50, 1)}
    data = preprocess(combine(raws))
    assert data.items.item_id.is_unique
    ids = data.items.item_id.to_numpy()
    for sizes in ({"val_items": 7, "test_items": 5}, {}):
        s = item_split(data, seed=3, **sizes)
        for name, r in raws.items():
            alone = preprocess(r)
            a = item_split(alone, seed=3, **sizes)
            mine = s.per_dataset[name]
            for which in ("val", "test"):
                want = {f"{name}:{i}" for i in alone.items.item_id.to_numpy()[getattr(a, f"{which}_items")]}
                assert set(ids[mine[f"{which}_items"]]) == want, (name, which, sizes)
                ev = getattr(a, which)
                assert (mine[f"{which}_users"], mine[f"{which}_excluded_users"]) == (len(ev.frame), ev.excluded_users)
            assert len(mine["val_items"]) == sizes.get("val_items", default_cold_size(alone.n_items))
        assert sorted(s.per_dataset["goodbooks"]["test_items"] + s.per_dataset["movielens"]["test_items"]) \
            == s.test_items
    with pytest.raises(BeerayError, match="dataset 'movielens'.*lower --val-items"):
        item_split(data, val_items=30, test_items=20, seed=3)  # movielens has fewer than 50 items


def test_prepared_reader_matches_split(tmp_path):
    res = prepare_synthetic(tmp_path / "shop", options=PrepareOptions(seed=5))
    pdata = PreparedData.load(tmp_path / "shop")
    assert pdata.n_items == res.stats["items"] == len(pdata.texts)
    x = train_matrix(pdata)
    assert x.dtype == np.float32 and x.shape[1] == pdata.n_items
    cold = pdata.split["val_items"] + pdata.split["test_items"]
    assert x[:, cold].nnz == 0 and x.nnz == res.stats["split"]["train_interactions"]
    assert train_matrix(pdata, full=True)[:, pdata.split["test_items"]].nnz == 0
    ev = pdata.eval_split("test")
    assert ev.source.shape == ev.target.shape == (len(ev.user), pdata.n_items)
    assert ev.source[:, cold].nnz == 0 and ev.target.nnz == ev.target[:, pdata.split["test_items"]].nnz
    assert sorted(ev.candidates.tolist()) == pdata.split["test_items"]
    (tmp_path / "shop" / "val.parquet").unlink()
    with pytest.raises(BeerayError, match=r"val\.parquet: missing"):
        PreparedData.load(tmp_path / "shop")
