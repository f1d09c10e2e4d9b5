"""Typed configuration: a dataclass per job, read from YAML, overridden from the command line.

Every config (a training run, a search, one searched hyperparameter, the scheduler) is a
dataclass parsed by one function, `from_dict`, which coerces each value to its field's type
(numbers written as strings, `Literal` choices, nested configs, lists) and reports any problem as
one line naming the file, the key and the value. Each class's `validate()` holds the checks that
types cannot express. Values are data: nothing is ever evaluated.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from beeray import files
from beeray.errors import BeerayError
from beeray.metrics import VAL_METRICS
from beeray.models import DEFAULT_MODEL


SECTIONS = {
    "model": "the encoder and how it reads and saves",
    "optimizer": "the optimizer, its schedule, and how long to train",
    "data": "what the run reads and what each step looks at",
    "scaling": "Ray, workers, devices, memory and fault tolerance",
    "tracking": "where the run is written and logged",
}
_NEW = object()  # a key's `before`: the key existed from the first saved runs


def setting(default: Any = dataclasses.MISSING, *, section: str, doc: str, factory: Any = dataclasses.MISSING,
            bound: str | None = None, resume: bool = False, searchable: bool = True, before: Any = _NEW):
    """A TrainConfig key and its rules, kept with it: its `section` (docs/config.md groups the keys by
    them; a YAML file may nest them so), `bound` ("> 0" or ">= 0", checked by validate), `resume` (a
    --resume may change it), `searchable` (a Tune search may vary it) and `before` (what its absence
    meant in a run saved before the key existed)."""
    assert section in SECTIONS, section
    meta = {"section": section, "doc": doc, "bound": bound, "resume": resume, "searchable": searchable,
            "before": before}
    return field(default=default, default_factory=factory, metadata=meta)


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's Goodbooks settings except the model. Every key, its
    section and its rules: docs/config.md (generated from these fields: `markdown_reference`)."""

    # model
    model: str = setting(DEFAULT_MODEL, section="model", doc="hub name or local SentenceTransformer folder")
    prompt: str | None = setting(
        None, section="model", before=None,
        doc="text put before every item text (e5: 'passage: ', nomic: 'search_document: ') in training, saved as "
            "the model's default prompt so every later encode applies it too; none: the model's own default")
    max_seq_length: int = setting(384, section="model", bound="> 0", doc="tokens per item text")
    attention_dropout: float | None = setting(
        None, section="model",
        doc="dropout on attention probabilities in training; none keeps the model's own (the paper's); 0 makes a "
            "CPU step ~1.7x faster (the fused attention kernel has no dropout)")
    amp: Literal["auto", "bf16", "fp16", "off"] = setting(
        "auto", section="model",
        doc="auto = bf16 autocast on GPUs with native bf16 (compute capability >= 8.0), else fp32; fp16 = autocast "
            "with loss scaling (older GPUs); off = fp32 (beeray/precision.py)")
    save_dtype: Literal["float32", "float16", "bfloat16"] = setting(
        "float32", section="model", resume=True,
        doc="precision of the saved model folder (training keeps float32 weights); the final metrics score the "
            "saved model, rounding included")
    trust_remote_code: bool = setting(False, section="model", doc="let the model run its own code")
    # optimizer
    lr: float = setting(1e-5, section="optimizer", bound="> 0", doc="learning rate (the paper's: 1e-5)")
    weight_decay: float = setting(0.0, section="optimizer", bound=">= 0", doc="decoupled weight decay")
    optimizer: Literal["adamw", "nadam"] = setting(
        "adamw", section="optimizer", before="adamw",
        doc="adamw (torch's AdamW, eps 1e-8) | nadam (the reference's Keras 3 Nadam: eps 1e-7, its momentum "
            "schedule, weight decay decoupled; docs/method.md)")
    schedule: Literal["constant", "linear", "cosine"] = setting(
        "constant", section="optimizer", before="constant",
        doc="learning rate per optimizer step: constant (the paper's) | linear | cosine (decay to 0 at the "
            "run's last step)")
    warmup_steps: int = setting(0, section="optimizer", bound=">= 0", before=0,
                                doc="steps of linear warm-up from 0 to lr first (any schedule)")
    epochs: int = setting(5, section="optimizer", bound="> 0", resume=True,
                          doc="passes over the training users (more may be added on --resume under a constant "
                              "schedule: every draw is keyed by seed, epoch and step)")
    keep: Literal["best", "last"] = setting(
        "best", section="optimizer", resume=True, before="last",
        doc="which weights the run saves: best = the trained epoch with the highest validation NDCG@100 (the "
            "base model is never kept), last = the last epoch run; without validation: the last")
    patience: int = setting(0, section="optimizer", bound=">= 0", resume=True, before=0,
                            doc="stop after this many validated epochs in a row without a better validation "
                                "NDCG@100; 0 = never")
    # data
    data: str = setting("", section="data", searchable=False, doc="prepared-data folder (beeray prepare) or its URL")
    batch_size: int = setting(1024, section="data", bound="> 0",
                              doc="users per global step (split across workers in items mode)")
    m: int = setting(10_000, section="data", bound="> 0",
                     doc="items per step: the batch's positives plus uniform negatives")
    seed: int = setting(42, section="data", doc="seed of shuffles, negatives and dropout")
    full_train: bool = setting(False, section="data", searchable=False,
                               doc="also train on the validation cold items (the final model; no validation)")
    eval_every_epoch: bool = setting(True, section="data", resume=True, searchable=False,
                                     doc="validation metrics of the base model and after each epoch")
    evaluate_test: bool = setting(True, section="data", resume=True, searchable=False,
                                  doc="test metrics of the final model (off inside tuning trials)")
    batch_composition: Literal["joint", "per_dataset"] = setting(
        "joint", section="data", before="joint",
        doc="multi-dataset (goodlens) folders: joint = a step's users from any dataset, negatives from the joint "
            "catalog (the reference); per_dataset = each step's users and I_b from one dataset")
    dataset_weights: dict = setting(
        section="data", factory=dict, searchable=False, before={},
        doc="per_dataset only: dataset name -> weight w > 0 (default 1): its users are visited round(w * n) times "
            "an epoch")
    # scaling
    parallel: Literal["items", "data"] = setting("items", section="scaling",
                                                 doc="items (exact, the default) | data (docs/method.md)")
    num_workers: int = setting(1, section="scaling", bound="> 0", searchable=False, doc="Ray Train workers")
    use_gpu: bool = setting(False, section="scaling", searchable=False, doc="one GPU per worker")
    cpus_per_worker: int = setting(1, section="scaling", bound="> 0", searchable=False,
                                   doc="CPUs per worker (also torch threads on CPU)")
    gpus_per_worker: int = setting(1, section="scaling", searchable=False,
                                   doc="whole GPUs per worker with use_gpu (NCCL refuses two ranks on one GPU)")
    encode_batch_size: int = setting(200, section="scaling", bound="> 0",
                                     doc="texts per encoder chunk in both passes")
    activation_memory: float = setting(
        0.0, section="scaling", bound=">= 0",
        doc="GiB per worker of pass-1 graphs kept instead of re-encoded in pass 2 (same gradient, one forward "
            "less per kept chunk); 0 = none kept, the least memory")
    checkpoint_every: int = setting(0, section="scaling", bound=">= 0", resume=True,
                                    doc="steps between checkpoints; 0 = at the end of each epoch only")
    keep_checkpoints: int = setting(2, section="scaling", bound="> 0", resume=True, doc="checkpoints kept")
    max_failures: int = setting(0, section="scaling", bound=">= 0", resume=True, searchable=False,
                                doc="worker-group restarts from the last checkpoint")
    address: str | None = setting(None, section="scaling", resume=True, searchable=False,
                                  doc="Ray cluster address; none = local Ray (or RAY_ADDRESS)")
    # tracking
    out: str = setting("runs/beeray", section="tracking", resume=True, searchable=False,
                       doc="where the model, metrics, plots and Ray checkpoints go (a folder or s3://...)")
    tracking: Literal["mlflow", "none"] = setting("mlflow", section="tracking", resume=True, searchable=False,
                                                  doc="log the run to MLflow (beeray/tracking.py), or not")
    tracking_uri: str | None = setting(None, section="tracking", resume=True, searchable=False,
                                       doc="MLflow store or server; none = sqlite:///<parent of out>/mlflow.db")
    experiment: str = setting("beeray", section="tracking", resume=True, searchable=False,
                              doc="MLflow experiment name")

    def validate(self, where: str = "config", origins: dict[str, str] | None = None) -> "TrainConfig":
        """Check the values together; `origins`: the flag each key's value came from (--epochs, --set lr),
        named in the message instead of `where` (the config file)."""
        def at(*names: str) -> str:
            return next((origins[n] for n in names if origins and n in origins), where)

        for f in fields(self):
            value, bound = getattr(self, f.name), f.metadata["bound"]
            if bound and (value <= 0 if bound == "> 0" else value < 0):
                raise BeerayError(f"{at(f.name)}: {f.name} must be {bound}, got {value!r}")
        if self.use_gpu and self.gpus_per_worker < 1:
            raise BeerayError(f"{at('gpus_per_worker', 'use_gpu')}: gpus_per_worker must be a positive integer with "
                              f"use_gpu (each worker trains on a GPU of its own), got {self.gpus_per_worker!r}")
        for name, weight in self.dataset_weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight <= 0:
                raise BeerayError(f"{at('dataset_weights')}: dataset_weights.{name} must be a number > 0, "
                                  f"got {weight!r}")
        if self.dataset_weights and self.batch_composition != "per_dataset":
            raise BeerayError(f"{at('dataset_weights', 'batch_composition')}: dataset_weights needs "
                              "batch_composition: per_dataset (joint steps draw users from every dataset at once)")
        if self.patience and not self.validates:
            raise BeerayError(f"{at('patience', 'full_train', 'eval_every_epoch')}: patience needs validation after "
                              "every epoch (eval_every_epoch on, no full_train): it stops on validation NDCG@100")
        if self.parallel == "items" and self.batch_size < self.num_workers:
            raise BeerayError(f"{at('batch_size', 'num_workers')}: batch_size {self.batch_size} < num_workers "
                              f"{self.num_workers}")
        return self

    @property
    def validates(self) -> bool:
        """Whether the run scores validation after every epoch (what `keep: best` and `patience` need)."""
        return self.eval_every_epoch and not self.full_train

    # --resume may change only the keys marked `resume`: where the run lives, how it is supervised, and
    # how long it runs (every draw is keyed by (seed, epoch, step), so more epochs continue the same
    # trajectory; not under a linear or cosine schedule, whose decay ends at the configured last step:
    # resume_conflicts refuses it there). Any other change (lr, m, encode_batch_size, amp, ...) would
    # silently make a different run, so a checkpoint is only continued when all of them agree.

    def resume_conflicts(self, saved: dict) -> list[str]:
        """`key: old -> new` for every setting that differs from the checkpoint's config."""
        now = to_dict(self)
        saved = {**ADDED_KEYS, **saved}
        free = set(RESUME_MAY_CHANGE)
        if self.schedule != "constant":
            free.discard("epochs")  # the decay's horizon: more epochs would make another schedule
        keys = [k for k in now if k not in free and saved.get(k) != now[k]]
        return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in keys]


