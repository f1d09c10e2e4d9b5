"""Baselines as scorers for the one evaluator: `beeray evaluate --baseline NAME`, rows of `beeray compare`.

Each baseline is one small module: collaborative filtering for the time split (popularity,
itemknn, ease, als, elsa, sansa) and text-based models for cold-start items (heater,
text-popularity, cbf+popularity). `evaluate_baseline` chooses a baseline's hyperparameters on the
validation split (a small grid, the `grid` of its class, scored by NDCG@100 without bootstrap),
then scores the requested split with exactly the evaluator the encoders use. For the test split
the chosen configuration is refitted on train + validation (`train_full.parquet`), as `beeray
tune` retrains its best trial.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from beeray.baselines.als import ALS
from beeray.baselines.base import Baseline, Context
from beeray.baselines.cbf_popularity import CBFPopularity
from beeray.baselines.ease import EASE
from beeray.baselines.elsa import ELSA
from beeray.baselines.heater import Heater
from beeray.baselines.itemknn import ItemKNN
from beeray.baselines.popularity import Popularity
from beeray.baselines.sansa import SANSA
from beeray.baselines.text_popularity import TextPopularity
from beeray.data.prepared import PreparedData, lists_to_csr
from beeray.errors import BeerayError

BASELINES: dict[str, type[Baseline]] = {cls.name: cls for cls in (
    Popularity, ItemKNN, EASE, ALS, ELSA, SANSA, Heater, TextPopularity, CBFPopularity)}
SELECTION_METRIC = "ndcg@100"


def get(name: str) -> type[Baseline]:
    if name not in BASELINES:
        hint = " (the popularity oracle peeks at the targets: it is printed beside every table, never selectable)" \
            if "oracle" in name else ""
        raise BeerayError(f"unknown baseline {name!r}{hint}; choose from {', '.join(BASELINES)}")
    return BASELINES[name]


def parse_params(name: str, pairs: list[str]) -> dict[str, Any]:
    """`key=value` settings of one baseline, typed like the values of its grid or defaults."""
    import yaml

    cls = get(name)
    known = {**cls.defaults, **{k: v[0] for k, v in cls.grid.items()}}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in known:
            raise BeerayError(f"baseline {name}: {pair!r} is not KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        value = yaml.safe_load(raw)
        kind = type(known[key])
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != isinstance(known[key], bool):
            raise BeerayError(f"baseline {name}: {key} must be {kind.__name__}, got {raw!r}")
        out[key] = value
    return out


def training_matrix(data: PreparedData, which: str) -> sp.csr_matrix:
    """What a baseline scored on `which` learns from: train for val, train + validation for test."""
    import pyarrow.parquet as pq

    path = data.train_path(full=which == "test")
    return lists_to_csr(pq.read_table(path, columns=["items"]).column("items").to_pylist(), data.n_items)


def check_split(cls: type[Baseline], data: PreparedData, which: str, train: sp.csr_matrix,
                part: str | None = None) -> None:
    """A collaborative baseline can only rank candidates that have training interactions."""
    if cls.needs != "interactions":
        return
    cand = data.eval_split(which, part).candidates
    known = np.asarray(train[:, cand].sum(axis=0)).ravel() > 0
    if not known.any():
        raise BeerayError(f"baseline {cls.name} learns from interactions, but none of the {cand.size} {which} "
                          f"candidates of {data.root} has a training interaction ({data.split.get('kind')} split: "
                          f"cold items); use it on a time split, or a text baseline (heater, text-popularity, "
                          f"cbf+popularity)")


def evaluate_baseline(name: str, data: PreparedData, which: str, *, params: dict | None = None,
                      item_embeddings: Callable[[], np.ndarray] | None = None, seed: int = 0,
                      log: Callable[[str], None] = print, part: str | None = None, **eval_kwargs) -> dict:
    """Choose `name`'s hyperparameters on validation, then score split `which`; the evaluator's result
    plus `params` (the chosen ones), `search` (each tried configuration's validation metric) and seconds.
    `seed` seeds the baseline's own randomness and the bootstrap. `part`: one dataset of a multi-dataset
    folder, whose validation split then chooses the hyperparameters and whose test split is scored (the
    baseline still learns from the whole folder's training file, as a model trained on it does)."""
    from beeray.evaluate import JOINT, score_split

    cls = get(name)
    if cls.needs == "text" and item_embeddings is None:
        raise BeerayError(f"baseline {name} ranks items from their texts: it needs item embeddings (--text-model)")
    params = dict(params or {})
    grid = [{**combo, **params} for combo in cls.param_grid()]
    grid = [dict(t) for t in dict.fromkeys(tuple(sorted(g.items())) for g in grid)]  # fixed params collapse it
    t0 = time.perf_counter()
    val_train = training_matrix(data, "val")
    check_split(cls, data, "val", val_train, part)
    val_split = data.eval_split("val", part)
    search = []
    best, best_value, best_model = None, -np.inf, None
    for combo in grid:
        model = cls(**combo).fit(Context(data, "val", val_train, item_embeddings, seed))
        value = score_split(model, val_split, bootstrap=0, **{k: v for k, v in eval_kwargs.items()
                                                               if k == "batch_users"})[SELECTION_METRIC]
        search.append({"params": combo, f"val_{SELECTION_METRIC}": value})
        if len(grid) > 1:
            log(f"  {name} {combo}: val {SELECTION_METRIC} {value:.4f}")
        if value > best_value:
            best, best_value, best_model = combo, value, model
    if which == "test":
        test_train = training_matrix(data, "test")
        check_split(cls, data, "test", test_train, part)
        best_model = cls(**best).fit(Context(data, "test", test_train, item_embeddings, seed))
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = score_split(best_model, data.eval_split(which, part), seed=seed, **eval_kwargs)
    return {"model": f"baseline:{name}", "data": str(data.root), "split": which,
            **({"part": part or JOINT} if data.parts else {}), **result,
            "params": {**best_model.params}, "search": search, "fit_s": fit_s, "score_s": time.perf_counter() - t1}


__all__ = ["BASELINES", "Baseline", "Context", "get", "parse_params", "evaluate_baseline", "training_matrix",
           "check_split"]
