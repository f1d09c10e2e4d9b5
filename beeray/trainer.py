"""The driver side of training: start or join Ray, launch the TorchTrainer, write the artifacts."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from beeray import artifacts, files, training_record
from beeray.checkpoint import (BEST_WEIGHTS, MODEL_DIR, TrainState, kept_text, prepare_run_dir, read_state,
                               resolve_resume)
from beeray.config import TrainConfig, to_dict
from beeray.data.prepared import PreparedData
from beeray.errors import BeerayError
from beeray.models import load_model, save_model, set_max_seq_length
from beeray.cluster import init_ray
from beeray.sampler import PAD_USER, composed_parts
from beeray.train_loop import CRASH_AT_STEP, STORAGE_KEY, train_loop_per_worker

log = logging.getLogger(__name__)

RUN_NAME = "train"  # stable, so that re-running with --resume finds the run (Train V2 restores by name)


@dataclass
class TrainOutput:
    out: Path  # the local folder written (for an object-storage --out, its staging folder)
    model_dir: Path
    history: list[dict]  # per epoch
    steps: list[dict]  # per optimizer step
    metrics: dict
    mlflow_run: str | None = None
    published: str | None = None  # the object-storage URL the run was uploaded to (files.publish)


def _check_resources(cfg: TrainConfig, local: bool) -> None:
    """Refuse a run that can never be placed on the local Ray we started ourselves.

    On a cluster the autoscaler may add nodes (GPU workers often scale from zero), so there a
    shortfall is only reported and Ray waits for the resources.
    """
    import ray

    have = ray.cluster_resources()
    need_cpu = cfg.num_workers * cfg.cpus_per_worker
    need_gpu = cfg.num_workers * cfg.gpus_per_worker if cfg.use_gpu else 0
    if need_cpu <= have.get("CPU", 0) and need_gpu <= have.get("GPU", 0):
        return
    msg = (f"the run asks for {cfg.num_workers} workers x ({cfg.cpus_per_worker} CPU"
           f"{f', {cfg.gpus_per_worker} GPU' if cfg.use_gpu else ''}) = {need_cpu} CPU, {need_gpu} GPU, "
           f"but the Ray cluster has {have.get('CPU', 0):g} CPU, {have.get('GPU', 0):g} GPU")
    if local:
        raise BeerayError(msg)
    log.info(f"beeray: {msg} now; waiting for the autoscaler to add nodes")


def train_dataset(data: PreparedData, full: bool, world: int, split: bool = True):
    """The users' rows as a Ray Dataset (see train_table)."""
    import ray.data

    return ray.data.from_arrow(train_table(data, full, world, split))


def train_table(data: PreparedData, full: bool, world: int, split: bool = True) -> pa.Table:
    """The users' rows; `split` (joint steps): padded to a multiple of the worker count.

    Ray Train splits with streaming_split(equal=True), which would drop up to W-1 rows per
    epoch; padding rows (user = -1, no items) make the split exact, and workers skip them.
    Without `split` (per_dataset steps) every worker reads the whole table and takes its part of
    each step of a plan they all compute alike (beeray/sampler.py dataset_batches): no padding.
    """
    # The driver reads the table itself (one small row per user: a few MB even at Amazon scale)
    # and hands it to Ray Data, which shards it. A read *task* would need a free CPU, and inside
    # a Tune trial or on a cluster whose CPUs the workers hold, there may be none: it would wait forever.
    path = data.train_path(full)
    table = files.read_parquet(path, ["user", "items"], hint="re-run beeray prepare --force")
    if table.num_rows == 0:
        raise BeerayError(f"{path} holds no training users")
    pad = (-table.num_rows) % world if split else 0
    if pad:
        filler = pa.table({"user": [PAD_USER] * pad, "items": [[] for _ in range(pad)]}, schema=table.schema)
        table = pa.concat_tables([table, filler])
    return table


def fit(cfg: TrainConfig, data: PreparedData, *, run_config_callbacks: list | None = None,
        storage: tuple[str, object] | None = None, name: str = RUN_NAME):
    """Run the TorchTrainer; returns Ray's Result. Used by `beeray train` and by each Tune trial.

    `storage`: Ray's (storage_path, storage_filesystem), default OUT/ray (beeray.files.ray_storage):
    a local folder, or a prefix in object storage that every node reaches."""
    from ray.data import DataContext
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    split = not composed_parts(cfg, data)  # joint: a shard per worker; per_dataset: the whole table each
    _check_resources(cfg, local=not (cfg.address or os.environ.get("RAY_ADDRESS")))
    # Same shard contents in the same order on every run: resume must replay the epoch exactly.
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # a few MB of user rows: the bars would only add noise to the logs
    storage_path, storage_filesystem = storage or files.ray_storage(cfg.out)
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**to_dict(cfg), STORAGE_KEY: (f"{storage_path}/{name}", storage_filesystem),
                           CRASH_AT_STEP: int(os.environ.get(CRASH_AT_STEP) or 0)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        datasets={"train": train_dataset(data, cfg.full_train, cfg.num_workers, split)},
        dataset_config=DataConfig(datasets_to_split=["train"] if split else []),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            callbacks=run_config_callbacks or None,
        ),
    )
    return trainer.fit()


