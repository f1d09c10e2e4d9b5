"""Hyperparameter search (docs/method.md §6): Optuna TPE inside Ray Tune, one TorchTrainer per trial.

Layout of the output folder OUT (a local folder, or object storage: s3://bucket/prefix, where Ray keeps
ray/ as the search runs, the final retrain publishes final/ as `beeray train` does, and the rest is
uploaded at the end with OUT/_COMPLETE.json last):
  tune_config.json   the parsed config (a --resume must match it)
  ray/tune/          Ray Tune's experiment (restored by --resume)
  ray/trials/        one Ray Train run per trial, named trial-<trial id> (resumed from its checkpoint)
  final/             the best configuration retrained on train + validation; the only test evaluation
  tune_results.csv, best.json, trials.png, hyperparameters.png

Each trial follows Ray's documented Train-in-Tune pattern: the Tune function builds and fits a
TorchTrainer whose RunConfig carries `TuneReportCallback`, which forwards rank 0's reports to Tune.
The configuration (search space, scheduler) is parsed in beeray/config.py; tables and plots are
written by beeray/artifacts.py.

Model selection: a trial's score is the best value of the metric over its trained epochs, and the
retrain runs for that epoch count. ASHA compares trials by the value at each rung (the epoch it
has reached), so a trial it keeps running has, at each rung, a value no worse than the ones it cut;
taking the best epoch rather than the last lets a trial whose metric peaked early be chosen with
the epoch count at which it peaked, which the constant-lr training loop reproduces exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from beeray import artifacts, files
from beeray.artifacts import TrialRow
from beeray.checkpoint import prepare_run_dir
from beeray.config import SearchSpec, TrainConfig, TuneConfig, from_dict, to_dict
from beeray.errors import BeerayError
from beeray.metrics import VAL_METRICS

TUNE_RUN = "tune"  # stable experiment name: --resume finds it
FINAL_DIR = "final"


def domain(spec: SearchSpec):
    """A searched hyperparameter as Ray Tune's search space."""
    from ray import tune

    if spec.type == "loguniform":
        return tune.loguniform(spec.low, spec.high)
    if spec.type == "uniform":
        return tune.uniform(spec.low, spec.high)
    if spec.type == "randint":
        return tune.randint(int(spec.low), int(spec.high))
    return tune.choice(list(spec.values))


def trial_config(base: TrainConfig, sampled: dict) -> TrainConfig:
    """A trial's TrainConfig: the fixed part + the sampled values; never the test split, never train+val."""
    values = {**to_dict(base), **sampled, "evaluate_test": False, "full_train": False, "eval_every_epoch": True}
    return from_dict(TrainConfig, values, "trial config").validate()


def make_trainable(base: TrainConfig, trials: tuple[str, object]):
    """The Tune function: one TorchTrainer per trial, its reports forwarded to Tune."""
    import ray.tune

    def train_driver(config: dict) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        from beeray.data.prepared import PreparedData
        from beeray.trainer import fit

        cfg = trial_config(base, config)
        # A stable name per trial: a restored trial resumes its own Train run from its checkpoint.
        name = f"trial-{ray.tune.get_context().get_trial_id()}"
        fit(cfg, PreparedData.load(cfg.data), run_config_callbacks=[TuneReportCallback()], storage=trials, name=name)

    # The Tune function only drives its TorchTrainer, whose workers hold the CPUs/GPUs, so it asks
    # for no CPU: two single-worker trials then fit on two CPUs. (Ray refuses a request of nothing
    # at all, hence one byte of memory.)
    return ray.tune.with_resources(train_driver, {"CPU": 0, "memory": 1})


def _tuner(cfg: TuneConfig, resume: bool, callbacks: list | None):
    import optuna
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    # OUT/ray: a local folder, or a prefix in object storage (beeray.files.ray_storage)
    storage_path, filesystem = files.ray_storage(cfg.train.out)
    trainable = make_trainable(cfg.train, (f"{storage_path}/trials", filesystem))
    if resume:
        # Finished trials are kept as they are; unfinished and errored ones continue from their
        # checkpoints. The experiment's RunConfig, callbacks included, is restored with it.
        return ray.tune.Tuner.restore(f"{storage_path}/{TUNE_RUN}", trainable=trainable, resume_errored=True,
                                      storage_filesystem=filesystem)
    search = cfg.search
    scheduler = None
    if search.scheduler.type == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=cfg.max_epochs, grace_period=search.scheduler.grace_period,
                                  reduction_factor=search.scheduler.reduction_factor)
    return ray.tune.Tuner(
        trainable,
        param_space={s.name: domain(s) for s in cfg.space},
        tune_config=ray.tune.TuneConfig(search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(seed=search.seed)),
                                        scheduler=scheduler, num_samples=search.num_samples,
                                        max_concurrent_trials=search.max_concurrent_trials, metric=search.metric,
                                        mode=search.mode),
        run_config=ray.tune.RunConfig(name=TUNE_RUN, storage_path=storage_path, storage_filesystem=filesystem,
                                      callbacks=callbacks or None),
    )


def _prepare_out(cfg: TuneConfig, resume: bool) -> Path:
    def conflicts(old: dict) -> list[str]:
        now = json.loads(json.dumps(cfg.to_json()))
        return [f"changed: {k}" for k in sorted(now) if old.get(k) != now[k]]

    return prepare_run_dir(cfg.train.out, state=f"ray/{TUNE_RUN}", config_file="tune_config.json",
                                     config=cfg.to_json(), resume=resume, conflicts=conflicts, what="search")


