"""The synthetic shop: deterministic, bundles textually dissimilar, categories textually alike."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd

from beeray.cli import main
from beeray.data.prepare import prepare_synthetic
from beeray.data.synthetic import generate_scaled_shop, generate_shop
from tests.helpers import jaccard


def test_deterministic_and_sized():
    a_inter, a_items = generate_shop(seed=3)
    b_inter, b_items = generate_shop(seed=3)
    pd.testing.assert_frame_equal(a_inter, b_inter)
    pd.testing.assert_frame_equal(a_items, b_items)
    c_inter, _ = generate_shop(seed=4)
    assert not a_inter.equals(c_inter)
    assert 300 <= len(a_items) <= 420 and a_items.item_id.is_unique and a_items.text.is_unique
    assert 400 <= a_inter.user_id.nunique() <= 700


def test_bundles_share_few_words_categories_many():
    _, items = generate_shop(seed=0)
    same_bundle, same_role_other_bundle, same_category_other_bundle = [], [], []
    for a, b in itertools.combinations(items.itertuples(), 2):
        if a.category != b.category:
            continue
        j = jaccard(a.text, b.text)
        if a.bundle == b.bundle:
            same_bundle.append(j)
        else:
            same_category_other_bundle.append(j)
            if a.role == b.role:
                same_role_other_bundle.append(j)
    assert np.mean(same_bundle) < 0.5 * np.mean(same_category_other_bundle)
    assert np.mean(same_bundle) < 0.25 * np.mean(same_role_other_bundle)
    # The text-nearest item of a main product (printer, tent, ...) is never one of its bundle-mates.
    mains = items[items.role == items.groupby("category").role.transform("first")]
    for m in mains.itertuples():
        others = items[(items.category == m.category) & (items.item_id != m.item_id)]
        nearest = others.iloc[int(np.argmax([jaccard(m.text, t) for t in others.text]))]
        assert nearest.bundle != m.bundle


def test_users_buy_bundles():
    inter, items = generate_shop(seed=0)
    bundle = dict(zip(items.item_id, items.bundle))
    liked = inter[inter.rating >= 4]
    per_user = liked.groupby("user_id").item_id.apply(lambda s: pd.Series([bundle[i] for i in s]).value_counts().max())
    assert (per_user >= 2).mean() > 0.9  # most users hold several items of one bundle


def test_default_prepare_is_synthetic(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["prepare"]) == 0
    stats = json.loads((tmp_path / "data" / "synthetic" / "stats.json").read_text())
    assert stats["dataset"] == "synthetic"
    assert stats["split"]["val_items"] == stats["split"]["test_items"] == round(0.1 * stats["items"])
    # Same data via the helper into another folder: identical fingerprint and catalog.
    res = prepare_synthetic(tmp_path / "again")
    assert res.stats["fingerprint"] == stats["fingerprint"]
    items = pd.read_parquet(tmp_path / "again" / "items.parquet")
    split = json.loads((tmp_path / "again" / "split.json").read_text())
    bundle = items.item_id.str.slice(0, 4)
    cold = set(split["val_items"]) | set(split["test_items"])
    warm_bundles = set(bundle[[i for i in range(len(items)) if i not in cold]])
    assert set(bundle.iloc[sorted(cold)]) <= warm_bundles  # every cold item has a warm bundle-mate


def test_scaled_shop_has_the_size_asked_and_the_shops_structure():
    inter, items = generate_scaled_shop(300, 800, 6000, seed=5)
    assert len(items) == 800 and items.item_id.is_unique and len(inter) == 6000
    again, _ = generate_scaled_shop(300, 800, 6000, seed=5)
    pd.testing.assert_frame_equal(inter, again)  # deterministic given the seed
    assert inter.user_id.nunique() == 300
    inter = inter.assign(user_id=inter.user_id.astype(str), item_id=inter.item_id.astype(str))
    # Timestamps increase within each user (purchase order).
    assert inter.groupby("user_id").timestamp.apply(lambda t: t.is_monotonic_increasing).all()
    # Co-consumption: a user who bought a bundle's main product holds most of its accessories.
    role = dict(zip(items.item_id, items.role))
    bundle = dict(zip(items.item_id, items.bundle))
    inter["bundle"], inter["main"] = inter.item_id.map(bundle), inter.item_id.map(role).isin(
        items.groupby("category").role.first())
    per = inter.groupby(["user_id", "bundle"]).agg(main=("main", "any"), n=("item_id", "nunique"))
    assert per[per.main].n.mean() > 3.0  # main + ~0.85 x 3 accessories (noise rows are rarely mains)
    # Popularity is skewed: the top tenth of the items takes far more than a tenth of the rows.
    counts = inter.item_id.value_counts()
    assert counts.iloc[:80].sum() / counts.sum() > 0.25


def test_scaled_shop_prepares_under_its_own_fingerprint(tmp_path, capsys):
    assert main(["prepare", "synthetic", "--synthetic-size", "300", "800", "6000", "--out", str(tmp_path / "s")]) == 0
    stats = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert stats["users"] <= 300 and stats["items"] <= 800
    demo = prepare_synthetic(tmp_path / "demo")
    assert demo.stats["fingerprint"] != stats["fingerprint"]
    assert main(["prepare", "synthetic", "--synthetic-size", "10", "44", "100", "--out", str(tmp_path / "x")]) == 2
    assert "--synthetic-size: items must be a positive multiple of 40" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
