"""What a training checkpoint holds, and how it is written and read back (no pickle of objects)."""

from __future__ import annotations

import logging
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from beeray.errors import TRANSIENT, BeerayError, storage_problem
from beeray.metrics import SELECTION_METRIC

log = logging.getLogger(__name__)

MODEL_DIR = "model"  # a plain SentenceTransformer folder: the checkpoint is usable as a model
STATE = "state.json"  # written last: a checkpoint folder without it is torn, never one to resume from
# Uploads to an object store that stopped answering are tried again after 2, 4, 8, 16 and 32 s (about a
# minute in all: a restarted endpoint, a network blip), then the run fails with where to resume from.
UPLOAD_ATTEMPTS, UPLOAD_FIRST_WAIT_S = 6, 2.0


@dataclass
class TrainState:
    epoch: int = 0  # epoch to run next
    step_in_epoch: int = 0  # step of that epoch to run next
    global_step: int = 0
    epoch_losses: list[float] = field(default_factory=list)  # steps of the running epoch so far
    history: list[dict] = field(default_factory=list)  # one row per finished epoch (epoch 0: the base model)
    steps: list[dict] = field(default_factory=list)  # one row per optimizer step: the training curve's detail
    config: dict = field(default_factory=dict)
    scaler: dict = field(default_factory=dict)  # the fp16 GradScaler's state (scale, growth tracker); {} otherwise
    # the learning-rate scheduler's state (LambdaLR: steps counted, base and last lr, beeray.optim.LRSchedule's
    # fields); {} in checkpoints from before schedules, whose runs were constant
    lr_schedule: dict = field(default_factory=dict)
    # The trained epoch (1-based) with the best validation score so far, and that score; 0 / None before
    # the first validated epoch. Its weights are in the checkpoint: model/ when they are the current
    # ones (an epoch's end), else BEST_WEIGHTS beside it.
    best_epoch: int = 0
    best_score: float | None = None

    @property
    def at_best(self) -> bool:
        """Whether the current weights are the best epoch's (its end, before any further step)."""
        return self.best_epoch > 0 and self.best_epoch == self.epoch and self.step_in_epoch == 0

    def kept(self, cfg) -> dict:
        """Which epoch's weights the run saves, and why (metrics.json, history.csv, the model card)."""
        stopped = self.epoch < cfg.epochs
        if cfg.keep == "best" and self.best_epoch:
            return {"epoch": self.best_epoch, "rule": f"best {SELECTION_METRIC.replace('_', ' ', 1)}",
                    "score": self.best_score,
                    "epochs_run": self.epoch, "stopped_early": stopped}
        why = "last" if cfg.keep == "last" else "last (no validation to select by)"
        return {"epoch": self.epoch, "rule": why, "epochs_run": self.epoch, "stopped_early": stopped}


def kept_text(kept: dict) -> str:
    """TrainState.kept in words, for the driver's log line and the model card."""
    score = f" {kept['score']:.4f}" if kept.get("score") is not None else ""
    stopped = "; stopped early by patience" if kept.get("stopped_early") else ""
    return f"epoch {kept['epoch']} of the {kept['epochs_run']} run ({kept['rule']}{score}{stopped})"


BEST_WEIGHTS = "best_model.pt"  # the best epoch's state_dict, when the checkpoint's model/ is a later one


def save_checkpoint(path: Path, model, optimizer, state: TrainState, best: dict | None = None) -> None:
    """`best`: the best epoch's weights (a state_dict), saved when they are not the current ones."""
    path = Path(path)
    # No model card here: generating one may look the base model up on the Hub (from every worker of a
    # cluster, each checkpoint); the final model folder gets beeray's card (artifacts.model_card).
    model.save(str(path / MODEL_DIR), create_model_card=False)
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    if best is not None and not state.at_best:
        torch.save(best, path / BEST_WEIGHTS)
    (path / STATE).write_text(json.dumps(state.__dict__, indent=1))


def load_checkpoint(path: Path, model, optimizer) -> TrainState:
    """Restore weights and optimizer state in place; returns where to continue."""
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    saved = SentenceTransformer(str(path / MODEL_DIR), device="cpu")
    model.load_state_dict(saved.state_dict())
    # weights_only: tensors and plain containers only, never arbitrary objects
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    return read_state(path)


def load_best(path: Path, state: TrainState, model) -> dict | None:
    """The best epoch's weights held by a checkpoint (a CPU state_dict), None when it holds none; `model`:
    the checkpoint's weights, already loaded (the best ones when the checkpoint closes the best epoch)."""
    file = Path(path) / BEST_WEIGHTS
    if file.exists():
        return torch.load(file, map_location="cpu", weights_only=True)
    return weights_copy(model) if state.at_best else None


