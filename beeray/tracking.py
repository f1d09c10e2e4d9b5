"""Run tracking with MLflow: what `beeray train` and `beeray tune` record, and where.

Why MLflow: it reads back through a documented API (`MlflowClient`), needs no server (a SQLite
file), serves a UI with one command (`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`),
and Ray ships a Tune logger callback for it. TensorBoard event files come for free from Ray
Tune's default TBX logger (under OUT/ray/tune/<trial>/).

Where: `tracking_uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///<parent of out>/mlflow.db`, so
every run under runs/ lands in one store and one UI. A run whose out is object storage keeps its
store (mlflow/mlflow.db, mlflow/mlartifacts/) in its staging folder, uploaded with the run to
OUT/mlflow/; a cluster that shares one store passes an MLflow server as --tracking-uri.

- `beeray train` logs from the driver once the run has finished: its config as parameters, the
  loss of every optimizer step, each epoch's mean loss and validation metrics (epoch 0 = the base
  model), the final val/test metrics of the base and trained models, and the run's files (history
  CSV/PNG, metrics.json, the model card). One writer on the driver means a SQLite file or a local
  folder works on a cluster whose workers cannot reach it, and a resumed run is logged once,
  complete. A run that fails is not logged (its checkpoints are, by Ray).
- `beeray tune` adds Ray's `MLflowLoggerCallback` to the Tuner: one MLflow run per trial, live,
  with the trial's sampled values as parameters and every report as metrics; the final retrain
  is then logged like a `beeray train` run, tagged with the search's folder.

MLflow metric names may not contain '@': `val_recall@20` is logged as `val_recall_at_20`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback  # imports mlflow only when a callback starts

from beeray import files
from beeray.config import TrainConfig, to_dict
from beeray.metrics import METRICS

# MLflow 3 sends usage telemetry unless told not to; beeray runs offline and tells it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

STORE = "mlflow.db"


def enabled(cfg: TrainConfig) -> bool:
    return cfg.tracking == "mlflow"


def tracking_uri(cfg: TrainConfig) -> str:
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    place = files.Folder(cfg.out)
    if place.url:  # in the run's staging folder, uploaded with the run (OUT/mlflow/)
        return f"sqlite:///{place.local() / 'mlflow' / STORE}"
    return f"sqlite:///{place.root.parent / STORE}"


def metric_key(name: str) -> str:
    """An MLflow-legal metric name (letters, digits, _ - . / and spaces)."""
    return name.replace("@", "_at_")


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its files: beside a SQLite store (`mlartifacts/`). MLflow's own
    default for a database store is ./mlruns in whatever folder the process runs in."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None  # a server or a file store chooses its own


def _client(cfg: TrainConfig):
    """A client of the run's store and the id of its experiment (created on first use)."""
    from mlflow import MlflowClient

    uri = tracking_uri(cfg)
    if not uri.startswith("sqlite:///"):  # a server or another store creates itself
        return _experiment(MlflowClient(tracking_uri=uri), cfg.experiment, uri)
    # Runs in sibling folders share <parent>/mlflow.db: the first to use it creates its tables and the
    # experiment, under a lock beside it, since two creating them at once leave a broken store.
    db = Path(uri.removeprefix("sqlite:///"))
    with files.waiting_lock(db.parent / f".{db.name}.lock"):  # SQLite creates the file, not its folder
        return _experiment(MlflowClient(tracking_uri=uri), cfg.experiment, uri)


def _experiment(client, name: str, uri: str):
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return client, experiment.experiment_id
    return client, client.create_experiment(name, artifact_location=artifact_location(uri))


def log_training(cfg: TrainConfig, out: Path, history: list[dict], steps: list[dict], metrics: dict,
                 stats: dict, tags: dict | None = None) -> str:
    """One MLflow run for a finished `beeray train` run; returns its run id."""
    from mlflow.entities import Metric, Param

    client, experiment_id = _client(cfg)
    run = client.create_run(experiment_id, run_name=Path(out).name,
                            tags={"beeray.out": str(out), "beeray.dataset": str(stats.get("dataset", cfg.data)),
                                  **(tags or {})})
    run_id = run.info.run_id
    params = [Param(k, str(v)) for k, v in to_dict(cfg).items()]
    values: list[Metric] = []

    def add(name: str, value, step: int) -> None:
        if value is not None and value == value:  # skip None and NaN (epoch 0 has no loss)
            values.append(Metric(metric_key(name), float(value), 0, int(step)))

    for row in steps:
        add("loss", row["loss"], row["step"])
        add("lr", row.get("lr"), row["step"])  # steps of runs from before schedules have none
    for row in history:
        step = row["step"]
        add("epoch", row["epoch"], step)
        add("epoch_loss", row.get("loss"), step)
        for name, value in row.items():
            if name.startswith("val_"):
                add(name, value, step)
    for who, per_split in metrics.items():
        for split, res in per_split.items():
            for name in METRICS:
                add(f"{who}_{split}_{name}", res[name], 0)
    # log_batch takes at most 1,000 metrics and 100 params per call.
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(values), 1000):
        client.log_batch(run_id, metrics=values[i:i + 1000])
    for name in ("history.csv", "history.png", "metrics.json"):
        if (Path(out) / name).exists():
            client.log_artifact(run_id, str(Path(out) / name))
    card = Path(out) / "model" / "README.md"
    if card.exists():
        client.log_artifact(run_id, str(card), artifact_path="model")
    client.set_terminated(run_id)
    return run_id


@contextlib.contextmanager
def process_tracking_uri_kept():
    """Ray's MLflow callback calls mlflow.set_tracking_uri, which also sets $MLFLOW_TRACKING_URI for
    the rest of the process: a later run in the same process (a library user's next `train`) would
    then log to the search's store instead of its own default. Restore the variable afterwards."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


class _TuneCallback(MLflowLoggerCallback):
    """Ray's MLflow callback, with report keys made legal MLflow metric names."""

    def log_trial_result(self, iteration, trial, result):
        super().log_trial_result(iteration, trial, {metric_key(k): v for k, v in result.items()})


def tune_callbacks(cfg: TrainConfig, search_out: Path) -> list:
    """Ray Tune callbacks that track each trial (none when tracking is off)."""
    if not enabled(cfg):
        return []
    _client(cfg)  # the experiment exists, with beeray's artifact location, before Ray's callback looks it up
    return [_TuneCallback(tracking_uri=tracking_uri(cfg), experiment_name=cfg.experiment,
                          tags={"beeray.search": str(search_out)})]