def run_search(cfg: TuneConfig, *, resume: bool = False, callbacks: list | None = None):
    """Run (or continue) the trials; returns Ray's ResultGrid."""
    from ray.tune import TuneError

    from beeray.data.prepared import PreparedData
    from beeray.cluster import init_ray

    PreparedData.load(cfg.train.data)  # a missing or broken folder fails here, not in every trial
    out = _prepare_out(cfg, resume)
    init_ray(cfg.train.address)
    from beeray.tracking import process_tracking_uri_kept, tune_callbacks

    tuner = _tuner(cfg, resume, [*(callbacks or []), *tune_callbacks(cfg.train, cfg.train.out)])
    try:
        with process_tracking_uri_kept():
            grid = tuner.fit()
    except TuneError as exc:  # the experiment itself broke (not a trial): its state is saved
        raise BeerayError(f"the search stopped ({str(exc).splitlines()[0] if str(exc) else 'TuneError'}); "
                          f"continue it with --resume") from exc
    # Ctrl-C (SIGINT) makes Tune save its state and return early instead of raising.
    unfinished = max(cfg.search.num_samples, len(grid)) - grid.num_terminated - grid.num_errors
    if unfinished > 0:
        raise BeerayError(f"the search in {out} was interrupted with {unfinished} trial(s) unfinished; "
                          f"continue it with --resume")
    return grid


def pick_best(rows: list[TrialRow], cfg: TuneConfig) -> TrialRow:
    scored = [r for r in rows if r.best is not None]
    if not scored:
        failures = "; ".join(f"{r.trial_id}: {r.error or 'no metrics reported'}" for r in rows)
        raise BeerayError(f"{cfg.source}: all {len(rows)} trials failed ({failures})")
    return (max if cfg.search.mode == "max" else min)(scored, key=lambda r: r.best)


@dataclass
class TuneOutput:
    out: Path
    rows: list[TrialRow]
    best: TrialRow
    final_metrics: dict
    published: str | None = None  # the object-storage URL the search's files were uploaded to


def finish(cfg: TuneConfig, result_grid, *, resume: bool = False, baseline: bool = True) -> TuneOutput:
    """Table + plots, then the best configuration retrained on train + validation and tested once."""
    from beeray.trainer import train

    out = files.output_dir(cfg.train.out)  # for object storage: the staging folder, uploaded by `tune`
    rows = artifacts.collect(result_grid, cfg)
    files.write_csv(out / "tune_results.csv", artifacts.results_frame(rows, cfg))
    best = pick_best(rows, cfg)  # raises when every trial failed, after the table is written
    artifacts.plot_trials(rows, cfg, best, out / "trials.png")
    artifacts.plot_hyperparameters(rows, cfg, best, out / "hyperparameters.png")

    final_dir = f"{cfg.train.out}/{FINAL_DIR}"  # its own run: a folder, or a URL published by `train`
    # epochs = the best trial's best epoch: the model the search actually scored (see module doc).
    from beeray.tracking import tracking_uri

    final_cfg = from_dict(TrainConfig, {**to_dict(cfg.train), **best.config, "epochs": best.best_epoch,
                                        "full_train": True, "evaluate_test": True, "out": final_dir,
                                        # no validation in a refit: it trains the chosen epochs, no early stop
                                        "patience": 0,
                                        # the search's store, not one beside final/
                                        "tracking_uri": tracking_uri(cfg.train)},
                          "final config").validate()
    final = files.Folder(final_dir)
    # A retrain counts as done once its metrics are written (in object storage: once it is published).
    finished = final.exists("metrics.json") and (not final.url or final.exists(files.MARKER))
    if finished and resume:
        metrics = {k: v for k, v in json.loads(final.read_text("metrics.json")).items() if k in ("base", "trained")}
    else:
        from beeray.trainer import RUN_NAME

        done_before = final.exists(f"ray/{RUN_NAME}")
        metrics = train(final_cfg, resume=resume and done_before, baseline=baseline,
                        tags={"beeray.search": str(cfg.train.out), "beeray.role": "final retrain"}).metrics
    best_epoch_row = next(h for h in best.history if int(h["epoch"]) == best.best_epoch)
    files.write_json(out / "best.json", {
        "trial_id": best.trial_id,
        "metric": cfg.search.metric, "mode": cfg.search.mode,
        "selection": "best epoch of each trial's reported history",
        "value": best.best, "best_epoch": best.best_epoch,
        "config": best.config,
        "validation": {m: best_epoch_row[m] for m in VAL_METRICS if m in best_epoch_row},
        "final": {"out": final_dir, "config": to_dict(final_cfg), "metrics": metrics},
        "failed_trials": [{"trial_id": r.trial_id, "error": r.error} for r in rows if r.status == "ERROR"],
    })
    return TuneOutput(out=out, rows=rows, best=best, final_metrics=metrics)


def tune(cfg: TuneConfig, *, resume: bool | str = False, baseline: bool = True,
         callbacks: list | None = None) -> TuneOutput:
    """Search, then retrain and test the best. `resume`: True continues the search in OUT (one must
    exist), "auto" continues it if one exists and starts it otherwise. OUT is held by this search
    alone while it runs (beeray.files.run_lock)."""
    from beeray.checkpoint import resolve_resume

    place = files.Folder(cfg.train.out)
    place.preflight()
    with files.run_lock(cfg.train.out, "search"):
        resume = resolve_resume(cfg.train.out, f"ray/{TUNE_RUN}", resume, what="search")
        grid = run_search(cfg, resume=resume, callbacks=callbacks)
        result = finish(cfg, grid, resume=resume, baseline=baseline)
        if place.publish(result.out) is not None:  # final/ is published by its own run; then the search's
            result.published = cfg.train.out
    return result


__all__ = ["trial_config", "make_trainable", "run_search", "pick_best", "finish", "tune", "TuneOutput"]
