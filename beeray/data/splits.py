"""Evaluation splits (docs/method.md §4 item split, §5 time split) over preprocessed interactions.

Both return a `Split`: cold/candidate items, training lists (`train`, `train_full`) and the
val/test (source, target) lists, all as item indices. Nothing here touches the disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from beeray.data.preprocess import Processed
from beeray.errors import BeerayError


@dataclass
class EvalLists:
    frame: pd.DataFrame  # user:int32, source:list<int32>, target:list<int32>
    excluded_users: int  # had a target but no source


@dataclass
class Split:
    kind: str  # "item" | "time"
    seed: int
    val_items: list[int]
    test_items: list[int]
    val_candidates: list[int] | None
    test_candidates: list[int] | None
    train: pd.DataFrame  # user:int32, items:list<int32>
    train_full: pd.DataFrame
    val: EvalLists
    test: EvalLists
    note: str = ""
    per_dataset: dict | None = None
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        def n_inter(df: pd.DataFrame, col: str) -> int:
            return int(df[col].map(len).sum()) if len(df) else 0

        out = {"kind": self.kind, "seed": self.seed,
               "val_items": len(self.val_items), "test_items": len(self.test_items),
               "train_users": len(self.train), "train_interactions": n_inter(self.train, "items"),
               "train_full_users": len(self.train_full), "train_full_interactions": n_inter(self.train_full, "items")}
        for name, ev in (("val", self.val), ("test", self.test)):
            out[name] = {"users": len(ev.frame), "excluded_users": ev.excluded_users,
                         "source_interactions": n_inter(ev.frame, "source"),
                         "target_interactions": n_inter(ev.frame, "target")}
        if self.note:
            out["note"] = self.note
        out.update(self.extra)
        return out

    def to_json(self) -> dict:
        """The split.json document (contract: kind, seed, val/test items, candidates, sizes, notes)."""
        doc = {"kind": self.kind, "seed": self.seed, "val_items": self.val_items, "test_items": self.test_items,
               "val_candidates": self.val_candidates, "test_candidates": self.test_candidates,
               "val_excluded_users": self.val.excluded_users, "test_excluded_users": self.test.excluded_users,
               "sizes": self.summary(), "note": self.note}
        if self.per_dataset is not None:
            doc["per_dataset"] = self.per_dataset
        doc.update(self.extra)
        return doc


# ---------------------------------------------------------------- list builders


def _lists(user: np.ndarray, item: np.ndarray, col: str = "items") -> pd.DataFrame:
    """Group item indices by user; input must be sorted by user (order within a user is kept)."""
    if len(user) == 0:
        return pd.DataFrame({"user": np.array([], dtype=np.int32), col: pd.Series([], dtype=object)})
    users, starts = np.unique(user, return_index=True)
    parts = np.split(item.astype(np.int32), starts[1:])
    return pd.DataFrame({"user": users.astype(np.int32), col: parts})


def _eval_lists(user: np.ndarray, item: np.ndarray, source_mask: np.ndarray, target_mask: np.ndarray) -> EvalLists:
    tgt = _lists(user[target_mask], item[target_mask], "target")
    src = _lists(user[source_mask], item[source_mask], "source")
    merged = tgt.merge(src, on="user", how="left")
    has_source = merged["source"].map(lambda x: isinstance(x, np.ndarray) and len(x) > 0)
    excluded = int((~has_source).sum())
    merged = merged[has_source].reset_index(drop=True)
    return EvalLists(merged[["user", "source", "target"]], excluded)


# ---------------------------------------------------------------- item split


def default_cold_size(n_items: int) -> int:
    """2,000 as in the paper, scaled to 10% of the catalog for small data."""
    return int(min(2000, math.floor(0.1 * n_items + 0.5)))


def _pick(rng: np.random.Generator, pool: np.ndarray, k: int, groups: np.ndarray | None,
          warm_left: dict) -> list[int]:
    """k distinct items of `pool` in random order; with groups, never take a group's last warm item."""
    order = rng.permutation(pool)
    if groups is None:
        return [int(x) for x in order[:k]]
    chosen = []
    for i in order:
        if len(chosen) == k:
            break
        g = groups[i]
        if warm_left[g] > 1:
            warm_left[g] -= 1
            chosen.append(int(i))
    # Groups too small to spare an item: fall back to plain random choice for the remainder.
    if len(chosen) < k:
        taken = set(chosen)
        rest = [int(i) for i in order if int(i) not in taken]
        chosen.extend(rest[: k - len(chosen)])
    return chosen


