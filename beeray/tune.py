"""Hyperparameter search (method.md §6): Optuna TPE inside Ray Tune, one TorchTrainer per trial.

Layout of the output folder OUT:
  tune_config.json   the parsed config (a --resume must match it)
  ray/tune/          Ray Tune's experiment (restored by --resume)
  ray/trials/        one Ray Train run per trial, named trial-<trial id> (resumed from its checkpoint)
  final/             the best configuration retrained on train + validation; the only test evaluation
  tune_results.csv, best.json, trials.png, hyperparameters.png

Model selection: a trial's score is the best value of the metric over its reported epochs, and
the retrain runs for that epoch count. ASHA compares trials by the value at each rung (the epoch it
has reached), so a trial it keeps running has, at each rung, a value no worse than the ones it cut;
taking the best epoch rather than the last lets a trial whose metric peaked early be chosen with
the epoch count at which it peaked, which the constant-lr training loop reproduces exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from beeray.artifacts import save_figure
from beeray.config import TrainConfig, from_dict, load_yaml, to_dict
from beeray.errors import BeerayError

METRICS = ("val_recall@20", "val_recall@50", "val_ndcg@100")  # what the train loop reports per epoch
SPEC_TYPES = ("loguniform", "uniform", "randint", "choice")
# Keys a trial may not change: where data/results live, what a trial is allowed to see (never test
# items), and the resources per trial, which come from the train section.
FIXED_KEYS = {"data", "out", "full_train", "evaluate_test", "eval_every_epoch", "address", "num_workers",
              "use_gpu", "cpus_per_worker", "gpus_per_worker", "crash_at_step", "max_failures"}
TUNE_RUN = "tune"  # stable experiment name: --resume finds it
FINAL_DIR = "final"


@dataclass(frozen=True)
class SearchSpec:
    """One searched hyperparameter. randint draws from [low, high) like Ray Tune and numpy."""

    name: str
    type: Literal["loguniform", "uniform", "randint", "choice"]
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()

    def domain(self):
        from ray import tune

        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "randint":
            return tune.randint(self.low, self.high)
        return tune.choice(list(self.values))

    def extremes(self) -> list:
        """The values a trial can get at the edges of the range (all of them for a choice)."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "randint":
            return [self.low, self.high - 1]
        return [self.low, self.high]

    @property
    def log_scale(self) -> bool:
        return self.type == "loguniform"


@dataclass(frozen=True)
class Scheduler:
    type: Literal["asha", "none"] = "asha"
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass
class TuneConfig:
    train: TrainConfig
    space: list[SearchSpec]
    num_samples: int = 8
    max_concurrent_trials: int = 2
    metric: str = "val_ndcg@100"
    mode: Literal["max", "min"] = "max"
    seed: int = 0
    scheduler: Scheduler = field(default_factory=Scheduler)
    source: str = ""  # the YAML path, for messages

    @property
    def max_epochs(self) -> int:
        spec = next((s for s in self.space if s.name == "epochs"), None)
        return int(max(spec.extremes())) if spec else self.train.epochs

    def to_json(self) -> dict:
        return {"train": to_dict(self.train), "space": [dataclasses.asdict(s) for s in self.space],
                "num_samples": self.num_samples, "max_concurrent_trials": self.max_concurrent_trials,
                "metric": self.metric, "mode": self.mode, "seed": self.seed,
                "scheduler": dataclasses.asdict(self.scheduler)}


# ---------------------------------------------------------------- parsing

_SEARCH_KEYS = {"space", "num_samples", "max_concurrent_trials", "metric", "mode", "seed", "scheduler"}


def _number(value: Any, where: str, integer: bool) -> float | int:
    """YAML reads `1e-5` as a string; accept it as a number, never evaluate anything."""
    if isinstance(value, bool):
        raise BeerayError(f"{where}: expected a number, got {value!r}")
    try:
        num = float(value)
    except (TypeError, ValueError):
        raise BeerayError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(num):
        raise BeerayError(f"{where}: expected a finite number, got {value!r}")
    if integer:
        if not num.is_integer():
            raise BeerayError(f"{where}: expected an integer, got {value!r}")
        return int(num)
    return num


def _int_field(name: str) -> bool:
    return typing.get_type_hints(TrainConfig)[name] is int