def weights_copy(model) -> dict:
    """A CPU copy of a model's weights, kept apart from further training."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def read_state(path: Path) -> TrainState:
    """The TrainState of a checkpoint folder, without loading the model."""
    return TrainState(**json.loads((Path(path) / STATE).read_text()))


def persist(src: str | Path, dest: str, filesystem=None, *, attempts: int = UPLOAD_ATTEMPTS,
            first_wait_s: float = UPLOAD_FIRST_WAIT_S, log=print) -> None:
    """Copy the checkpoint folder `src` to `dest` in Ray's storage so that it is whole or absent: on a
    local (or mounted) file system it is copied under a hidden temporary name and renamed into place,
    in object storage (no rename) its files are uploaded with state.json last. `filesystem`: the
    pyarrow filesystem of `dest`, None for a local path. An object store that does not answer is tried
    again with bounded backoff; any other error (a full disk, access denied) fails at once."""
    for attempt in range(1, attempts + 1):
        try:
            _copy(Path(src), dest, filesystem)
            return
        except OSError as exc:
            if attempt == attempts or storage_problem(exc) != TRANSIENT:
                raise
            wait = first_wait_s * 2 ** (attempt - 1)
            log(f"beeray: checkpoint upload to {dest} failed ({' '.join(str(exc).split())[:120]}); "
                f"retrying in {wait:g} s ({attempt}/{attempts - 1})")
            time.sleep(wait)


def _copy(src: Path, dest: str, filesystem) -> None:
    names = sorted((p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()),
                   key=lambda rel: rel == STATE)  # state.json last
    if filesystem is None or type(filesystem).__name__ == "LocalFileSystem":
        target = Path(dest)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(src, tmp)
            if target.exists():  # an earlier attempt's copy (renamed in whole, so complete) gives way
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    for rel in names:
        with open(src / rel, "rb") as fh, filesystem.open_output_stream(f"{dest}/{rel}") as out:
            shutil.copyfileobj(fh, out, 8 << 20)


def ray_upload(experiment: str, filesystem=None, log=print):
    """Ray Train's `checkpoint_upload_fn` for a run whose storage is `experiment` (storage_path/name):
    persists each checkpoint with `persist` and hands Ray the copy."""
    def upload(checkpoint, dir_name: str):
        import ray.train

        dest = f"{experiment}/{dir_name}"
        persist(checkpoint.path, dest, filesystem, log=log)
        log(f"beeray: checkpoint {dir_name} saved in {experiment}")
        return ray.train.Checkpoint(dest, filesystem=filesystem)

    return upload


def saved_checkpoints(experiment: str, filesystem=None) -> tuple[list[str], list[str]]:
    """(complete, torn) checkpoint folders under a run's Ray storage `experiment`: torn ones (a hidden
    temporary copy, or a folder without state.json) are what a crash or a full disk left mid-copy."""
    from pyarrow import fs as pafs

    filesystem = filesystem or pafs.LocalFileSystem()
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(experiment, allow_not_found=True))
    except OSError:
        return [], []
    complete, torn = [], []
    for info in infos:
        if info.type != pafs.FileType.Directory or "checkpoint_" not in info.base_name:
            continue
        whole = not info.base_name.startswith(".") and \
            filesystem.get_file_info(f"{info.path}/{STATE}").type == pafs.FileType.File
        (complete if whole else torn).append(info.path)
    return sorted(complete), sorted(torn)


def last_saved(experiment: str, filesystem=None) -> TrainState | None:
    """The TrainState of the newest complete checkpoint of a run (None when there is none)."""
    from pyarrow import fs as pafs

    filesystem = filesystem or pafs.LocalFileSystem()
    best = None
    for path in saved_checkpoints(experiment, filesystem)[0]:
        try:
            with filesystem.open_input_stream(f"{path}/{STATE}") as fh:
                state = TrainState(**json.loads(fh.read().decode("utf-8")))
        except (OSError, ValueError, TypeError):
            continue
        if best is None or state.global_step > best.global_step:
            best = state
    return best


def remove_torn(experiment: str, filesystem=None, log=print) -> None:
    """Delete the torn checkpoint folders of a run before it resumes, saying so (Ray never registered
    them: it registers a checkpoint once `persist` returns)."""
    from pyarrow import fs as pafs

    filesystem = filesystem or pafs.LocalFileSystem()
    for path in saved_checkpoints(experiment, filesystem)[1]:
        log(f"beeray: skipping the torn checkpoint {path} (its copy did not finish); removing it")
        filesystem.delete_dir(path)


def resolve_resume(out: str | Path, state: str, resume: bool | str, what: str = "run") -> bool:
    """The plain --resume switch for `resume` = True, False or "auto".

    "auto" (a job that may be submitted again, e.g. a retried KubeRay RayJob): True when `out` holds a
    started `what` (its Ray state folder `state` exists), False when it holds none; the caller then
    goes through --resume's own path (prepare_run_dir, below), which refuses a run started
    with another config, or starts a new one.
    """
    if resume != "auto":
        return bool(resume)
    from beeray import files

    folder = files.Folder(out, "--out")
    started = folder.exists(state)
    news = f"{folder} holds a {what}: resuming it" if started else f"no {what} in {folder} yet: starting one"
    log.info(f"beeray: --resume auto: {news}")
    return started


# ---------------------------------------------------------------- a run's folder and --resume

def prepare_run_dir(out: str | Path, *, state: str, config_file: str, config: dict, resume: bool,
                    conflicts, what: str) -> Path:
    """Create (or reopen, with --resume) the output of a run or search, and record its config; returns
    the local folder the command writes to (Folder.local: for a URL, a fresh staging folder that
    `publish` uploads at the end).

    `state`: the sub-folder where Ray keeps the run's state (its existence means a run was
    started here); `conflicts(saved_config) -> list[str]`: the differences that forbid continuing.
    """
    from beeray import files

    place = files.Folder(out, "--out")
    started = place.exists(state)
    saved = place.read_text(config_file, default=None)
    if resume:
        if not started or saved is None:
            raise BeerayError(f"--resume: no previous {what} in {place}")
        changed = conflicts(json.loads(saved))
        if changed:
            raise BeerayError(f"--resume: the {what} in {place} was started with a different config "
                              f"({', '.join(changed)})")
    elif started:
        raise BeerayError(f"{place} already holds a {what}: pass --resume to continue it, or choose another --out")
    local = place.local()
    text = json.dumps(config, indent=2, default=float) + "\n"
    if place.url:
        shutil.rmtree(local, ignore_errors=True)  # files of an earlier attempt: this one rewrites them all
        place.write_text(config_file, text)
    local.mkdir(parents=True, exist_ok=True)
    files.write_text(local / config_file, text)
    return local