def _cold_sizes(n: int, val_items: int | None, test_items: int | None, what: str) -> tuple[int, int]:
    """Validation and test cold-item counts for a catalog of n items (None: the default size)."""
    v = default_cold_size(n) if val_items is None else int(val_items)
    t = default_cold_size(n) if test_items is None else int(test_items)
    if v < 1 or t < 1:
        raise BeerayError(f"item split{what}: need at least 1 validation and 1 test cold item (got {v} and {t}; "
                          f"the catalog has {n} items)")
    if v + t >= n:
        raise BeerayError(f"item split{what}: {v} validation + {t} test cold items >= {n} items in the catalog; "
                          "lower --val-items/--test-items")
    return v, t


def _draw(n: int, v: int, t: int, seed: int, groups: np.ndarray | None) -> tuple[list[int], list[int]]:
    """The cold-item draw of one catalog of n items: (sorted val, sorted test) item indices."""
    rng = np.random.default_rng(seed)
    warm_left: dict = {}
    if groups is not None:
        for g in groups:
            warm_left[g] = warm_left.get(g, 0) + 1
    picked = _pick(rng, np.arange(n), v + t, groups, warm_left)
    return sorted(picked[:v]), sorted(picked[v:])


def item_split(data: Processed, val_items: int | None = None, test_items: int | None = None,
               seed: int = 42, groups: np.ndarray | None = None,
               given: tuple[list[int], list[int]] | None = None) -> Split:
    """Cold-start split: disjoint random val/test cold items, drawn without replacement.

    With a `dataset` column (goodlens), each dataset draws its own cold items exactly as the item
    split of that dataset alone would (same seed, its own catalog, the sizes applying to each
    dataset): its items keep their relative order in the joint catalog, so the same draw picks the
    same items, and a goodlens model and a single-dataset model are tested on identical items (and
    neither trains on the other's test items). `groups` (one label per item, e.g. synthetic
    bundles) keeps at least one warm item per group where possible. `given`: the (val, test) cold item
    indices to use instead of a draw (`beeray prepare --split-items`: someone else's split).
    """
    n = data.n_items
    per_dataset = None
    if "dataset" in data.items.columns and data.items["dataset"].nunique() > 1:
        ds = data.items["dataset"].to_numpy()
        val, test, per_dataset = [], [], {}
        for d in sorted(set(ds)):
            pool = np.flatnonzero(ds == d)  # ascending: the dataset's own item order
            dv, dt = _cold_sizes(len(pool), val_items, test_items, f" of dataset {d!r}")
            own = None if groups is None else groups[pool]
            if own is not None and pd.isna(own).all():  # a part without groups (only the shop has them)
                own = None
            if given is None:
                lv, lt = _draw(len(pool), dv, dt, seed, own)
                dval, dtest = pool[lv].tolist(), pool[lt].tolist()
            else:
                dval, dtest = (sorted(i for i in g if ds[i] == d) for g in given)
            val += dval
            test += dtest
            per_dataset[d] = {"items": len(pool), "val_items": dval, "test_items": dtest}
        val, test = sorted(val), sorted(test)
        v, t = len(val), len(test)
    elif given is not None:
        val, test = sorted(given[0]), sorted(given[1])
        v, t = len(val), len(test)
    else:
        v, t = _cold_sizes(n, val_items, test_items, "")
        val, test = _draw(n, v, t, seed, groups)

    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    is_test = np.zeros(n, dtype=bool)
    is_test[test] = True
    user = data.interactions["user"].to_numpy()
    item = data.interactions["item"].to_numpy()
    warm = ~(is_val[item] | is_test[item])
    sizes = ("as requested" if val_items is not None or test_items is not None
             else "= min(2000, 10% of items)") + (" of each dataset, each drawn on its own" if per_dataset else "")
    split = Split(
        kind="item", seed=int(seed), val_items=val, test_items=test, val_candidates=val, test_candidates=test,
        train=_lists(user[warm], item[warm]),
        train_full=_lists(user[~is_test[item]], item[~is_test[item]]),
        # Same source for both splits: interactions on items cold in neither (as the reference does).
        val=_eval_lists(user, item, warm, is_val[item]),
        test=_eval_lists(user, item, warm, is_test[item]),
        note=(f"item split: {v} validation and {t} test cold items of {n}, " + (
            "as given (--split-items)" if given is not None else
            f"drawn without replacement (seed {seed}); sizes {sizes}")),
        per_dataset=per_dataset,
    )
    if per_dataset is not None:
        _per_dataset_users(split, data, {"val": is_val[item], "test": is_test[item]})
    return split


