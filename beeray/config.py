"""Typed configuration: a dataclass per job, read from YAML, overridden from the command line."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from beeray.errors import BeerayError
from beeray.models import DEFAULT_MODEL


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's Goodbooks settings except the model."""

    data: str = ""  # prepared-data folder (beeray prepare)
    out: str = "runs/beeray"  # where the model, metrics, plots and Ray checkpoints go
    model: str = DEFAULT_MODEL  # hub name or local SentenceTransformer folder
    lr: float = 1e-5
    weight_decay: float = 0.0
    epochs: int = 5
    batch_size: int = 1024  # users per global step (split across workers in `items` mode)
    m: int = 10_000  # items per step: the batch's positives plus uniform negatives
    max_seq_length: int = 384
    encode_batch_size: int = 200  # texts per encoder chunk in both passes
    seed: int = 42
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto = bf16 on GPUs that support it, off on CPU
    # Dropout on attention probabilities during training; None keeps the model's own (the paper's
    # setting). 0 makes a CPU step ~1.6x faster (the fused attention kernel has no dropout).
    attention_dropout: float | None = None
    full_train: bool = False  # also train on the validation cold items (the final model)
    eval_every_epoch: bool = True  # validation metrics after each epoch
    evaluate_test: bool = True  # test metrics of the final model (off inside tuning trials)
    # Ray
    parallel: Literal["items", "data"] = "items"
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1
    gpus_per_worker: float = 1.0
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at the end of each epoch only
    keep_checkpoints: int = 2
    max_failures: int = 0  # worker-group restarts from the last checkpoint
    address: str | None = None  # Ray cluster address; None = local Ray (or RAY_ADDRESS)
    trust_remote_code: bool = False
    # Fault-tolerance drill: rank 0 raises at this global step unless the run was restored
    # from a checkpoint (0 = never). Shows that max_failures / --resume recover.
    crash_at_step: int = 0

    def validate(self) -> "TrainConfig":
        positive = ["lr", "epochs", "batch_size", "m", "max_seq_length", "encode_batch_size", "num_workers",
                    "cpus_per_worker", "keep_checkpoints"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise BeerayError(f"config: {name} must be > 0, got {getattr(self, name)!r}")
        for name in ["checkpoint_every", "max_failures", "weight_decay"]:
            if getattr(self, name) < 0:
                raise BeerayError(f"config: {name} must be >= 0, got {getattr(self, name)!r}")
        if self.parallel == "items" and self.batch_size < self.num_workers:
            raise BeerayError(f"config: batch_size {self.batch_size} < num_workers {self.num_workers}")
        return self

    # The only fields --resume may change: where the run lives, how it is supervised, and how long
    # it runs (every draw is keyed by (seed, epoch, step), so more epochs continue the same
    # trajectory). Any other change (lr, m, encode_batch_size, amp, attention_dropout, ...) would
    # silently make a different run, so a checkpoint is only continued when all of them agree.
    RESUME_MAY_CHANGE = ("out", "address", "max_failures", "keep_checkpoints", "checkpoint_every",
                         "eval_every_epoch", "evaluate_test", "crash_at_step", "epochs")

    def resume_conflicts(self, saved: dict) -> list[str]:
        """`key: old -> new` for every setting that differs from the checkpoint's config."""
        now = to_dict(self)
        keys = [k for k in now if k not in self.RESUME_MAY_CHANGE and saved.get(k) != now[k]]
        return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in keys]


def _coerce(name: str, tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    if origin is Literal:
        if value not in args:
            raise BeerayError(f"{where}: {name} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        tp = next(a for a in args if a is not type(None))
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if tp is float and isinstance(value, str):
            return float(value)  # YAML reads 1e-5 as a string
        return tp(value)
    except (TypeError, ValueError):
        raise BeerayError(f"{where}: {name} must be {tp.__name__}, got {value!r}") from None


def from_dict(cls, values: dict, where: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BeerayError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**{k: _coerce(k, hints[k], v, where) for k, v in values.items()})


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BeerayError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BeerayError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise BeerayError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` pairs from the command line; values are parsed as YAML scalars, never evaluated."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BeerayError(f"override {pair!r} is not key=value")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def train_config(path: str | None = None, overrides: dict | None = None) -> TrainConfig:
    values = load_yaml(path) if path else {}
    values = dict(values.get("train", values))  # a tune config nests the training part under `train:`
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(TrainConfig, values, str(path or "command line")).validate()


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


__all__ = ["TrainConfig", "train_config", "from_dict", "load_yaml", "parse_overrides", "to_dict"]