# ---------------------------------------------------------------- a search (beeray tune)

TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig))
# The rules, read from each key's `setting`: what a --resume may change; what a key's absence meant in a
# run saved before it existed; what a trial may not change (where data and results live, what a trial may
# see, never test items, and the resources per trial, which come from the train section).
RESUME_MAY_CHANGE = frozenset(f.name for f in fields(TrainConfig) if f.metadata["resume"])
ADDED_KEYS = {f.name: f.metadata["before"] for f in fields(TrainConfig) if f.metadata["before"] is not _NEW}
FIXED_KEYS = frozenset(f.name for f in fields(TrainConfig) if not f.metadata["searchable"])
SECTION_OF = {f.name: f.metadata["section"] for f in fields(TrainConfig)}


def flat_keys(values: dict, where: str) -> dict:
    """TrainConfig keys from a YAML mapping that may group them in sections (`optimizer: {lr: 1e-5}`),
    flat as TrainConfig holds them. A mapping under a section's name is that section (`data: {m: 512}`;
    a string `data:` is the folder); a key under the wrong section, or given twice, is refused in one line."""
    flat: dict = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            for inner, inner_value in value.items():
                if SECTION_OF.get(inner, key) != key:
                    raise BeerayError(f"{where}: {key}.{inner}: {inner} belongs to section {SECTION_OF[inner]} "
                                      f"(docs/config.md)")
                if inner in flat or inner in values and not isinstance(values[inner], dict):
                    raise BeerayError(f"{where}: {inner} is given twice (in section {key} and elsewhere)")
                flat[inner] = inner_value
        elif key in flat:
            raise BeerayError(f"{where}: {key} is given twice (in a section and at the top level)")
        else:
            flat[key] = value
    return flat


