"""Load -> preprocess -> split -> write a prepared-data folder, atomically and idempotently.

The folder is written into a hidden temp folder beside the output and renamed into place at the
end, so a failure never leaves a half-written prepared set. A fingerprint of the inputs (file
contents, not paths: moving the data keeps it valid) and options is stored in stats.json; running
again with the same fingerprint is a no-op, a different one is refused unless `force`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from beeray import __version__
from beeray.files import staged_dir, write_json
from beeray.data.loaders import DATASETS, GenericColumns, RawDataset, load_dataset
from beeray.data.preprocess import Processed, combine, preprocess
from beeray.data.splits import Split, item_split, time_split
from beeray.errors import BeerayError

# Bump when the folder layout or the preprocessing changes: old folders then count as different.
FORMAT_VERSION = 1
# Bump when goodlens's split changes (fingerprints of goodlens folders only).
GOODLENS_SPLIT = 2
# Files a loader may read implicitly next to the file the user named.
_SIBLINGS = ("movies.csv", "tags.csv", "item_text_descriptions.feather", "books.csv")


@dataclass(frozen=True)
class PrepareOptions:
    split: str = "item"  # "item" | "time"
    val_items: int | None = None  # None: min(2000, 10% of items)
    test_items: int | None = None
    seed: int = 42
    min_rating: float | None = 4.0
    min_user_interactions: int = 5
    val_frac: float = 0.2  # time split
    test_frac: float = 0.2


@dataclass
class PrepareResult:
    out: Path
    stats: dict
    up_to_date: bool  # True: the folder already held this exact prepared set; nothing written


# ---------------------------------------------------------------- fingerprint


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    files = [path] if path.is_file() else []
    files += [path.parent / s for s in _SIBLINGS if (path.parent / s).is_file() and path.parent / s != path]
    if path.name.endswith(".inter.json"):
        files += [p for p in [path.with_name(path.name.replace(".inter.json", ".item.json"))] if p.is_file()]
    return files


def _file_digest(path: Path) -> str:
    from tqdm import tqdm

    h = hashlib.sha256()
    size = path.stat().st_size
    # Only big inputs (ML-20M, full Goodbooks) take long enough to deserve a bar.
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"hashing {path.name}",
                                      disable=size < (256 << 20), leave=False) as bar:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def fingerprint(dataset: str, inputs: dict[str, Path | None], options: PrepareOptions,
                columns: GenericColumns | None = None, synthetic_seed: int | None = None,
                synthetic_size: tuple[int, int, int] | None = None) -> str:
    doc = {"format": FORMAT_VERSION, "dataset": dataset, "options": asdict(options),
           "columns": asdict(columns) if columns else None, "synthetic_seed": synthetic_seed, "files": {}}
    if synthetic_size is not None:  # absent for the demo shop, so its fingerprint is unchanged
        doc["synthetic_size"] = list(synthetic_size)
    if dataset == "goodlens":
        # 2: each part draws its own cold items as its single-dataset split would (docs/data.md); folders
        # of the joint draw before it count as different. Absent for single datasets: theirs are unchanged.
        doc["goodlens_split"] = GOODLENS_SPLIT
    if synthetic_seed is not None:
        from beeray.data.synthetic import SHOP_VERSION

        doc["shop_version"] = SHOP_VERSION
    for key, path in sorted(inputs.items()):
        if path is None:
            continue
        doc["files"][key] = [[p.name, _file_digest(p)] for p in _files_of(Path(path).expanduser())]
    blob = json.dumps(doc, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- writing


def _list_array(lists, value_type: pa.DataType) -> pa.Array:
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int32, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    np_type = np.int32 if value_type == pa.int32() else np.int64
    values = np.concatenate([np.asarray(x, dtype=np_type) for x in lists]) if len(lists) else np.array([], np_type)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


def _write_lists(path: Path, frame: pd.DataFrame, cols: tuple[str, ...]) -> None:
    arrays = {"user": pa.array(frame["user"].to_numpy().astype(np.int32), type=pa.int32())}
    for c in cols:
        arrays[c] = _list_array(list(frame[c]), pa.int32())
    pq.write_table(pa.table(arrays), path)


def _write_items(path: Path, data: Processed) -> None:
    cols = {"item_id": pa.array(data.items["item_id"].astype(str).tolist(), type=pa.string()),
            "text": pa.array(data.items["text"].astype(str).tolist(), type=pa.string())}
    if "dataset" in data.items.columns:
        cols["dataset"] = pa.array(data.items["dataset"].astype(str).tolist(), type=pa.string())
    pq.write_table(pa.table(cols), path)


def _write_users(path: Path, data: Processed) -> None:
    df = data.interactions  # sorted by user, then time
    user = df["user"].to_numpy()
    _, starts = np.unique(user, return_index=True)
    items = np.split(df["item"].to_numpy().astype(np.int32), starts[1:])
    cols = {"user_id": pa.array(data.users["user_id"].astype(str).tolist(), type=pa.string()),
            "items": _list_array(items, pa.int32())}
    if data.has_timestamps and not data.order_only:
        cols["timestamps"] = _list_array(np.split(df["timestamp"].to_numpy(), starts[1:]), pa.int64())
    else:  # positions are not timestamps: null, as the contract says for sources without a clock
        cols["timestamps"] = pa.nulls(len(items), type=pa.list_(pa.int64()))
    if "dataset" in data.users.columns:
        cols["dataset"] = pa.array(data.users["dataset"].astype(str).tolist(), type=pa.string())
    pq.write_table(pa.table(cols), path)


def write_prepared(tmp: Path, data: Processed, split: Split, stats: dict) -> None:
    """Write every file of the prepared folder into `tmp` (which must exist and be empty)."""
    _write_items(tmp / "items.parquet", data)
    _write_users(tmp / "users.parquet", data)
    _write_lists(tmp / "train.parquet", split.train, ("items",))
    _write_lists(tmp / "train_full.parquet", split.train_full, ("items",))
    _write_lists(tmp / "val.parquet", split.val.frame, ("source", "target"))
    _write_lists(tmp / "test.parquet", split.test.frame, ("source", "target"))
    write_json(tmp / "split.json", split.to_json())
    # stats.json last: its presence marks a complete folder.
    write_json(tmp / "stats.json", stats)


def _existing_fingerprint(out: Path) -> str | None:
    """None if `out` is absent or empty; its fingerprint if it is a prepared folder; else BeerayError."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise BeerayError(f"{out}: output exists and is not a folder")
    if not any(out.iterdir()):
        return None
    stats = out / "stats.json"
    if not stats.is_file():
        raise BeerayError(f"{out}: output folder exists and is not a prepared-data folder (no stats.json); "
                          "choose another --out")
    try:
        return str(json.loads(stats.read_text(encoding="utf-8")).get("fingerprint", ""))
    except json.JSONDecodeError:
        return ""