def parse_spec(name: str, raw: Any, base: TrainConfig, where: str) -> SearchSpec:
    where = f"{where}: search.space.{name}"
    known = {f.name for f in fields(TrainConfig)}
    if name not in known:
        raise BeerayError(f"{where}: {name!r} is not a training config key; known: {', '.join(sorted(known))}")
    if name in FIXED_KEYS:
        raise BeerayError(f"{where}: {name!r} cannot be searched (set it in the train section)")
    if not isinstance(raw, dict):
        raise BeerayError(f"{where}: expected a mapping like {{type: loguniform, low: 1e-6, high: 1e-3}}")
    kind = raw.get("type")
    if kind not in SPEC_TYPES:
        raise BeerayError(f"{where}: unknown type {kind!r}; use one of {', '.join(SPEC_TYPES)}")
    allowed = {"type", "values"} if kind == "choice" else {"type", "low", "high"}
    extra = sorted(set(raw) - allowed)
    if extra:
        raise BeerayError(f"{where}: unexpected key(s) {', '.join(extra)} for type {kind}")
    if kind == "choice":
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise BeerayError(f"{where}: choice needs a non-empty list `values`")
        # Coerce through the config's own types: [256, 512] for an int, "1e-5" for a float, ...
        coerced = tuple(getattr(from_dict(TrainConfig, {name: v}, where), name) for v in values)
        if len(set(coerced)) != len(coerced):
            raise BeerayError(f"{where}: choice values repeat: {values}")
        spec = SearchSpec(name, kind, values=coerced)
    else:
        if "low" not in raw or "high" not in raw:
            raise BeerayError(f"{where}: {kind} needs `low` and `high`")
        integer = kind == "randint"
        low, high = _number(raw["low"], f"{where}.low", integer), _number(raw["high"], f"{where}.high", integer)
        if low >= high:
            raise BeerayError(f"{where}: low ({raw['low']}) must be < high ({raw['high']})"
                              + (" (randint: high is exclusive)" if integer else ""))
        if kind == "loguniform" and low <= 0:
            raise BeerayError(f"{where}: loguniform needs low > 0, got {raw['low']}")
        hint = typing.get_type_hints(TrainConfig)[name]
        if integer and hint is not int:
            raise BeerayError(f"{where}: randint draws integers but {name} is not an integer setting")
        if not integer and hint is not float:
            raise BeerayError(f"{where}: {kind} draws floats but {name} is "
                              f"{'an integer (use randint or choice)' if hint is int else 'not a number'}")
        spec = SearchSpec(name, kind, low=low, high=high)
    for value in spec.extremes():  # every value a trial may get must make a valid config
        try:
            dataclasses.replace(base, **{name: value}).validate()
        except BeerayError as exc:
            raise BeerayError(f"{where}: value {value!r} is not valid ({exc})") from None
    return spec


def parse_tune_config(values: dict, where: str) -> TuneConfig:
    unknown = sorted(set(values) - {"train", "search"})
    if unknown:
        raise BeerayError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; expected train and search")
    train_values = values.get("train") or {}
    search = values.get("search")
    if not isinstance(train_values, dict):
        raise BeerayError(f"{where}: `train` must be a mapping of TrainConfig keys")
    if not isinstance(search, dict):
        raise BeerayError(f"{where}: missing `search:` section (space, num_samples, metric, ...)")
    base = from_dict(TrainConfig, train_values, f"{where}: train").validate()
    if not base.data:
        raise BeerayError(f"{where}: train.data is not set (a folder made by `beeray prepare`)")
    extra = sorted(set(search) - _SEARCH_KEYS)
    if extra:
        raise BeerayError(f"{where}: unknown search key(s) {', '.join(extra)}; known: {', '.join(sorted(_SEARCH_KEYS))}")
    space_raw = search.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise BeerayError(f"{where}: search.space is empty: name at least one hyperparameter to search")
    space = [parse_spec(str(k), v, base, where) for k, v in space_raw.items()]

    num_samples = _number(search.get("num_samples", 8), f"{where}: search.num_samples", True)
    if num_samples < 1:
        raise BeerayError(f"{where}: search.num_samples must be >= 1, got {num_samples}")
    concurrent = _number(search.get("max_concurrent_trials", 2), f"{where}: search.max_concurrent_trials", True)
    if concurrent < 1:
        raise BeerayError(f"{where}: search.max_concurrent_trials must be >= 1, got {concurrent}")
    metric = search.get("metric", "val_ndcg@100")
    if metric not in METRICS:
        raise BeerayError(f"{where}: search.metric {metric!r} is not a reported validation metric; "
                          f"use one of {', '.join(METRICS)}")
    mode = search.get("mode", "max")
    if mode not in ("max", "min"):
        raise BeerayError(f"{where}: search.mode must be max or min, got {mode!r}")
    seed = _number(search.get("seed", 0), f"{where}: search.seed", True)
    scheduler = _parse_scheduler(search.get("scheduler", {"type": "asha"}), where)
    return TuneConfig(train=base, space=space, num_samples=num_samples, max_concurrent_trials=concurrent,
                      metric=metric, mode=mode, seed=seed, scheduler=scheduler, source=where)


