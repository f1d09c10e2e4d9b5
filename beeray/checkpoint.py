"""What a training checkpoint holds, and how it is written and read back (no pickle of objects)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

MODEL_DIR = "model"  # a plain SentenceTransformer folder: the checkpoint is usable as a model


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


def save_checkpoint(path: Path, model, optimizer, state: TrainState) -> None:
    path = Path(path)
    # No model card here: generating one may look the base model up on the Hub (from every worker of a
    # cluster, each checkpoint); the final model folder gets beeray's card (artifacts.model_card).
    model.save(str(path / MODEL_DIR), create_model_card=False)
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    (path / "state.json").write_text(json.dumps(state.__dict__, indent=1))


def load_checkpoint(path: Path, model, optimizer) -> TrainState:
    """Restore weights and optimizer state in place; returns where to continue."""
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    saved = SentenceTransformer(str(path / MODEL_DIR), device="cpu")
    model.load_state_dict(saved.state_dict())
    # weights_only: tensors and plain containers only, never arbitrary objects
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    return read_state(path)


def read_state(path: Path) -> TrainState:
    """The TrainState of a checkpoint folder, without loading the model."""
    return TrainState(**json.loads((Path(path) / "state.json").read_text()))


def resolve_resume(out: str | Path, state: str, resume: bool | str, what: str = "run") -> bool:
    """The plain --resume switch for `resume` = True, False or "auto".

    "auto" (a job that may be submitted again, e.g. a retried KubeRay RayJob): True when `out` holds a
    started `what` (its Ray state folder `state` exists), False when it holds none; the caller then
    goes through --resume's own path (beeray.files.prepare_run_dir), which refuses a run started
    with another config, or starts a new one.
    """
    if resume != "auto":
        return bool(resume)
    from beeray import files

    folder = str(out) if files.is_url(out) else Path(out).expanduser().resolve()
    started = files.remote_exists(folder, state) if files.is_url(out) else (folder / state).exists()
    news = f"{folder} holds a {what}: resuming it" if started else f"no {what} in {folder} yet: starting one"
    print(f"beeray: --resume auto: {news}", flush=True)
    return started
