"""The paper's preprocessing (docs/method.md §1) and multi-dataset combination ("goodlens").

One pass, in this order: keep ratings >= threshold, drop interactions on items without a text,
dedupe (user, item), keep users with >= min interactions. The pass is not iterated to a fixed
point: that is what the paper's figures (659 / 6,169 / 51,535 on ml-latest-small) correspond to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from beeray.data.loaders import RawDataset
from beeray.errors import BeerayError


@dataclass
class Processed:
    """Filtered, re-indexed data: items 0..n_items-1, users 0..n_users-1."""

    name: str
    items: pd.DataFrame  # item_id, text [, dataset] [, group]; row = item index
    users: pd.DataFrame  # user_id [, dataset]; row = user index
    # user:int32, item:int32 [, timestamp:int64]; sorted by user then time (or input order)
    interactions: pd.DataFrame
    has_timestamps: bool
    order_only: bool
    dropped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)

    def stats(self) -> dict:
        n_u, n_i, n = self.n_users, self.n_items, len(self.interactions)
        out = {"users": n_u, "items": n_i, "interactions": n,
               "density": float(n / (n_u * n_i)) if n_u and n_i else 0.0}
        if "dataset" in self.items.columns:
            per = {}
            for ds in sorted(self.items["dataset"].unique()):
                item_mask = (self.items["dataset"] == ds).to_numpy()
                inter_mask = item_mask[self.interactions["item"].to_numpy()]
                per[ds] = {"users": int(self.interactions.loc[inter_mask, "user"].nunique()),
                           "items": int(item_mask.sum()), "interactions": int(inter_mask.sum())}
            out["per_dataset"] = per
        return out


def preprocess(raw: RawDataset, min_rating: float | None = 4.0, min_user_interactions: int = 5) -> Processed:
    """Apply docs/method.md §1 to a raw dataset; BeerayError when nothing survives."""
    inter = raw.interactions
    dropped = dict(raw.dropped)
    if raw.has_ratings and min_rating is not None:
        keep = inter["rating"].to_numpy() >= min_rating
        dropped["interactions_below_min_rating"] = int((~keep).sum())
        inter = inter[keep]
    with_text = inter["item_id"].isin(raw.items["item_id"])
    dropped["interactions_item_without_text"] = int((~with_text).sum())
    inter = inter[with_text]
    before = len(inter)
    # Keep the earliest occurrence: a re-rating later in time must not move the item in the history.
    if raw.has_timestamps:
        inter = inter.sort_values("timestamp", kind="stable")
    inter = inter.drop_duplicates(["user_id", "item_id"], keep="first")
    dropped["duplicate_interactions"] = before - len(inter)
    counts = inter["user_id"].value_counts()
    ok_users = counts.index[counts >= min_user_interactions]
    keep = inter["user_id"].isin(ok_users)
    dropped["users_below_min_interactions"] = int((counts < min_user_interactions).sum())
    dropped["interactions_of_dropped_users"] = int((~keep).sum())
    inter = inter[keep]
    if inter.empty:
        raise BeerayError(
            f"{raw.name}: no users left after preprocessing (rating >= {min_rating}, items with text, "
            f">= {min_user_interactions} interactions per user); check --min-rating / --min-user-interactions "
            "and that item ids in the interactions match the item file")

    # Item order follows the item file (stable, meaningful for humans); only items with interactions.
    used = set(inter["item_id"].unique())
    items = raw.items[raw.items["item_id"].isin(used)].reset_index(drop=True)
    dropped["items_without_interactions"] = int(len(raw.items) - len(items))
    item_index = pd.Series(np.arange(len(items), dtype=np.int32), index=items["item_id"].to_numpy())
    # Users in order of first appearance in the input file (inter keeps the raw row index).
    inter = inter.sort_index(kind="stable")
    _, user_ids = pd.factorize(inter["user_id"])
    user_index = pd.Series(np.arange(len(user_ids), dtype=np.int32), index=user_ids)
    out = pd.DataFrame({"user": user_index[inter["user_id"].to_numpy()].to_numpy().astype(np.int32),
                        "item": item_index[inter["item_id"].to_numpy()].to_numpy().astype(np.int32)})
    if raw.has_timestamps:
        out["timestamp"] = inter["timestamp"].to_numpy().astype(np.int64)
        # Within a user: time order; ties keep input order (stable sort).
        out = out.sort_values(["user", "timestamp"], kind="stable")
    else:
        out = out.sort_values("user", kind="stable")
    users = pd.DataFrame({"user_id": np.asarray(user_ids, dtype=object).astype(str)})
    if "dataset" in raw.interactions.columns:
        first = inter.drop_duplicates("user_id").set_index("user_id")["dataset"] if "dataset" in inter else None
        if first is not None:
            users["dataset"] = first[users["user_id"].to_numpy()].to_numpy()
    return Processed(raw.name, items, users, out.reset_index(drop=True), raw.has_timestamps, raw.order_only,
                     dropped, list(raw.warnings))


def combine(raws: dict[str, RawDataset]) -> RawDataset:
    """Concatenate datasets with namespaced ids ("goodbooks:123", "movielens:1") into one raw dataset.

    Items get a `dataset` column; interactions too (to label users). Ratings are kept only if every
    part has them (a part without ratings counts every entry as an interaction: rating = +inf).
    Timestamps are dropped unless every part has real ones: clocks of different sources don't mix
    with position-only sequences.
    """
    if not raws:
        raise BeerayError("goodlens: no datasets given (use --input NAME=PATH, repeatable)")
    inters, items = [], []
    all_ts = all(r.has_timestamps and not r.order_only for r in raws.values())
    dropped: dict[str, int] = {}
    warnings: list[str] = []
    for name, raw in raws.items():
        if ":" in name:
            raise BeerayError(f"goodlens: dataset name {name!r} must not contain ':'")
        i = raw.interactions.copy()
        i["user_id"] = name + ":" + i["user_id"].astype(str)
        i["item_id"] = name + ":" + i["item_id"].astype(str)
        if "rating" not in i.columns:
            i["rating"] = np.inf
        if not all_ts and "timestamp" in i.columns:
            i = i.drop(columns="timestamp")
        i["dataset"] = name
        inters.append(i)
        it = raw.items[["item_id", "text", *(["group"] if "group" in raw.items.columns else [])]].copy()
        it["item_id"] = name + ":" + it["item_id"].astype(str)
        if "group" in it.columns:  # the shop's bundles: its cold-item draw keeps one warm item per bundle
            it["group"] = name + ":" + it["group"].astype(str)
        it["dataset"] = name
        items.append(it)
        for k, v in raw.dropped.items():
            dropped[k] = dropped.get(k, 0) + v
        warnings.extend(raw.warnings)
    return RawDataset("+".join(raws), pd.concat(inters, ignore_index=True), pd.concat(items, ignore_index=True),
                      order_only=False, dropped=dropped, warnings=warnings)
