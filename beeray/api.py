"""beeray as a library: what the `beeray` commands do, as functions a notebook or a script calls.

    import beeray

    data = beeray.prepare("synthetic", "data/shop")
    run = beeray.train(data=data.root, out="runs/shop", epochs=2)
    table = beeray.evaluate(data.root, models=[run.model_path], baselines=["cbf+popularity"], split="test")
    beeray.recommend(["b000-printer"], k=5, model=run.model_path, items=data.root)

Each function takes the command's flags as keyword arguments in snake_case and returns what Python
users know: a PreparedData, a TrainResult (a SentenceTransformer folder, metrics.json's content, the
history as a DataFrame), pandas DataFrames. Nothing is printed: long work shows tqdm bars
(`progress=False` turns them off) and log lines go through `logging` (logger "beeray"; the CLI routes
them to the console). A problem with the user's input raises `beeray.BeerayError` with the one-line
message the CLI prints. No function changes its arguments. docs/api.md shows a session end to end.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from beeray import files
from beeray.errors import BeerayError

if TYPE_CHECKING:
    import pandas as pd
    from sentence_transformers import SentenceTransformer

    from beeray.config import TrainConfig, TuneConfig
    from beeray.data.prepare import PrepareResult
    from beeray.data.prepared import PreparedData

PathLike = str | Path


# ---------------------------------------------------------------- prepare

def prepare(kind: str = "synthetic", out: PathLike | None = None, input: PathLike | Mapping[str, PathLike] | None = None,
            **options: Any) -> PreparedData:
    """Prepare a data set into `out` (default data/<kind>; an s3:// URL is published there) and return it.

    `input`: the data set's folder or file; for kind "goodlens" a mapping {dataset kind: path}. Options
    are `beeray prepare`'s flags: items, split ("item" | "time"), val_items, test_items, val_frac,
    test_frac, seed, split_items, min_rating, min_user_interactions, synthetic_seed, synthetic_size,
    force, and for generic files columns={"user": ..., "item": ..., "rating": ..., "timestamp": ...,
    "item_key": ..., "text": ...}. Re-running with the same inputs and options writes nothing."""
    from beeray.data.prepared import PreparedData

    result, where = prepare_folder(kind, out, input, **options)
    return PreparedData.load(where)


def prepare_folder(kind: str = "synthetic", out: PathLike | None = None,
                   input: PathLike | Mapping[str, PathLike] | None = None, *, items: PathLike | None = None,
                   split: str = "item", val_items: int | None = None, test_items: int | None = None,
                   val_frac: float = 0.2, test_frac: float = 0.2, seed: int = 42, split_items: PathLike | None = None,
                   min_rating: float | None = 4.0, min_user_interactions: int = 5,
                   columns: Mapping[str, str | None] | None = None, synthetic_seed: int = 0,
                   synthetic_size: Sequence[int] | None = None, force: bool = False) -> tuple[PrepareResult, str]:
    """`prepare`'s work: (what was written or found up to date, where it now lives: a folder or URL)."""
    from beeray.data.loaders import GenericColumns
    from beeray.data.prepare import PrepareOptions
    from beeray.data.prepare import prepare as prepare_data

    named = {str(k): str(v) for k, v in input.items()} if isinstance(input, Mapping) else None
    if kind == "goodlens" and not named:
        raise BeerayError("goodlens: no datasets given (--input KIND=PATH, repeated; in Python input={KIND: PATH})")
    if kind != "goodlens" and named is not None:
        raise BeerayError(f"{kind}: input is one folder or file (only goodlens takes several)")
    if columns and kind not in ("generic", "goodlens"):
        raise BeerayError(f"{kind}: columns name the columns of generic files (kinds generic and goodlens)")
    out = str(out or f"data/{kind}")
    place = files.Folder(out)
    options = PrepareOptions(split=split, val_items=val_items, test_items=test_items, seed=seed,
                             min_rating=min_rating, min_user_interactions=min_user_interactions,
                             val_frac=val_frac, test_frac=test_frac)
    result = prepare_data(kind, place.local() if place.url else out, None if named else input, items,
                          inputs=named, options=options,
                          columns=GenericColumns(**(columns or {})) if kind in ("generic", "goodlens") else None,
                          force=force, synthetic_seed=synthetic_seed,
                          synthetic_size=tuple(synthetic_size) if synthetic_size else None,
                          split_items=split_items)
    if place.url and not (result.up_to_date and place.is_complete()):
        place.publish(result.out)  # prepared in its staging folder; uploaded, marker last
    return result, out if place.url else str(result.out)


# ---------------------------------------------------------------- train

@dataclass(frozen=True)
class TrainResult:
    """A finished training run: its folder (or object-storage URL) and what it wrote there."""

    out: str
    metrics: dict  # metrics.json: config, data, split_digest, kept, and the base/trained val/test metrics
    history: pd.DataFrame  # history.csv: a row per optimizer step and per epoch (epoch 0: the base model)
    mlflow_run: str | None = None

    @property
    def model_path(self) -> str:
        """The trained SentenceTransformer folder (or its URL)."""
        return f"{self.out}/model"

    def load(self, device: str | None = None) -> SentenceTransformer:
        """The trained model, as a SentenceTransformer."""
        from beeray.models import load_model

        return load_model(self.model_path, device=device)

    @classmethod
    def read(cls, out: PathLike, mlflow_run: str | None = None) -> "TrainResult":
        """The result of a finished run in `out` (a folder written by `beeray train`, or its URL)."""
        import pandas as pd

        folder = files.Folder(str(out))
        if not folder.exists("metrics.json"):
            raise BeerayError(f"{out}: no finished training run here (no metrics.json)")
        history = pd.read_csv(io.StringIO(folder.read_text("history.csv"))) if folder.exists("history.csv") \
            else pd.DataFrame()
        return cls(out=str(out), metrics=json.loads(folder.read_text("metrics.json")), history=history,
                   mlflow_run=mlflow_run)


def train(config: PathLike | Mapping[str, Any] | TrainConfig | None = None, *, resume: bool | str = False,
          baseline: bool = True, **overrides: Any) -> TrainResult:
    """Train with beeFormer on Ray, as `beeray train` does, and return the finished run.

    `config`: a YAML file, a dict or a TrainConfig (docs/config.md lists every key); `overrides`: any
    config key on top of it (`epochs=3`, `lr=5e-5`, `data=...`, `out=...`), as `--set` does. `resume`:
    True continues the run in `out`, "auto" continues it if there is one. `baseline`: also score the
    base model for comparison."""
    from beeray.trainer import train as run_training

    cfg = train_config_of(config, overrides)
    if not cfg.data:
        raise BeerayError("no data: give data=<folder made by beeray.prepare> or set `data:` in the config")
    output = run_training(cfg, resume=resume, baseline=baseline)
    return TrainResult.read(output.published or output.out, mlflow_run=output.mlflow_run)


def train_config_of(config: PathLike | Mapping[str, Any] | TrainConfig | None,
                    overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """A checked TrainConfig from a YAML path, a dict or a TrainConfig, with `overrides` on top (a copy:
    the arguments are not changed)."""
    from beeray.config import TrainConfig, flat_keys, to_dict, train_config

    overrides = {k: (str(v) if isinstance(v, Path) else v) for k, v in (overrides or {}).items()}
    origins = {k: f"argument {k}" for k in overrides}
    if config is None or isinstance(config, (str, Path)):
        return train_config(str(config) if config is not None else None, overrides, origins)
    values = to_dict(config) if isinstance(config, TrainConfig) else dict(config)
    values = flat_keys(dict(values.get("train", values)), "config")  # a tune config nests it under `train:`
    return train_config(None, {**values, **overrides}, origins)


# ---------------------------------------------------------------- tune

@dataclass(frozen=True)
class TuneResult:
    """A finished search: every trial, the best one, and the best configuration retrained and tested."""

    out: str
    results: pd.DataFrame  # tune_results.csv: a row per trial
    best: dict  # best.json: the trial, its metric, best epoch and config, and the final run's config
    final: TrainResult  # the retrain on train + validation, tested once


def tune(config: PathLike | Mapping[str, Any] | TuneConfig, *, resume: bool | str = False, baseline: bool = True,
         **overrides: Any) -> TuneResult:
    """Search hyperparameters (Ray Tune + Optuna), retrain the best and test it, as `beeray tune` does.

    `config`: a YAML file, a dict or a TuneConfig with `train:` and `search:` sections; `overrides`: keys of
    the train section (`out=...`, `tracking="none"`, ...)."""
    import pandas as pd

    from beeray.tuner import tune as run_search

    cfg = tune_config_of(config, overrides)
    output = run_search(cfg, resume=resume, baseline=baseline)
    where = files.Folder(output.published or str(output.out))
    return TuneResult(out=output.published or str(output.out),
                      results=pd.read_csv(io.StringIO(where.read_text("tune_results.csv"))),
                      best=json.loads(where.read_text("best.json")),
                      final=TrainResult.read(json.loads(where.read_text("best.json"))["final"]["out"]))


def tune_config_of(config: PathLike | Mapping[str, Any] | TuneConfig,
                   overrides: Mapping[str, Any] | None = None) -> TuneConfig:
    """A checked TuneConfig (paths made absolute: trials run in Ray's session folder) from a YAML path, a
    dict or a TuneConfig, with `overrides` on the train section."""
    from beeray.config import TuneConfig, absolute_paths, flat_keys, load_yaml

    overrides = {k: (str(v) if isinstance(v, Path) else v) for k, v in (overrides or {}).items()}
    if isinstance(config, TuneConfig):
        train = train_config_of(config.train, overrides)
        return absolute_paths(dataclasses.replace(config, train=train))
    if isinstance(config, Mapping):
        values, where = json.loads(json.dumps(config, default=str)), "tune config"  # a deep copy
    else:
        values, where = load_yaml(config), str(config)
    train = values.get("train") or {}
    values["train"] = {**(flat_keys(train, f"{where}: train") if isinstance(train, dict) else train), **overrides}
    return absolute_paths(TuneConfig.parse(values, where))


# ---------------------------------------------------------------- evaluate and compare

def evaluate(data: PathLike | PreparedData, models: str | Sequence[str] = (),
             baselines: str | Sequence[str] | Mapping[str, dict] = (), split: str = "val", *,
             progress: bool = True, **options: Any) -> pd.DataFrame:
    """Score encoders and baselines on a prepared split, as `beeray evaluate` does: one row per model or
    baseline (and per dataset of a goodlens folder, then its whole), with the metrics, their bootstrap
    stderr, the users, the popularity thirds and the split's digest: the rows of `beeray evaluate --out
    x.csv`. `baselines`: names, or {name: fixed hyperparameters} (the rest are chosen on validation).
    Options: text_model, device, batch_size, batch_users, bootstrap, seed, allow_trained_items, and
    keep_per_user (a `per_user` column with each user's metric values, for paired comparisons)."""
    import pandas as pd

    from beeray.artifacts import result_row

    rows, oracle = _score(_labelled([data]), split, models, baselines, progress, options)
    return pd.DataFrame([_row(per[label], result_row) for label in oracle for per in rows.values()])


@dataclass(frozen=True)
class Comparison:
    """`beeray compare`'s table and its paired verdicts."""

    table: pd.DataFrame  # a row per (row, target), as evaluate's
    paired: pd.DataFrame  # a row per (reference, target, row, metric): diff, stderr, z, p, p_holm, verdict
    oracle: pd.DataFrame  # the popularity oracle of each target


def compare(data: PathLike | PreparedData | Sequence[PathLike | PreparedData], models: str | Sequence[str] = (),
            baselines: str | Sequence[str] | Mapping[str, dict] = (), split: str = "test", *,
            reference: str | Sequence[str] | None = None, progress: bool = True, **options: Any) -> Comparison:
    """Score every model and baseline on every data set, then compare each row with `reference` (default:
    the first row) per user on the same users: paired bootstrap, Holm's correction over each table, as
    `beeray compare` does. Options as `evaluate`'s."""
    import pandas as pd

    from beeray.artifacts import result_row
    from beeray.comparison import check_references, paired_table, row_names

    datasets = _labelled(data if isinstance(data, (list, tuple)) else [data], by_name=True)
    names = row_names(_as_list(models), _baselines(baselines))
    references = list(dict.fromkeys(_as_list(reference) or names[:1]))
    check_references(references, names)
    rows, oracle = _score(datasets, split, models, baselines, progress, {**options, "keep_per_user": True})
    n_boot, seed = options.get("bootstrap", 1000), options.get("seed", 0)
    paired = [{"reference": ref, "target": label, "row": row, "metric": metric, **cell}
              for ref in references
              for label, per in paired_table(rows, ref, list(oracle), n_boot, seed).items()
              for row, cells in per.items() for metric, cell in cells.items()]
    table = [result_row(per[label]) for label in oracle for per in rows.values()]  # per-user values: in .paired
    return Comparison(table=pd.DataFrame(table), paired=pd.DataFrame(paired),
                      oracle=pd.DataFrame([{"target": label, **result_row(res)} for label, res in oracle.items()]))


def _score(datasets: Mapping[str, PathLike | PreparedData], split: str, models, baselines, progress: bool,
           options: dict) -> tuple[dict, dict]:
    from beeray.comparison import score_rows

    known = {"text_model", "device", "batch_size", "batch_users", "bootstrap", "seed", "allow_trained_items",
             "keep_per_user"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BeerayError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return score_rows(datasets, split, models=_as_list(models), baselines=_baselines(baselines), progress=progress,
                      **options)


def _row(res: dict, result_row) -> dict:
    row = result_row(res)
    if "per_user" in res:
        row["per_user"] = res["per_user"]
    return row


def _labelled(data: Sequence[PathLike | PreparedData], by_name: bool = False) -> dict[str, PreparedData]:
    """Each data set under its label: its folder as given (`beeray evaluate`'s label), or with `by_name`
    its name in stats.json (`beeray compare`'s: beeray.comparison.dataset_labels)."""
    from beeray.comparison import dataset_labels
    from beeray.data.prepared import PreparedData

    paths = [Path(d.root) if isinstance(d, PreparedData) else Path(d) for d in data]
    loaded = [d if isinstance(d, PreparedData) else PreparedData.load(d) for d in data]
    labels = dataset_labels(paths, loaded) if by_name else [str(p) for p in paths]
    return dict(zip(labels, loaded))


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


def _baselines(baselines: str | Sequence[str] | Mapping[str, dict]) -> dict[str, dict]:
    """{name: fixed hyperparameters}, each checked by the baseline's own parser."""
    from beeray.baselines import get, parse_params

    named = dict(baselines) if isinstance(baselines, Mapping) else {name: {} for name in _as_list(baselines)}
    out = {}
    for name, fixed in named.items():
        get(name)  # an unknown name fails before anything runs
        out[name] = parse_params(name, [f"{k}={v}" for k, v in (fixed or {}).items()])
    return out


# ---------------------------------------------------------------- embed and recommend

def embed(model: str, items: PathLike, out: PathLike, *, id_column: str = "item_id", text_column: str = "text",
          bad_rows: str = "refuse", **options: Any) -> dict:
    """Embed every item text of a catalog (a prepared folder, or a parquet/csv/tsv/jsonl/feather file) with
    `model` on a pool of Ray Data actors into `out` (shards of item_id, embedding), as `beeray embed`
    does; returns its manifest (embed.json). Options: shard_size, workers, dtype, batch_size, use_gpu,
    cpus_per_worker, precision, build_index, address, trust_remote_code."""
    from beeray.data.items import read_item_texts
    from beeray.embedding import embed as run_embed

    texts = read_item_texts(items, id_column, text_column, bad_rows)
    return run_embed(str(model), texts, out, **options)


def recommend(history: Iterable[str], k: int = 10, *, model: str | None = None, items: PathLike | None = None,
              embeddings: PathLike | None = None, id_column: str = "item_id", text_column: str = "text",
              batch_size: int | None = None, trust_remote_code: bool = False) -> pd.DataFrame:
    """The top k items for a history of item ids, scored as the evaluator scores (relu(x Â Âᵀ − x) over
    the catalog's other items): a DataFrame of rank, item_id, score and text (when `items` gives them).
    The embeddings come from `embeddings` (a `beeray embed` folder, checked against `model` when given)
    or are computed from `items` with `model` (default all-MiniLM-L6-v2)."""
    import pandas as pd

    from beeray.recommender import catalog_embeddings, recommend as top_k

    history = [str(h) for h in history]
    texts, ids, emb, source = catalog_embeddings(model=model, items=items, embeddings=embeddings,
                                                 id_column=id_column, text_column=text_column,
                                                 batch_size=batch_size, trust_remote_code=trust_remote_code)
    recs = top_k(emb, ids, history, k=k, source=source)
    return pd.DataFrame({"rank": range(1, len(recs) + 1), "item_id": [r.item_id for r in recs],
                         "score": [r.score for r in recs], "text": [texts.get(r.item_id) for r in recs]})


__all__ = ["prepare", "train", "tune", "evaluate", "compare", "embed", "recommend", "TrainResult", "TuneResult",
           "Comparison", "BeerayError", "prepare_folder", "train_config_of", "tune_config_of"]