def train(cfg: TrainConfig, *, resume: bool | str = False, baseline: bool = True,
          tags: dict | None = None) -> TrainOutput:
    """`beeray train`: fit, then save the model, its card, history and metrics under cfg.out, and
    log the run to MLflow (beeray/tracking.py; `tags` go on its MLflow run). `resume`: True continues
    the run in cfg.out (one must exist), "auto" continues it if one exists and starts it otherwise.
    cfg.out is held by this run alone while it runs (beeray.files.run_lock)."""
    data = PreparedData.load(cfg.data)  # fail on a bad folder before Ray starts
    composed_parts(cfg, data)  # and on dataset_weights that do not name its datasets
    # a URL stays one: each node fetches it (PreparedData.load); the caller's config stays as given
    cfg = dataclasses.replace(cfg, data=files.absolute(cfg.data))
    files.Folder(cfg.out).preflight()  # a wrong key, bucket or endpoint: one line now, not at the first checkpoint
    with files.run_lock(cfg.out, "run"):  # one run per OUT: two would share Ray's state and MLflow's store
        return _train(cfg, data, resume=resume, baseline=baseline, tags=tags)


def _train(cfg: TrainConfig, data: PreparedData, *, resume: bool | str, baseline: bool,
           tags: dict | None) -> TrainOutput:
    import ray
    from ray.train import TrainingFailedError

    from beeray.models import model_fingerprint

    out = prepare_run_dir(cfg.out, state=f"ray/{RUN_NAME}", config_file="config.json",
                                config=to_dict(cfg), resume=resolve_resume(cfg.out, f"ray/{RUN_NAME}", resume),
                                conflicts=cfg.resume_conflicts, what="run")
    if resume:
        from beeray.checkpoint import remove_torn

        remove_torn(*files.ray_storage(cfg.out, f"ray/{RUN_NAME}"))
    tokenize_catalog(cfg, data)
    init_ray(cfg.address)
    try:
        result = fit(cfg, data)  # a run of the same name resumes from its newest checkpoint
    except TrainingFailedError as exc:
        raise BeerayError(failure_message(exc, cfg)) from exc
    if result.checkpoint is None:
        raise BeerayError("training finished without a checkpoint")

    model_dir = out / "model"
    with result.checkpoint.as_directory() as ckpt:
        state = read_state(ckpt)
        kept = write_kept_model(Path(ckpt), state, cfg, model_dir)
    log.info(f"beeray: kept the weights of {kept_text(kept)}")
    if cfg.save_dtype != "float32":
        save_model(load_model(str(model_dir), device="cpu", trust_remote_code=cfg.trust_remote_code),
                   model_dir, cfg.save_dtype)
    # After the last rewrite of the folder: what it trained on, for evaluate's leak guard.
    fingerprint = model_fingerprint(str(model_dir))
    training_record.write(model_dir, training_record.build(data, cfg.full_train, cfg.model, fingerprint))
    artifacts.write_history(state.history, state.steps, out, kept_epoch=kept["epoch"])
    # On a cluster the driver sits on the (CPU) head node: evaluate where the workers' devices are.
    gpus = cfg.gpus_per_worker if cfg.use_gpu else 0
    task = ray.remote(num_cpus=cfg.cpus_per_worker, num_gpus=gpus)(final_metrics)
    # The task may run on another node: an object-storage run hands it the model uploaded first.
    model_marker = files.Folder(f"{cfg.out}/model").publish(model_dir)
    metrics = ray.get(task.remote(cfg, f"{cfg.out}/model" if model_marker else str(model_dir), baseline=baseline))
    files.write_json(out / "metrics.json", {"config": to_dict(cfg), "data": data.stats,
                                            "split_digest": data.split_digest, "model_fingerprint": fingerprint,
                                            "kept": kept, **metrics})
    artifacts.model_card(model_dir, to_dict(cfg), data.stats, metrics, fingerprint=fingerprint, kept=kept,
                         split_digest=data.split_digest)
    from beeray import tracking

    run_id = None
    if tracking.enabled(cfg):
        run_id = tracking.log_training(cfg, out, state.history, state.steps, metrics, data.stats, tags)
        log.info(f"beeray: MLflow run {run_id} in {tracking.tracking_uri(cfg)} (experiment {cfg.experiment!r})")
    published = None
    if model_marker is not None:  # everything up, the run's marker last (a reader takes nothing half-written)
        files.publish(out, cfg.out, uploaded={f"model/{k}": v for k, v in model_marker["files"].items()})
        published = str(cfg.out)
        log.info(f"beeray: uploaded to {published}")
    return TrainOutput(out=out, model_dir=model_dir, history=state.history, steps=state.steps, metrics=metrics,
                       mlflow_run=run_id, published=published)