def _parse_scheduler(raw: Any, where: str) -> Scheduler:
    if raw is None or raw == "none" or raw is False:
        return Scheduler(type="none")
    if raw == "asha":
        return Scheduler()
    if not isinstance(raw, dict):
        raise BeerayError(f"{where}: search.scheduler must be `none` or {{type: asha, grace_period, reduction_factor}}")
    kind = raw.get("type", "asha")
    if kind not in ("asha", "none"):
        raise BeerayError(f"{where}: search.scheduler.type must be asha or none, got {kind!r}")
    extra = sorted(set(raw) - {"type", "grace_period", "reduction_factor"})
    if extra:
        raise BeerayError(f"{where}: unknown search.scheduler key(s) {', '.join(extra)}")
    grace = _number(raw.get("grace_period", 1), f"{where}: search.scheduler.grace_period", True)
    factor = _number(raw.get("reduction_factor", 2), f"{where}: search.scheduler.reduction_factor", True)
    if grace < 1 or factor < 2:
        raise BeerayError(f"{where}: search.scheduler needs grace_period >= 1 and reduction_factor >= 2")
    return Scheduler(type=kind, grace_period=grace, reduction_factor=factor)


def load_tune_config(path: str | Path, out: str | None = None) -> TuneConfig:
    cfg = parse_tune_config(load_yaml(path), str(path))
    if out:
        cfg.train.out = out
    # Trials run in Ray's session directory: every path they get must be absolute.
    cfg.train.data = str(Path(cfg.train.data).expanduser().resolve())
    cfg.train.out = str(Path(cfg.train.out).expanduser().resolve())
    return cfg


# ---------------------------------------------------------------- trials

def trial_config(base: TrainConfig, sampled: dict) -> TrainConfig:
    """A trial's TrainConfig: the fixed part + the sampled values; never the test split, never train+val."""
    values = {**to_dict(base), **sampled, "evaluate_test": False, "full_train": False, "eval_every_epoch": True}
    return from_dict(TrainConfig, values, "trial config").validate()


PG_FILE = "placement_groups.txt"  # in a trial's Train run folder: its workers' placement group ids


def _placement_group_recorder(path: Path):
    """A Train worker-group callback (runs in the TrainController) that writes down its placement group.

    When ASHA stops a trial, Tune kills the trial and with it the TrainController; Ray Train's own
    PlacementGroupCleaner then has to find the dead controller through the state API, which needs the
    dashboard (off locally) and a unique Ray instance per machine. When it cannot, the workers'
    placement group and its CPUs/GPUs stay reserved and later trials wait forever. The id written
    here lets the Tune driver remove it (see _placement_group_reaper).
    """
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback

    class RecordPlacementGroup(WorkerGroupCallback):
        def after_worker_group_start(self, worker_group) -> None:
            pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.write(pg.id.hex() + "\n")

    return RecordPlacementGroup()


