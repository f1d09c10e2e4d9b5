"""Baselines as scorers for the one evaluator: `beeray evaluate --baseline NAME`, rows of `beeray compare`.

Each baseline is one small module: collaborative filtering for the time split (popularity,
itemknn, ease, als, elsa, sansa) and text-based models for cold-start items (heater,
text-popularity, cbf+popularity). `evaluate_baseline` chooses a baseline's hyperparameters on the
validation split (NDCG@100 without bootstrap; `search` climbs the ladder of values its class gives
each hyperparameter until the choice is an interior optimum or an end of the ladder, an `edge`),
then scores the requested split with exactly the evaluator the encoders use. For the test split
the chosen configuration is refitted on train + validation (`train_full.parquet`), as `beeray
tune` retrains its best trial.
"""

from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)

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
    from beeray import files

    path = data.train_path(full=which == "test")
    table = files.read_parquet(path, ["items"], hint="re-run beeray prepare --force")
    return lists_to_csr(table.column("items").to_pylist(), data.n_items)


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


def _ordered(ladder: list) -> bool:
    """A ladder of numbers is climbed in order and has ends; one of strings or booleans is a set of choices."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ladder)


def search(cls: type[Baseline], fixed: dict[str, Any], value: Callable[[dict[str, Any]], float],
           log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[tuple, float]]:
    """Choose `cls`'s hyperparameters by coordinate ascent over its ladders (`cls.grid`); `value(params)`
    is a configuration's validation metric (higher is better). Returns the best configuration and every
    configuration tried with its value.

    From `cls.start()` each hyperparameter in turn climbs its ladder: the next value up is tried, and
    the climb goes on while the metric improves strictly; if the first step up does not improve, the
    same is done downwards. Passes over all hyperparameters repeat until one changes nothing. So each
    choice either sits between two tried neighbours that score no better (an interior optimum along
    its axis) or at a ladder's end (reported as an edge, `edges`). Unordered ladders (strings, booleans)
    try every value. A few fits per hyperparameter instead of the product of all ladders.
    """
    log = log or logger.info
    ladders = {k: v for k, v in cls.grid.items() if k not in fixed}
    tried: dict[tuple, float] = {}

    def score(params: dict[str, Any]) -> float:
        key = tuple(sorted(params.items()))
        if key not in tried:
            tried[key] = value(params)
            if ladders:
                log(f"  {cls.name} {params}: val {SELECTION_METRIC} {tried[key]:.4f}")
        return tried[key]

    current = {**{k: v for k, v in cls.start().items() if k in ladders}, **fixed}
    best = score(current)
    changed = True
    while changed:
        changed = False
        for key, ladder in ladders.items():
            ordered = _ordered(ladder)
            steps = [[ladder[j] for j in range(ladder.index(current[key]) + 1, len(ladder))],
                     [ladder[j] for j in range(ladder.index(current[key]) - 1, -1, -1)]] if ordered \
                else [[v for v in ladder if v != current[key]]]
            for direction in steps:
                moved = False
                for v in direction:
                    candidate = {**current, key: v}
                    got = score(candidate)
                    if got > best:
                        best, current, moved, changed = got, candidate, True, True
                    elif ordered:
                        break  # the climb stops at the first value that does not improve
                if moved and ordered:
                    break  # went up: the value below is where it came from
    return current, tried


def ladder_edges(cls: type[Baseline], chosen: dict[str, Any], fixed: dict[str, Any]) -> dict[str, str]:
    """The searched hyperparameters whose choice is an end of its (ordered) ladder: "low" or "high"."""
    out = {}
    for key, ladder in cls.grid.items():
        if key in fixed or len(ladder) < 2 or not _ordered(ladder):
            continue
        if chosen.get(key) == ladder[0]:
            out[key] = "low"
        elif chosen.get(key) == ladder[-1]:
            out[key] = "high"
    return out


def evaluate_baseline(name: str, data: PreparedData, which: str, *, params: dict | None = None,
                      item_embeddings: Callable[[], np.ndarray] | None = None, seed: int = 0,
                      log: Callable[[str], None] | None = None, part: str | None = None, **eval_kwargs) -> dict:
    """Choose `name`'s hyperparameters on validation (`search`), then score split `which`; the evaluator's
    result plus `params` (every setting of the scored model), `search` (each tried configuration's
    validation metric), `edges` (choices on an end of their ladder) and seconds.
    `seed` seeds the baseline's own randomness and the bootstrap. `part`: one dataset of a multi-dataset
    folder, whose validation split then chooses the hyperparameters and whose test split is scored (the
    baseline still learns from the whole folder's training file, as a model trained on it does)."""
    from beeray.evaluator import JOINT, score_split

    cls = get(name)
    if cls.needs == "text" and item_embeddings is None:
        raise BeerayError(f"baseline {name} ranks items from their texts: it needs item embeddings (--text-model)")
    fixed = dict(params or {})
    t0 = time.perf_counter()
    val_train = training_matrix(data, "val")
    check_split(cls, data, "val", val_train, part)
    val_split = data.eval_split("val", part)
    batch = {k: v for k, v in eval_kwargs.items() if k == "batch_users"}

    def validate(model: Baseline) -> float:
        return score_split(model, val_split, bootstrap=0, **batch)[SELECTION_METRIC]

    # Only the best fitted model is kept (an EASE of 10^4 items is 800 MB); the values of all are.
    kept: dict[str, Any] = {"value": -np.inf, "model": None}
    search_log: list[dict] = []

    def value(combo: dict[str, Any]) -> float:
        model = cls(**combo).fit(Context(data, "val", val_train, item_embeddings, seed, validate=validate))
        got = validate(model)
        search_log.append({"params": combo, f"val_{SELECTION_METRIC}": got,
                           **({"trained": model.fitted().record} if model.fitted().record else {})})
        if got > kept["value"]:
            kept.update(value=got, model=model)
        return got

    chosen, _ = search(cls, fixed, value, log)
    best_model = kept["model"]
    # A baseline may choose more while it trains (heater: its best epoch, an edge when that is the last
    # epoch allowed): the test refit takes every setting of the fitted model.
    edges = {**ladder_edges(cls, chosen, fixed), **best_model.fitted().edges}
    if which == "test":
        test_train = training_matrix(data, "test")
        check_split(cls, data, "test", test_train, part)
        best_model = cls(**best_model.fitted().params).fit(Context(data, "test", test_train, item_embeddings, seed))
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = score_split(best_model, data.eval_split(which, part), seed=seed, **eval_kwargs)
    return {"model": f"baseline:{name}", "data": str(data.root), "split": which,
            **({"part": part or JOINT} if data.parts else {}), **result,
            "params": best_model.fitted().params, "search": search_log, "edges": edges, "fit_s": fit_s,
            "score_s": time.perf_counter() - t1}


__all__ = ["BASELINES", "Baseline", "Context", "get", "parse_params", "evaluate_baseline", "search", "ladder_edges",
           "training_matrix", "check_split"]