def write_kept_model(ckpt: Path, state: TrainState, cfg: TrainConfig, model_dir: Path) -> dict:
    """Write the weights `cfg.keep` selects from the run's last checkpoint to `model_dir`: the
    checkpoint's own model (the last epoch), or that model with the best epoch's weights it carries
    (beeray.checkpoint.BEST_WEIGHTS). Returns TrainState.kept: which epoch, and why."""
    import torch

    kept = state.kept(cfg)
    best = ckpt / BEST_WEIGHTS
    if kept["epoch"] != state.epoch and not best.exists():
        # a run resumed from a checkpoint written before epochs were selected: the last is all there is
        kept = {**kept, "epoch": state.epoch, "rule": "last (the checkpoints hold no earlier epoch's weights)"}
        kept.pop("score", None)
    if kept["epoch"] == state.epoch:
        files.replace_dir(ckpt / MODEL_DIR, model_dir)
        return kept
    model = load_model(str(ckpt / MODEL_DIR), device="cpu", trust_remote_code=cfg.trust_remote_code)
    model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
    save_model(model, model_dir)
    return kept


def tokenize_catalog(cfg: TrainConfig, data: PreparedData) -> None:
    """Tokenize the training catalog once, here on the driver, into the prepared folder: the W
    workers (and any restarted one) then memory-map it instead of each tokenizing it again."""
    from beeray.encoder import TokenizedCatalog

    model = load_model(cfg.model, device="cpu", trust_remote_code=cfg.trust_remote_code, prompt=cfg.prompt)
    set_max_seq_length(model, cfg.max_seq_length)  # the catalog is tokenized to this length: check it first
    TokenizedCatalog.cached(model, data, cfg.max_seq_length, full=cfg.full_train, show_progress=True)


def final_metrics(cfg: TrainConfig, model_dir: str, baseline: bool) -> dict:
    """Validation and test metrics of the trained model (a folder, or a published URL), and of the base
    model for comparison. Test items are touched here only, never during training or model selection.
    """
    from beeray.evaluator import evaluate

    data = PreparedData.load(cfg.data)  # on this task's node (a URL is fetched there)
    splits = ["val", "test"] if cfg.evaluate_test else ["val"]
    models = {"trained": str(model_dir)}
    if baseline:
        models = {"base": cfg.model, **models}
    out: dict = {}
    for who, name in models.items():
        # The base model scored with the run's prompt too (the trained folder has it saved already).
        model = load_model(name, trust_remote_code=cfg.trust_remote_code, prompt=cfg.prompt)
        set_max_seq_length(model, cfg.max_seq_length)
        out[who] = {s: evaluate(model, data, s, show_progress=False) for s in splits}
    return out


def _root_cause(exc: BaseException) -> BaseException:
    """The exception a worker raised, out of Ray Train's wrappers: a WorkerGroupError carries each
    failed rank's own exception (its message holds only a truncated traceback), the lowest rank first."""
    while True:
        failures = getattr(exc, "worker_failures", None)
        if failures:
            exc = failures[min(failures)]
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            return exc


def failure_message(exc: BaseException, cfg: TrainConfig) -> str:
    """What went wrong, in a few lines without a traceback: the cause (a full disk and an object store
    that went away in their own words), the last step saved, and the command that continues from it."""
    from beeray.checkpoint import last_saved
    from beeray.errors import user_message

    root = _root_cause(exc)
    cause = user_message(root, str(cfg.out)) or " ".join(f"{type(root).__name__}: {root}".split())[:400]
    saved = last_saved(*files.ray_storage(cfg.out, f"ray/{RUN_NAME}"))
    where = (f"the last checkpoint saved is step {saved.global_step} (epoch {saved.epoch}, step {saved.step_in_epoch} "
             "of it)") if saved else "no checkpoint was saved"
    return (f"training failed: {cause}\n  {where} in {cfg.out}\n  once that is fixed, continue with: "
            f"beeray train --out {cfg.out} --resume (with the same --data, --config and settings)")