def _per_dataset_users(split: Split, data: Processed, targets: dict[str, np.ndarray]) -> None:
    """Per dataset and split: the users scored on that dataset's items, and those excluded (a target there
    but no source), so that each dataset's result reports its users as the dataset alone would.
    targets: per split, which interactions are its targets."""
    user = data.interactions["user"].to_numpy()
    item = data.interactions["item"].to_numpy()
    ds = data.items["dataset"].to_numpy()
    for name, ev in (("val", split.val), ("test", split.test)):
        for d, info in split.per_dataset.items():
            own = ds == d
            with_target = np.unique(user[targets[name] & own[item]]).size
            scored = int(sum(bool(own[t].any()) for t in ev.frame["target"]))
            info[f"{name}_users"] = scored
            info[f"{name}_excluded_users"] = int(with_target - scored)


# ---------------------------------------------------------------- time split


def time_split(data: Processed, val_frac: float = 0.2, test_frac: float = 0.2) -> Split:
    """Time split: last `test_frac` of interactions = test, the `val_frac` before = validation.

    Real clocks: global time thresholds. Position-only order (amazon json): per user, the last
    `test_frac` of each user's sequence is test and the `val_frac` before it validation.
    """
    if not data.has_timestamps:
        raise BeerayError(f"{data.name}: --split time needs timestamps (or an ordered sequence); "
                          "this dataset has none, use --split item")
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise BeerayError(f"time split: fractions must be in (0,1) and sum below 1 (got {val_frac}, {test_frac})")
    df = data.interactions  # sorted by user, then time
    user = df["user"].to_numpy()
    item = df["item"].to_numpy()
    ts = df["timestamp"].to_numpy()
    if data.order_only:
        # Position of each interaction inside its user's sequence, and the user's length.
        _, starts, counts = np.unique(user, return_index=True, return_counts=True)
        length = np.repeat(counts, counts)
        pos = np.arange(len(user)) - np.repeat(starts, counts)
        n_test = np.floor(length * test_frac + 0.5).astype(int)
        n_val = np.floor(length * val_frac + 0.5).astype(int)
        period = np.where(pos >= length - n_test, 2, np.where(pos >= length - n_test - n_val, 1, 0))
        note = ("time split per user: the data has only per-user order (no timestamps), so each user's last "
                f"{test_frac:.0%} of interactions are test and the {val_frac:.0%} before validation")
        extra = {}
    else:
        order = np.sort(ts, kind="stable")
        n = len(order)
        t_test = int(order[min(n - 1, n - int(math.floor(n * test_frac + 0.5)))])
        t_val = int(order[min(n - 1, n - int(math.floor(n * (test_frac + val_frac) + 0.5)))])
        period = np.where(ts >= t_test, 2, np.where(ts >= t_val, 1, 0))
        note = (f"time split on global timestamps: test = interactions at or after {t_test} (last {test_frac:.0%}), "
                f"validation = from {t_val} (the {val_frac:.0%} before); candidates = all items")
        extra = {"val_start": t_val, "test_start": t_test}
    if not (period == 0).any():
        raise BeerayError(f"{data.name}: time split leaves no training interactions")
    split = Split(
        kind="time", seed=0, val_items=[], test_items=[], val_candidates=None, test_candidates=None,
        train=_lists(user[period == 0], item[period == 0]),
        train_full=_lists(user[period <= 1], item[period <= 1]),
        val=_eval_lists(user, item, period == 0, period == 1),
        test=_eval_lists(user, item, period <= 1, period == 2),
        note=note, extra=extra,
    )
    if "dataset" in data.items.columns and data.items["dataset"].nunique() > 1:
        ds = data.items["dataset"].to_numpy()
        split.per_dataset = {str(d): {"items": int((ds == d).sum())} for d in sorted(set(ds))}
        _per_dataset_users(split, data, {"val": period == 1, "test": period == 2})
    return split