def _placement_group_reaper(trials_dir: Path):
    """A Tune callback (runs in the driver) that removes a finished trial's leftover placement groups."""
    from ray.tune import Callback

    class ReapPlacementGroups(Callback):
        def _reap(self, trial) -> None:
            from ray._raylet import PlacementGroupID
            from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

            path = trials_dir / f"trial-{trial.trial_id}" / PG_FILE
            if not path.exists():
                return
            for hex_id in path.read_text().split():
                pg = PlacementGroup(PlacementGroupID.from_hex(hex_id))
                try:
                    if placement_group_table(pg).get("state") not in (None, "REMOVED"):
                        remove_placement_group(pg)
                except Exception as exc:  # never let cleanup break the search
                    print(f"beeray tune: could not remove placement group {hex_id}: {exc}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._reap(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._reap(trial)

    return ReapPlacementGroups()


def _fit_outside_trial_group(cfg: TrainConfig, callback, storage_path: str, name: str) -> None:
    from beeray.data.prepared import PreparedData
    from beeray.trainer import fit

    recorder = _placement_group_recorder(Path(storage_path) / name / PG_FILE)
    fit(cfg, PreparedData.load(cfg.data), run_config_callbacks=[callback, recorder], storage_path=storage_path,
        name=name)


def make_trainable(base: TrainConfig, trials_dir: Path):
    """The Tune function: one TorchTrainer per trial, its epoch reports forwarded to Tune."""
    import ray
    import ray.tune
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    # A Tune trial's placement group captures the tasks its function starts. The trial holds no
    # CPU (below), so the Ray Data tasks that fit() starts (reading train.parquet) could never be
    # scheduled inside it: fit() runs in a 0-CPU task placed outside the trial's group instead.
    # The TorchTrainer's workers get their own placement group either way.
    remote_fit = ray.remote(num_cpus=0, max_retries=0)(_fit_outside_trial_group).options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))

    def driver_fn(config: dict) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        cfg = trial_config(base, config)
        # The callback must be made here, in the trial's Tune session: it holds the queue to Tune.
        callback = TuneReportCallback()
        # A stable name per trial: a restored trial resumes its own Train run from its checkpoint.
        name = f"trial-{ray.tune.get_context().get_trial_id()}"
        ray.get(remote_fit.remote(cfg, callback, str(trials_dir), name))

    # The driver only waits on its TorchTrainer, whose workers hold the CPUs/GPUs: two single-worker
    # trials then fit on two CPUs. Ray refuses an all-zero request, hence one byte of memory.
    return ray.tune.with_resources(driver_fn, {"CPU": 0, "memory": 1})


def _tuner(cfg: TuneConfig, out: Path, resume: bool, callbacks: list | None):
    import optuna
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    trainable = make_trainable(cfg.train, out / "ray" / "trials")
    run_dir = out / "ray" / TUNE_RUN
    reaper = _placement_group_reaper(out / "ray" / "trials")
    if resume:
        # Finished trials are kept as they are; unfinished and errored ones continue from their checkpoints.
        tuner = ray.tune.Tuner.restore(str(run_dir), trainable=trainable, resume_errored=True)
        # restore() reuses the saved RunConfig; callbacks are code, not state, so set this run's.
        # (Tuner has no public setter; _local_tuner is None only with Ray Client, which beeray does not use.)
        if tuner._local_tuner is not None:
            tuner._local_tuner._run_config.callbacks = [reaper, *(callbacks or [])]
        return tuner
    scheduler = None
    if cfg.scheduler.type == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=cfg.max_epochs, grace_period=cfg.scheduler.grace_period,
                                  reduction_factor=cfg.scheduler.reduction_factor)
    search = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    return ray.tune.Tuner(
        trainable,
        param_space={s.name: s.domain() for s in cfg.space},
        tune_config=ray.tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=cfg.num_samples,
                                        max_concurrent_trials=cfg.max_concurrent_trials, metric=cfg.metric,
                                        mode=cfg.mode),
        run_config=ray.tune.RunConfig(name=TUNE_RUN, storage_path=str(out / "ray"),
                                      callbacks=[reaper, *(callbacks or [])]),
    )


# ---------------------------------------------------------------- results

@dataclass
class TrialRow:
    trial_id: str
    config: dict
    history: list[dict]  # one row per epoch with the validation metrics
    status: str
    time_s: float | None
    error: str | None
    best: float | None = None
    best_epoch: int | None = None


def _first_line(error: Any) -> str:
    text = str(error).strip()
    # Ray wraps the cause; its last "Error: ..." line is the one that says what happened.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    causes = [ln for ln in lines if "Error" in ln.split(":")[0] or "Exception" in ln.split(":")[0]]
    return (causes[-1] if causes else lines[0] if lines else type(error).__name__)[:300]