def markdown_reference() -> str:
    """docs/config.md's reference tables, from the keys themselves (tests/test_config.py keeps the file equal)."""
    out = []
    for section, what in SECTIONS.items():
        out += [f"### {section}: {what}", "", "| key | default | rules | what it is |", "|---|---|---|---|"]
        for f in fields(TrainConfig):
            if f.metadata["section"] != section:
                continue
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            rules = [r for r in (f.metadata["bound"], "may change on --resume" if f.metadata["resume"] else None,
                                 None if f.metadata["searchable"] else "not searchable") if r]
            doc = f.metadata["doc"].replace("|", "\\|")  # a table cell
            out.append(f"| `{f.name}` | `{default!r}` | {', '.join(rules) or '-'} | {doc} |")
        out.append("")
    return "\n".join(out)
SPEC_KEYS = {"loguniform": {"low", "high"}, "uniform": {"low", "high"}, "randint": {"low", "high"},
             "choice": {"values"}}


@dataclass(frozen=True)
class SearchSpec:
    """One searched hyperparameter. randint draws from [low, high) like Ray Tune and numpy."""

    name: str
    type: Literal["loguniform", "uniform", "randint", "choice"]
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()

    @classmethod
    def parse(cls, name: str, raw: Any, base: TrainConfig, where: str) -> "SearchSpec":
        where = f"{where}: search.space.{name}"
        if name not in TRAIN_KEYS:
            raise BeerayError(f"{where}: {name!r} is not a training config key; known: {', '.join(sorted(TRAIN_KEYS))}")
        if name in FIXED_KEYS:
            raise BeerayError(f"{where}: {name!r} cannot be searched (set it in the train section)")
        if not isinstance(raw, dict):
            raise BeerayError(f"{where}: expected a mapping like {{type: loguniform, low: 1e-6, high: 1e-3}}")
        kind = raw.get("type")
        if kind not in SPEC_KEYS:
            raise BeerayError(f"{where}: unknown type {kind!r}; use one of {', '.join(SPEC_KEYS)}")
        extra = sorted(set(raw) - SPEC_KEYS[kind] - {"type"})
        if extra:
            raise BeerayError(f"{where}: unexpected key(s) {', '.join(extra)} for type {kind}")
        spec = from_dict(cls, {"name": name, **raw}, where)
        if kind == "choice":
            # Coerce through the config's own types: [256, 512] for an int, "1e-5" for a float, ...
            hint = typing.get_type_hints(TrainConfig)[name]
            spec = dataclasses.replace(spec, values=tuple(_coerce(name, hint, v, where.rsplit(".", 1)[0])
                                                          for v in spec.values))
        return spec.validate(base, where)

    def validate(self, base: TrainConfig, where: str) -> "SearchSpec":
        hint = typing.get_type_hints(TrainConfig)[self.name]
        if self.type == "choice":
            if not self.values:
                raise BeerayError(f"{where}: choice needs a non-empty list `values`")
            if len(set(self.values)) != len(self.values):
                raise BeerayError(f"{where}: choice values repeat: {list(self.values)}")
        else:
            if self.low is None or self.high is None:
                raise BeerayError(f"{where}: {self.type} needs `low` and `high`")
            integer = self.type == "randint"
            for bound in ("low", "high"):
                value = getattr(self, bound)
                if integer and not float(value).is_integer():
                    raise BeerayError(f"{where}.{bound}: expected an integer, got {value!r}")
            if self.low >= self.high:
                raise BeerayError(f"{where}: low ({self.low}) must be < high ({self.high})"
                                  + (" (randint: high is exclusive)" if integer else ""))
            if self.type == "loguniform" and self.low <= 0:
                raise BeerayError(f"{where}: loguniform needs low > 0, got {self.low}")
            if integer and hint is not int:
                raise BeerayError(f"{where}: randint draws integers but {self.name} is not an integer setting")
            if not integer and hint is not float:
                raise BeerayError(f"{where}: {self.type} draws floats but {self.name} is "
                                  f"{'an integer (use randint or choice)' if hint is int else 'not a number'}")
        for value in self.extremes():  # every value a trial may get must make a valid config
            try:
                dataclasses.replace(base, **{self.name: value}).validate()
            except BeerayError as exc:
                raise BeerayError(f"{where}: value {value!r} is not valid ({exc})") from None
        return self

    def extremes(self) -> list:
        """The values a trial can get at the edges of the range (all of them for a choice)."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "randint":
            return [int(self.low), int(self.high) - 1]
        return [float(self.low), float(self.high)]

    @property
    def log_scale(self) -> bool:
        return self.type == "loguniform"


@dataclass(frozen=True)
class SchedulerConfig:
    type: Literal["asha", "none"] = "asha"
    grace_period: int = 1
    reduction_factor: int = 2

    @classmethod
    def from_scalar(cls, value: Any) -> "SchedulerConfig":
        """`scheduler: none` / `scheduler: asha` (or false / null) as a shorthand for the mapping."""
        if value in (None, False, "none"):
            return cls(type="none")
        if value == "asha":
            return cls()
        raise ValueError(value)

    def validate(self, where: str) -> "SchedulerConfig":
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise BeerayError(f"{where}: search.scheduler needs grace_period >= 1 and reduction_factor >= 2")
        return self


@dataclass(frozen=True)
class SearchConfig:
    space: dict = field(default_factory=dict)  # name -> SearchSpec, parsed by TuneConfig.parse
    num_samples: int = 8
    max_concurrent_trials: int = 2
    metric: str = "val_ndcg@100"
    mode: Literal["max", "min"] = "max"
    seed: int = 0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def validate(self, where: str) -> "SearchConfig":
        if self.num_samples < 1:
            raise BeerayError(f"{where}: search.num_samples must be >= 1, got {self.num_samples}")
        if self.max_concurrent_trials < 1:
            raise BeerayError(f"{where}: search.max_concurrent_trials must be >= 1, got {self.max_concurrent_trials}")
        if self.metric not in VAL_METRICS:
            raise BeerayError(f"{where}: search.metric {self.metric!r} is not a reported validation metric; "
                              f"use one of {', '.join(VAL_METRICS)}")
        self.scheduler.validate(where)
        return self


@dataclass
class TuneConfig:
    """A search: the fixed training settings (`train`) and what is searched and how (`search`)."""

    train: TrainConfig
    search: SearchConfig
    source: str = ""  # the YAML path, for messages

    @classmethod
    def parse(cls, values: dict, where: str) -> "TuneConfig":
        unknown = sorted(set(values) - {"train", "search"})
        if unknown:
            raise BeerayError(f"{where}: unknown top-level key(s) {', '.join(map(str, unknown))}; "
                              "expected train and search")
        search = values.get("search")
        if not isinstance(search, dict):
            raise BeerayError(f"{where}: missing `search:` section (space, num_samples, metric, ...)")
        raw_space = search.get("space")
        if not isinstance(raw_space, dict) or not raw_space:
            raise BeerayError(f"{where}: search.space is empty: name at least one hyperparameter to search")
        train_values = values.get("train") or {}
        if not isinstance(train_values, dict):
            raise BeerayError(f"{where}: `train` must be a mapping of TrainConfig keys")
        train_values = flat_keys(train_values, f"{where}: train")
        train = from_dict(TrainConfig, train_values, f"{where}: train").validate(f"{where}: train")
        if not train.data:
            raise BeerayError(f"{where}: train.data is not set (a folder made by `beeray prepare`)")
        space = {str(k): SearchSpec.parse(str(k), v, train, where) for k, v in raw_space.items()}
        settings = from_dict(SearchConfig, {**search, "space": space}, f"{where}: search", what="search")
        return cls(train=train, search=settings.validate(where), source=where)

    @property
    def space(self) -> list[SearchSpec]:
        return list(self.search.space.values())

    @property
    def max_epochs(self) -> int:
        spec = self.search.space.get("epochs")
        return int(max(spec.extremes())) if spec else self.train.epochs

    def to_json(self) -> dict:
        return {"train": to_dict(self.train),
                "search": {**dataclasses.asdict(self.search), "space": [dataclasses.asdict(s) for s in self.space]}}


# ---------------------------------------------------------------- parsing

def _field(where: str, name: str) -> str:
    """`file: name`, or `file: section.name` inside a section (`where` = "file: section")."""
    return f"{where}.{name}" if ": " in where else f"{where}: {name}"


def _choices(options) -> str:
    options = [str(o) for o in options]
    return " or ".join(options) if len(options) <= 2 else f"one of {', '.join(options[:-1])} or {options[-1]}"


def _coerce(name: str, tp: Any, value: Any, where: str) -> Any:
    """`value` as type `tp`; `where: name` starts the one-line message when it cannot be."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if isinstance(value, bool) and ("off" if not value else "on") in args:
            value = "off" if not value else "on"  # YAML 1.1 reads a bare off/on as a boolean
        if value not in args:
            raise BeerayError(f"{_field(where, name)} must be {_choices(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = tuple(a for a in args if a is not type(None))
        if set(kinds) == {float, int}:
            return _number(name, value, where)
        tp = kinds[0]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, _field(where, name))
        try:
            return tp.from_scalar(value)
        except (AttributeError, ValueError):
            raise BeerayError(f"{_field(where, name)} must be a mapping of {tp.__name__} keys, got {value!r}") from None
    if tp in (dict, tuple) or typing.get_origin(tp) in (dict, tuple):
        want = dict if (typing.get_origin(tp) or tp) is dict else (list, tuple)
        if not isinstance(value, want):
            raise BeerayError(f"{_field(where, name)} must be a {'mapping' if want is dict else 'list'}, got {value!r}")
        return value if want is dict else tuple(value)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if tp is float and isinstance(value, str):
            return float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
        return tp(value)
    except (TypeError, ValueError):
        raise BeerayError(f"{_field(where, name)} must be {tp.__name__}, got {value!r}") from None


