"""Scoring many rows on many data sets, and comparing them paired: what `beeray evaluate`, `beeray
compare` and the Python API (`beeray.evaluate()`, `beeray.compare()`) share.

A row is an encoder (a model folder or hub name) or a baseline; a target is one prepared folder, or
one dataset of a multi-dataset (goodlens) folder. Every row is scored on every target through the
same evaluator (beeray/evaluator.py), and a model that trained on a target's cold items is refused
before anything runs (beeray/training_record.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from beeray.errors import BeerayError
from beeray.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from beeray.data.prepared import PreparedData

log = logging.getLogger(__name__)

ALPHA = 0.05  # family-wise error rate of one table's paired verdicts (Holm)


def eval_targets(datasets: Mapping[str, PreparedData]) -> dict[str, tuple]:
    """What gets one result per row: label -> (prepared folder, part). A single-dataset folder is scored
    whole under its label; a multi-dataset (goodlens) folder once per dataset, "<label>:<dataset>" (that
    dataset's users, its own cold items as candidates), then whole, "<label>:joint"."""
    from beeray.evaluator import JOINT

    targets: dict[str, tuple] = {}
    for label, data in datasets.items():
        if not data.parts:
            targets[label] = (data, None)
            continue
        targets.update({f"{label}:{part}": (data, part) for part in data.parts})
        targets[f"{label}:{JOINT}"] = (data, None)
    return targets


def dataset_labels(paths: list[Path], datasets: list) -> list[str]:
    """Column prefix per dataset: stats.json's name, falling back to the folder name on clashes."""
    names = [str((getattr(d, "stats", None) or {}).get("dataset") or p.name) for p, d in zip(paths, datasets)]
    if len(set(names)) < len(names):
        names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names


def check_baselines(baselines: Mapping[str, dict], targets: dict[str, tuple], which: str) -> None:
    """Refuse, before anything is computed, a baseline unknown or unable to run on a target."""
    from beeray.baselines import check_split, get, training_matrix

    for name in baselines:
        cls = get(name)
        for data, part in targets.values():
            for split in ("val", which):
                check_split(cls, data, split, training_matrix(data, split), part)


def score_rows(datasets: Mapping[str, PreparedData], which: str, *, models: Sequence[str] = (),
               baselines: Mapping[str, dict] | None = None, text_model: str | None = None,
               device: str | None = None, batch_size: int = 64, batch_users: int = 1024, bootstrap: int = 1000,
               seed: int = 0, keep_per_user: bool = False, allow_trained_items: bool = False,
               progress: bool = True) -> tuple[dict[str, dict], dict[str, dict]]:
    """({row: {target label: result}}, {target label: popularity oracle}) for every model and baseline
    (name -> its fixed hyperparameters; the rest are chosen on validation) on every target of every
    dataset. No model and no baseline: the default model. `keep_per_user`: each result also keeps
    its users' metric values (for paired comparisons)."""
    from beeray import training_record
    from beeray.baselines import BASELINES

    baselines = dict(baselines or {})
    targets = eval_targets(datasets)
    for data, part in targets.values():  # a part an older goodlens folder lacks fails before any model loads
        data.cold_items(which, part)
    check_baselines(baselines, targets, which)
    models = list(dict.fromkeys(models or ([] if baselines else [DEFAULT_MODEL])))
    text_model = text_model or (models[0] if models else DEFAULT_MODEL)
    text_baselines = [name for name in baselines if BASELINES[name].needs == "text"]
    trained = training_record.check(models + ([text_model] if text_baselines else []), targets, which,
                                    allow=allow_trained_items)
    scoring = {"batch_users": batch_users, "bootstrap": bootstrap, "seed": seed, "keep_per_user": keep_per_user}
    from beeray.evaluator import evaluate_models

    rows = evaluate_models(models, targets, which, device=device, batch_size=batch_size,
                           show_progress=progress, **scoring)
    rows.update(score_baselines(datasets, targets, which, baselines, text_model, device, batch_size, scoring))
    mark_trained(rows, trained, targets, which, text_model, text_baselines)
    oracle = oracles(targets, which, scoring)
    stamp_split(rows, oracle, targets)
    return rows, oracle


def score_baselines(datasets: Mapping[str, PreparedData], targets: dict[str, tuple], which: str,
                    baselines: Mapping[str, dict], text_model: str, device: str | None, batch_size: int,
                    scoring: dict) -> dict[str, dict]:
    """{"baseline:NAME": {target: result}}; text baselines read `text_model`'s item embeddings, encoded
    once per folder on first use."""
    from beeray.baselines import BASELINES, evaluate_baseline

    item_embeddings = {id(data): _embeddings_once(data, text_model, device, batch_size)
                       for data in datasets.values()}  # a folder's parts share them
    rows: dict[str, dict] = {}
    for name, fixed in baselines.items():
        per = rows.setdefault(f"baseline:{name}", {})
        for label, (data, part) in targets.items():
            log.info(f"evaluating baseline {name} on {label} ({which})")
            per[label] = evaluate_baseline(name, data, which, params=fixed, part=part,
                                           item_embeddings=item_embeddings[id(data)], **scoring)
            if BASELINES[name].needs == "text":
                per[label]["text_model"] = text_model
    return rows


def _embeddings_once(data: PreparedData, text_model: str, device: str | None, batch_size: int) -> Callable:
    cache: list = []

    def embeddings():
        if not cache:
            from beeray.evaluator import encode_items
            from beeray.models import load_model

            log.info(f"encoding {data.n_items} item texts of {data.root} with {text_model} for the text baselines")
            encoder = load_model(text_model, device=device)
            cache.append(encode_items(encoder, data.texts, batch_size=batch_size, show_progress=False))
        return cache[0]
    return embeddings


def mark_trained(rows: dict[str, dict], trained: dict, targets: dict[str, tuple], which: str, text_model: str,
                 text_baselines: list[str]) -> None:
    """Label what a row scored on cold items its model trained on (only reached with allow_trained_items)."""
    for row, per in rows.items():
        counts = trained.get(text_model if row.removeprefix("baseline:") in text_baselines else row, {})
        for label, res in per.items():
            if label in counts:
                data, part = targets[label]
                res["trained_cold_items"] = counts[label]
                res["cold_items"] = int(data.cold_items(which, part).size)


def oracles(targets: dict[str, tuple], which: str, scoring: dict) -> dict[str, dict]:
    """The popularity oracle of each target (the ceiling of popularity-only ranking)."""
    from beeray.baselines.oracle import PopularityOracle
    from beeray.evaluator import score_split

    out = {}
    for label, (data, part) in targets.items():
        split = data.eval_split(which, part)
        out[label] = score_split(PopularityOracle(split.target), split, **scoring)
    return out


def stamp_split(rows: dict[str, dict], oracle: dict[str, dict], targets: dict[str, tuple]) -> None:
    """Name in every result the split it was scored on, by content (PreparedData.split_digest)."""
    for label, (data, _) in targets.items():
        for res in [oracle[label], *(per[label] for per in rows.values())]:
            res["split_digest"] = data.split_digest


def paired_table(results: dict[str, dict], reference: str, labels: list[str], n_boot: int, seed: int) -> dict:
    """{target: {row: {metric: diff, stderr, z, p, p_holm, verdict}}}: each row minus the reference row on
    the same users; Holm's adjustment runs over every (row, metric) comparison of one target's table."""
    from beeray.evaluator import holm, paired_differences
    from beeray.metrics import METRICS

    out: dict[str, dict] = {}
    for label in labels:
        ref = results[reference][label]
        per = {row: paired_differences(res[label], ref, n_boot, seed)
               for row, res in results.items() if row != reference}
        family = [(row, m) for row in per for m in METRICS]
        for (row, m), q in zip(family, holm([per[row][m]["p"] for row, m in family])):
            cell = per[row][m]
            cell["p_holm"] = q
            cell["verdict"] = ("no clear difference" if q >= ALPHA else "better" if cell["diff"] > 0 else "worse")
        out[label] = per
    return out


def row_names(models: Sequence[str], baselines: Mapping[str, dict]) -> list[str]:
    """The table's rows in order: the models (the default model when none and no baseline), then the baselines."""
    return [*dict.fromkeys(models or ([] if baselines else [DEFAULT_MODEL])),
            *(f"baseline:{name}" for name in baselines)]


def check_references(references: Sequence[str], rows: list[str]) -> None:
    for reference in references:  # before anything is computed
        if reference not in rows:
            raise BeerayError(f"--reference {reference}: not a row of this table (rows: {', '.join(rows)})")