def collect(result_grid, cfg: TuneConfig) -> list[TrialRow]:
    rows = []
    better = max if cfg.mode == "max" else min
    for res in result_grid:
        trial_id = (res.metrics or {}).get("trial_id") or Path(res.path).name
        frame = res.metrics_dataframe
        history: list[dict] = []
        if frame is not None and not frame.empty and cfg.metric in frame:
            # epoch-end reports of trained epochs (epoch 0 is the base model, mid-epoch reports repeat
            # the newest validation)
            frame = frame[frame["epoch_end"].astype(bool) & (frame["epoch"] > 0) & frame[cfg.metric].notna()]
            keep = [c for c in ("epoch", "loss", *METRICS) if c in frame]
            history = frame[keep].to_dict("records")
        time_s = (res.metrics or {}).get("time_total_s")
        row = TrialRow(trial_id=str(trial_id), config={s.name: res.config.get(s.name) for s in cfg.space},
                       history=history, status="ERROR" if res.error else "TERMINATED",
                       time_s=time_s, error=_first_line(res.error) if res.error else None)
        if history:
            best = better(history, key=lambda h: h[cfg.metric])
            row.best, row.best_epoch = float(best[cfg.metric]), int(best["epoch"])
        rows.append(row)
    return rows  # in the order Tune created the trials


def results_frame(rows: list[TrialRow], cfg: TuneConfig) -> pd.DataFrame:
    records = []
    for row in rows:
        rec: dict = {"trial_id": row.trial_id, **row.config}
        for h in row.history:
            for m in METRICS:
                if m in h:
                    rec[f"{m}_epoch{int(h['epoch'])}"] = h[m]
        rec.update({f"best_{cfg.metric}": row.best, "best_epoch": row.best_epoch, "epochs_run": len(row.history),
                    "status": row.status, "time_s": row.time_s, "error": row.error})
        records.append(rec)
    frame = pd.DataFrame(records)
    # Epoch columns in epoch order, whatever order the trials reported them in.
    fixed = ["trial_id", *[s.name for s in cfg.space]]
    tail = [f"best_{cfg.metric}", "best_epoch", "epochs_run", "status", "time_s", "error"]
    middle = sorted((c for c in frame.columns if c not in fixed + tail),
                    key=lambda c: (METRICS.index(c.rsplit("_epoch", 1)[0]), int(c.rsplit("_epoch", 1)[1])))
    return frame.reindex(columns=fixed + middle + tail)


def pick_best(rows: list[TrialRow], cfg: TuneConfig) -> TrialRow:
    scored = [r for r in rows if r.best is not None]
    if not scored:
        failures = "; ".join(f"{r.trial_id}: {r.error or 'no metrics reported'}" for r in rows)
        raise BeerayError(f"{cfg.source}: all {len(rows)} trials failed ({failures})")
    return (max if cfg.mode == "max" else min)(scored, key=lambda r: r.best)


def plot_trials(rows: list[TrialRow], cfg: TuneConfig, best: TrialRow, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        if not row.history:
            continue
        epochs = [h["epoch"] for h in row.history]
        values = [h[cfg.metric] for h in row.history]
        is_best = row is best
        ax.plot(epochs, values, "o-", lw=2.5 if is_best else 1, alpha=1 if is_best else 0.6,
                label=f"{row.trial_id}{' (best)' if is_best else ''}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{cfg.metric} (validation)")
    ax.set_xticks(range(1, cfg.max_epochs + 1))
    ax.set_title(f"beeray tune: {len(rows)} trials")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path)