# ---------------------------------------------------------------- the pipeline


def build_stats(dataset: str, data: Processed, split: Split, fp: str, options: PrepareOptions,
                inputs: dict[str, Path | None]) -> dict:
    stats = {"dataset": dataset, **data.stats(), "dropped": data.dropped, "warnings": data.warnings,
             "split": split.summary(), "fingerprint": fp, "beeray_version": __version__,
             "format": FORMAT_VERSION, "options": asdict(options),
             "inputs": {k: str(v) for k, v in inputs.items() if v is not None}}
    if split.per_dataset:
        for d, info in split.per_dataset.items():
            per = stats.setdefault("per_dataset", {}).setdefault(d, {})
            if "val_items" in info:  # item split: the part's own cold items
                per["val_items"] = len(info["val_items"])
                per["test_items"] = len(info["test_items"])
            for key in ("val_users", "test_users", "val_excluded_users", "test_excluded_users"):
                per[key] = info.get(key, 0)
    return stats


def _load(dataset: str, source: Path | None, items: Path | None, inputs: dict[str, Path] | None,
          columns: GenericColumns | None, synthetic_seed: int,
          synthetic_size: tuple[int, int, int] | None = None) -> RawDataset:
    if dataset == "goodlens":
        if not inputs:
            raise BeerayError("goodlens needs --input NAME=PATH for each dataset, e.g. "
                              "--input goodbooks=data/goodbooks --input movielens=data/ml-20m")
        raws = {}
        for name, path in inputs.items():
            kind = name.split("-")[0] if name not in DATASETS else name
            if kind not in DATASETS:
                raise BeerayError(f"goodlens: unknown dataset kind {name!r} in --input {name}=... "
                                  f"(use one of {', '.join(DATASETS)})")
            raws[name] = load_dataset(kind, path, None, columns, seed=synthetic_seed, size=synthetic_size)
        return combine(raws)
    return load_dataset(dataset, source, items, columns, seed=synthetic_seed, size=synthetic_size)