def _number(name: str, value: Any, where: str) -> float | int:
    """A finite int or float; YAML's `1e-5` string is a number, a bool is not."""
    if isinstance(value, bool):
        raise BeerayError(f"{_field(where, name)}: expected a number, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        num = float(value)
    except (TypeError, ValueError):
        raise BeerayError(f"{_field(where, name)}: expected a number, got {value!r}") from None
    if not math.isfinite(num):
        raise BeerayError(f"{_field(where, name)}: expected a finite number, got {value!r}")
    return num


def from_dict(cls, values: dict, where: str, what: str = "", origins: dict[str, str] | None = None):
    """An instance of dataclass `cls` from a mapping: unknown keys and wrong types are errors, named by
    `where` (the file), or by the flag a key came from (`origins`: key -> "--epochs")."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BeerayError(f"{where}: unknown {what + ' ' if what else ''}key(s) {', '.join(map(str, unknown))}; "
                          f"known: {', '.join(sorted(known))}")
    return cls(**{k: _coerce(k, hints[k], v, (origins or {}).get(k, where)) for k, v in values.items()})


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BeerayError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BeerayError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
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


def train_config(path: str | None = None, overrides: dict | None = None,
                 origins: dict[str, str] | None = None) -> TrainConfig:
    """The TrainConfig of YAML file `path` with `overrides` on top; an error in a value names the flag it
    came from (`origins`: key -> flag, e.g. {"epochs": "--epochs", "lr": "--set lr"}), else the file."""
    values = load_yaml(path) if path else {}
    values = flat_keys(dict(values.get("train", values)), str(path))  # a tune config nests it under `train:`
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(given)
    where = str(path or "command line")
    origins = {k: flag for k, flag in (origins or {}).items() if k in given}
    return from_dict(TrainConfig, values, where, origins=origins).validate(where, origins)


def parse_tune_config(values: dict, where: str) -> TuneConfig:
    return TuneConfig.parse(values, where)


def absolute_paths(cfg: TuneConfig) -> TuneConfig:
    """Trials run in Ray's session directory: every path they get must be absolute. Relative folders
    are resolved against this process's working directory; object-storage URLs stay as given."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, data=files.absolute(cfg.train.data),
                                                              out=files.absolute(cfg.train.out)))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


__all__ = ["TrainConfig", "SearchSpec", "SchedulerConfig", "SearchConfig", "TuneConfig", "train_config",
           "parse_tune_config", "absolute_paths", "from_dict", "load_yaml", "parse_overrides", "to_dict"]