def plot_hyperparameters(rows: list[TrialRow], cfg: TuneConfig, best: TrialRow, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(cfg.space)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False)
    scored = [r for r in rows if r.best is not None]
    for ax, spec in zip(axes[0], cfg.space):
        xs = [r.config[spec.name] for r in scored]
        ys = [r.best for r in scored]
        if spec.type == "choice" and not all(isinstance(x, (int, float)) for x in xs):
            labels = [str(v) for v in spec.values]
            xs = [labels.index(str(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels)
        ax.scatter(xs, ys, c=["tab:red" if r is best else "tab:blue" for r in scored], zorder=3)
        if spec.log_scale:
            ax.set_xscale("log")
        ax.set_xlabel(spec.name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"best {cfg.metric}")
    fig.suptitle("validation metric against each searched hyperparameter (red: best trial)")
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------- the whole job

@dataclass
class TuneOutput:
    out: Path
    rows: list[TrialRow]
    best: TrialRow
    final_config: TrainConfig
    final_metrics: dict


def _prepare_out(cfg: TuneConfig, resume: bool) -> Path:
    from beeray import artifacts

    def conflicts(old: dict) -> list[str]:
        now = json.loads(json.dumps(cfg.to_json()))
        return [f"changed: {k}" for k in sorted(now) if old.get(k) != now[k]]

    return artifacts.prepare_run_dir(cfg.train.out, state=f"ray/{TUNE_RUN}", config_file="tune_config.json",
                                     config=cfg.to_json(), resume=resume, conflicts=conflicts, what="search")


def run_search(cfg: TuneConfig, *, resume: bool = False, callbacks: list | None = None):
    """Run (or continue) the trials; returns Ray's ResultGrid."""
    from beeray.data.prepared import PreparedData
    from beeray.trainer import init_ray

    PreparedData.load(cfg.train.data)  # a missing or broken folder fails here, not in every trial
    out = _prepare_out(cfg, resume)
    init_ray(cfg.train.address)
    tuner = _tuner(cfg, out, resume, callbacks)
    try:
        grid = tuner.fit()
    except Exception as exc:  # TuneError: the experiment itself broke (not a trial); it can be resumed
        raise BeerayError(f"the search stopped ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                          f"continue it with --resume") from exc
    # Ctrl-C (SIGINT) makes Tune save its state and return early instead of raising.
    unfinished = _unfinished(grid, cfg.num_samples)
    if unfinished:
        raise BeerayError(f"the search in {out} was interrupted with {unfinished} trial(s) unfinished; "
                          f"continue it with --resume")
    return grid


def _unfinished(grid, num_samples: int) -> int:
    from ray.tune.experiment import Trial

    trials = grid._experiment_analysis.trials  # statuses are not on the public Result
    done = sum(t.status in (Trial.TERMINATED, Trial.ERROR) for t in trials)
    return max(num_samples, len(trials)) - done


def finish(cfg: TuneConfig, result_grid, *, resume: bool = False, baseline: bool = True) -> TuneOutput:
    """Table + plots, then the best configuration retrained on train + validation and tested once."""
    from beeray import artifacts
    from beeray.trainer import train

    out = Path(cfg.train.out)
    rows = collect(result_grid, cfg)
    artifacts.write_csv(out / "tune_results.csv", results_frame(rows, cfg))
    best = pick_best(rows, cfg)  # raises when every trial failed, after the table is written
    plot_trials(rows, cfg, best, out / "trials.png")
    plot_hyperparameters(rows, cfg, best, out / "hyperparameters.png")

    final_dir = out / FINAL_DIR
    # epochs = the best trial's best epoch: the model the search actually scored (see module doc).
    final = from_dict(TrainConfig, {**to_dict(cfg.train), **best.config, "epochs": best.best_epoch,
                                    "full_train": True, "evaluate_test": True, "out": str(final_dir)},
                      "final config").validate()
    if (final_dir / "metrics.json").exists() and resume:
        metrics = {k: v for k, v in json.loads((final_dir / "metrics.json").read_text()).items()
                   if k in ("base", "trained")}
    else:
        done_before = (final_dir / "ray").exists()
        metrics = train(final, resume=resume and done_before, baseline=baseline).metrics
    best_epoch_row = next(h for h in best.history if int(h["epoch"]) == best.best_epoch)
    artifacts.write_json(out / "best.json", {
        "trial_id": best.trial_id,
        "metric": cfg.metric, "mode": cfg.mode, "selection": "best epoch of each trial's reported history",
        "value": best.best, "best_epoch": best.best_epoch,
        "config": best.config,
        "validation": {m: best_epoch_row[m] for m in METRICS if m in best_epoch_row},
        "final": {"out": str(final_dir), "config": to_dict(final), "metrics": metrics},
        "failed_trials": [{"trial_id": r.trial_id, "error": r.error} for r in rows if r.status == "ERROR"],
    })
    return TuneOutput(out=out, rows=rows, best=best, final_config=final, final_metrics=metrics)


def tune(cfg: TuneConfig, *, resume: bool = False, baseline: bool = True,
         callbacks: list | None = None) -> TuneOutput:
    grid = run_search(cfg, resume=resume, callbacks=callbacks)
    return finish(cfg, grid, resume=resume, baseline=baseline)


__all__ = ["SearchSpec", "Scheduler", "TuneConfig", "parse_tune_config", "load_tune_config", "trial_config",
           "make_trainable", "run_search", "finish", "tune", "collect", "results_frame", "pick_best"]