def prepare(dataset: str, out: str | Path, source: str | Path | None = None, items: str | Path | None = None,
            *, inputs: dict[str, str | Path] | None = None, options: PrepareOptions = PrepareOptions(),
            columns: GenericColumns | None = None, force: bool = False, synthetic_seed: int = 0,
            synthetic_size: tuple[int, int, int] | None = None, quiet: bool = False) -> PrepareResult:
    """Prepare `dataset` into folder `out` (see docs/data.md for the layout and the split protocol).

    `synthetic_size` = (users, items, interactions) generates the shop at that size instead of the
    demo's 640 users × 400 items."""
    if dataset not in DATASETS and dataset != "goodlens":
        raise BeerayError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS + ('goodlens',))})")
    if options.split not in ("item", "time"):
        raise BeerayError(f"unknown split {options.split!r} (choose item or time)")
    out = Path(out).expanduser()
    in_paths: dict[str, Path | None] = (
        {f"input:{k}": Path(v) for k, v in (inputs or {}).items()} if dataset == "goodlens"
        else {"input": Path(source) if source else None, "items": Path(items) if items else None})
    for key, p in in_paths.items():
        if p is not None and not p.expanduser().exists():
            raise BeerayError(f"{p}: --{key.split(':')[0]} path not found")
    uses_shop = dataset == "synthetic" or any(k.split("-")[0] == "synthetic" for k in (inputs or {}))
    fp = fingerprint(dataset, in_paths, options, columns, synthetic_seed if uses_shop else None,
                     synthetic_size if uses_shop else None)
    existing = _existing_fingerprint(out)
    if existing is not None and not force:
        if existing == fp:
            return PrepareResult(out, json.loads((out / "stats.json").read_text(encoding="utf-8")), True)
        raise BeerayError(f"{out}: holds a different prepared set (fingerprint {existing or '?'}, "
                          f"this one {fp}); use --force to overwrite or choose another --out")

    raw = _load(dataset, Path(source) if source else None, Path(items) if items else None,
                {k: Path(v) for k, v in (inputs or {}).items()}, columns, synthetic_seed, synthetic_size)
    data = preprocess(raw, options.min_rating, options.min_user_interactions)
    if options.split == "item":
        groups = data.items["group"].to_numpy() if "group" in data.items.columns else None
        split = item_split(data, options.val_items, options.test_items, options.seed, groups=groups)
    else:
        split = time_split(data, options.val_frac, options.test_frac)
    stats = build_stats(dataset, data, split, fp, options, in_paths)
    for w in data.warnings:
        if not quiet:
            print(f"beeray prepare: warning: {w}", file=sys.stderr)

    with staged_dir(out) as tmp:
        write_prepared(tmp, data, split, stats)
    return PrepareResult(out, stats, False)


def prepare_synthetic(out: str | Path, seed: int = 0, force: bool = False,
                      options: PrepareOptions = PrepareOptions()) -> PrepareResult:
    """The synthetic shop, prepared: the demo data and the fixture tests use."""
    return prepare("synthetic", out, options=options, force=force, synthetic_seed=seed, quiet=True)


def format_stats(stats: dict) -> str:
    """A small human-readable table of a prepared set."""
    sp = stats.get("split", {})
    rows = [("dataset", stats.get("dataset")), ("users", f"{stats['users']:,}"), ("items", f"{stats['items']:,}"),
            ("interactions", f"{stats['interactions']:,}"), ("density", f"{stats['density']:.5f}")]
    for d, s in stats.get("per_dataset", {}).items():
        cold = f"; cold items val {s['val_items']:,}, test {s['test_items']:,}" if "test_items" in s else ""
        rows.append((f"  {d}", f"{s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions{cold}"))
    rows.append(("split", sp.get("kind")))
    if sp.get("kind") == "item":
        rows.append(("cold items", f"val {sp['val_items']:,}, test {sp['test_items']:,}"))
    rows.append(("train", f"{sp.get('train_users', 0):,} users, {sp.get('train_interactions', 0):,} interactions"))
    rows.append(("train_full", f"{sp.get('train_full_users', 0):,} users, "
                               f"{sp.get('train_full_interactions', 0):,} interactions"))
    for name in ("val", "test"):
        e = sp.get(name, {})
        rows.append((name, f"{e.get('users', 0):,} users ({e.get('excluded_users', 0):,} excluded: no source), "
                           f"{e.get('target_interactions', 0):,} target interactions"))
    dropped = {k: v for k, v in stats.get("dropped", {}).items() if v}
    if dropped:
        rows.append(("dropped", ", ".join(f"{k}={v:,}" for k, v in dropped.items())))
    rows.append(("fingerprint", stats.get("fingerprint")))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
