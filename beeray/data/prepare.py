"""Load -> preprocess -> split -> write a prepared-data folder, atomically and idempotently.

The folder is written into a hidden temp folder beside the output and renamed into place at the
end, so a failure never leaves a half-written prepared set. A fingerprint of the inputs (file
contents, not paths: moving the data keeps it valid) and options is stored in stats.json; running
again with the same fingerprint is a no-op, a different one is refused unless `force`.
"""

from __future__ import annotations

import logging
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from beeray.version import __version__
from beeray.files import staged_dir, write_json, write_text
from beeray.data.loaders import DATASETS, GenericColumns, RawDataset, load_dataset
from beeray.data.prepared import SPLIT_ITEMS, split_digest
from beeray.data.preprocess import Processed, combine, preprocess
from beeray.data.splits import Split, item_split, time_split
from beeray.errors import BeerayError

log = logging.getLogger(__name__)

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
                synthetic_size: tuple[int, int, int] | None = None, split_items: Path | None = None) -> str:
    doc = {"format": FORMAT_VERSION, "dataset": dataset, "options": asdict(options),
           "columns": asdict(columns) if columns else None, "synthetic_seed": synthetic_seed, "files": {}}
    if split_items is not None:  # absent for drawn splits, so their fingerprints are unchanged
        doc["split_items"] = _file_digest(split_items)
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
    """Write every file of the prepared folder into `tmp` (which must exist and be empty); the split's
    digest (read back from the files written) goes into split.json and stats["split"]."""
    _write_items(tmp / "items.parquet", data)
    _write_users(tmp / "users.parquet", data)
    _write_lists(tmp / "train.parquet", split.train, ("items",))
    _write_lists(tmp / "train_full.parquet", split.train_full, ("items",))
    _write_lists(tmp / "val.parquet", split.val.frame, ("source", "target"))
    _write_lists(tmp / "test.parquet", split.test.frame, ("source", "target"))
    doc = split.to_json()
    write_json(tmp / "split.json", doc)
    doc["digest"] = stats["split"]["digest"] = split_digest(tmp)
    write_json(tmp / "split.json", doc)
    if split.kind == "item":  # a time split has no cold items: its data and fractions define it
        write_split_items(tmp / SPLIT_ITEMS, data, split, doc["digest"])
    # stats.json last: its presence marks a complete folder.
    write_json(tmp / "stats.json", stats)


def write_split_items(path: Path, data: Processed, split: Split, digest: str) -> None:
    """The cold items as ids, sorted (`beeray prepare --split-items` reads this back)."""
    ids = data.items["item_id"].astype(str).to_numpy()
    lines = [f"# beeray split items: {split.kind} split, digest {digest}",
             "# one cold item a line: val|test, a tab, the item id (beeray prepare --split-items FILE)"]
    for which, items in (("val", split.val_items), ("test", split.test_items)):
        lines += [f"{which}\t{i}" for i in sorted(ids[np.asarray(items, dtype=np.int64)])]
    write_text(path, "\n".join(lines) + "\n")


def read_split_items(path: Path, item_ids: pd.Series) -> tuple[list[int], list[int]]:
    """(val, test) item indices of the ids listed in a split-items file; one line naming the file and
    line for anything that is not a known item of `item_ids` (the preprocessed catalog) or is listed twice."""
    index = {str(i): n for n, i in enumerate(item_ids.astype(str))}
    given: dict[str, list[int]] = {"val": [], "test": []}
    seen: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BeerayError(f"{path}: cannot read the split items ({exc})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        which, _, item = line.rstrip("\r").partition("\t")
        if which not in given or not item:
            raise BeerayError(f"{path} line {number}: expected 'val' or 'test', a tab and an item id; got {line!r}")
        if item not in index:
            raise BeerayError(f"{path} line {number}: item {item!r} is not in the catalog after preprocessing "
                              f"({len(index)} items)")
        if item in seen:
            raise BeerayError(f"{path} line {number}: item {item!r} already listed on line {seen[item]}")
        seen[item] = number
        given[which].append(index[item])
    if not given["val"] or not given["test"]:
        raise BeerayError(f"{path}: lists {len(given['val'])} validation and {len(given['test'])} test items; "
                          "a split needs both")
    return given["val"], given["test"]


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
            synthetic_size: tuple[int, int, int] | None = None, quiet: bool = False,
            split_items: str | Path | None = None) -> PrepareResult:
    """Prepare `dataset` into folder `out` (see docs/data.md for the layout and the split protocol).

    `synthetic_size` = (users, items, interactions) generates the shop at that size instead of the
    demo's 640 users × 400 items. `split_items`: a split-items file (SPLIT_ITEMS of another prepared
    folder, or docs/splits/): its validation and test cold items instead of a draw."""
    if dataset not in DATASETS and dataset != "goodlens":
        raise BeerayError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS + ('goodlens',))})")
    if options.split not in ("item", "time"):
        raise BeerayError(f"unknown split {options.split!r} (choose item or time)")
    if split_items is not None:
        split_items = Path(split_items).expanduser()
        if options.split != "item":
            raise BeerayError("--split-items gives the cold items of an item split; it does not apply to --split time")
        if not split_items.is_file():
            raise BeerayError(f"{split_items}: --split-items file not found")
    out = Path(out).expanduser()
    in_paths: dict[str, Path | None] = (
        {f"input:{k}": Path(v) for k, v in (inputs or {}).items()} if dataset == "goodlens"
        else {"input": Path(source) if source else None, "items": Path(items) if items else None})
    for key, p in in_paths.items():
        if p is not None and not p.expanduser().exists():
            raise BeerayError(f"{p}: --{key.split(':')[0]} path not found")
    uses_shop = dataset == "synthetic" or any(k.split("-")[0] == "synthetic" for k in (inputs or {}))
    fp = fingerprint(dataset, in_paths, options, columns, synthetic_seed if uses_shop else None,
                     synthetic_size if uses_shop else None, split_items)
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
        given = None if split_items is None else read_split_items(split_items, data.items["item_id"])
        split = item_split(data, options.val_items, options.test_items, options.seed, groups=groups, given=given)
    else:
        split = time_split(data, options.val_frac, options.test_frac)
    stats = build_stats(dataset, data, split, fp, options, in_paths)
    for w in data.warnings:
        if not quiet:
            log.warning(f"beeray prepare: warning: {w}")

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
    if sp.get("digest"):
        listed = f" (cold items listed in {SPLIT_ITEMS})" if sp.get("kind") == "item" else ""
        rows.append(("split digest", f"sha256:{sp['digest']}{listed}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
