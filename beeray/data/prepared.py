"""Reading a prepared-data folder (written by `beeray prepare`) into sparse matrices."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from beeray import files
from beeray.errors import BeerayError

FILES = ("items.parquet", "users.parquet", "split.json", "train.parquet", "train_full.parquet",
         "val.parquet", "test.parquet", "stats.json")
# The split's cold items as item ids, one `val|test<TAB>id` a line (beeray prepare writes it; `beeray
# prepare --split-items FILE` reads it back to reproduce the split; docs/splits/ holds the shared data's)
SPLIT_ITEMS = "split_items.tsv"
_LISTS = (("train", ("items",)), ("train_full", ("items",)), ("val", ("source", "target")),
          ("test", ("source", "target")))


def split_digest(root: str | Path) -> str:
    """SHA-256 naming a prepared folder's split: its kind, the sorted item and user ids, the sorted
    validation and test cold item ids, and each list file's (user id, item id) pairs (train, train_full,
    val and test sources and targets), as sorted pairs of the ids' ranks. Computed from the files, so
    it is the same on every machine and for any row order of the same split."""
    import hashlib

    root = Path(root)
    hint = "re-run beeray prepare --force"
    digest = hashlib.sha256(b"beeray split v1")

    def put(label: str, payload: bytes) -> None:
        digest.update(label.encode() + b"\0" + len(payload).to_bytes(8, "little") + payload)

    def ids_and_ranks(name: str, col: str) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray([str(x) for x in files.read_parquet(root / name, [col], hint=hint).column(col).to_pylist()])
        order = np.argsort(ids, kind="stable")
        rank = np.empty(len(ids), dtype=np.int64)
        rank[order] = np.arange(len(ids))
        put(name, "\n".join(ids[order]).encode())
        return ids, rank

    split = _read_json(root / "split.json")
    put("kind", str(split.get("kind")).encode())
    item_ids, item_rank = ids_and_ranks("items.parquet", "item_id")
    _, user_rank = ids_and_ranks("users.parquet", "user_id")
    for which in ("val", "test"):
        put(f"{which}_items", "\n".join(sorted(item_ids[np.asarray(split.get(f"{which}_items") or [], dtype=np.int64)]))
            .encode())
    for name, cols in _LISTS:
        table = files.read_parquet(root / f"{name}.parquet", ["user", *cols], hint=hint)
        users = table.column("user").to_numpy().astype(np.int64)
        for col in cols:
            lists = table.column(col).combine_chunks()
            items = lists.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
            owner = np.repeat(users, np.diff(lists.offsets.to_numpy()))
            pairs = np.unique(np.stack([user_rank[owner], item_rank[items]], axis=1), axis=0)
            put(f"{name}.{col}", pairs.astype("<i8").tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class EvalSplit:
    name: str  # "val" | "test"
    user: np.ndarray  # int, rows of users.parquet
    source: sp.csr_matrix  # (n_eval_users, n_items) binary float32
    target: sp.csr_matrix  # (n_eval_users, n_items) binary float32
    candidates: np.ndarray  # int item indices that may be recommended
    excluded_users: int  # users with target but no source
    part: str | None = None  # the dataset of a multi-dataset folder it covers; None: the whole folder


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # truncated or overwritten
        raise BeerayError(f"{path}: not valid JSON ({exc}); re-run beeray prepare --force") from None


def lists_to_csr(lists, n_cols: int) -> sp.csr_matrix:
    """Binary float32 CSR from a sequence of index arrays (duplicates within a row count once)."""
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = (np.concatenate([np.asarray(x, dtype=np.int32) for x in lists]) if len(lists)
               else np.array([], dtype=np.int32))
    m = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(lists), n_cols))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


class PreparedData:
    """A prepared folder: items, split definition, stats; matrices loaded on demand."""

    def __init__(self, root: Path, items: pd.DataFrame, stats: dict, split: dict):
        self.root = root
        self.items = items  # item_id [, dataset]: the texts are read on first use (`texts`)
        self.n_items = len(items)
        self.stats = stats
        self.split = split

    @cached_property
    def texts(self) -> list[str]:
        """Every item's text, read on first use. Training workers never need them (they map the
        tokenized catalog), so a 10^6-item catalog's texts stay out of their memory."""
        table = files.read_parquet(self.root / "items.parquet", ["text"], hint="re-run beeray prepare --force")
        return [str(t) for t in table.column("text").to_pylist()]

    @classmethod
    def load(cls, root: str | Path) -> "PreparedData":
        """A prepared folder: local, or published to object storage (`beeray prepare --out s3://...`), then
        fetched once per node into ~/.cache/beeray/remote (beeray.files.fetch_dir)."""
        root = files.readable_dir(root, "--data")
        if not root.is_dir():
            raise BeerayError(f"{root}: prepared-data folder not found (create it with `beeray prepare`)")
        for name in FILES:
            if not (root / name).is_file():
                raise BeerayError(f"{root / name}: missing from the prepared-data folder; re-run beeray prepare")
        names = files.parquet_schema(root / "items.parquet", hint="re-run beeray prepare --force").names
        for col in ("item_id", "text"):
            if col not in names:
                raise BeerayError(f"{root / 'items.parquet'}: missing column {col!r}")
        # Ids stay Arrow strings: 10^6 of them as Python str objects cost a worker ~100 MB for nothing
        # (training only needs the item count).
        items = files.read_parquet(root / "items.parquet", [c for c in names if c != "text"],
                                   hint="re-run beeray prepare --force").to_pandas(types_mapper=pd.ArrowDtype)
        return cls(root, items, _read_json(root / "stats.json"), _read_json(root / "split.json"))

    @cached_property
    def split_digest(self) -> str:
        """The split's SHA-256 (`split_digest`): recorded in split.json by `beeray prepare`, computed from
        the files for a folder prepared before it was."""
        return str(self.split.get("digest") or split_digest(self.root))

    def train_path(self, full: bool = False) -> Path:
        return self.root / ("train_full.parquet" if full else "train.parquet")

    def train_items(self, full: bool = False) -> np.ndarray:
        """The training catalog (docs/method.md §2.1): sorted indices of the items that have an interaction
        in the file a run trains on. Warm items for `train`; warm + validation cold items for
        `train_full`; never a test cold item."""
        table = files.read_parquet(self.train_path(full), ["items"], hint="re-run beeray prepare --force")
        flat = table.column("items").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return np.unique(flat.astype(np.int64))

    def train_texts(self, items: np.ndarray) -> list[str]:
        """The texts of the training catalog, and no other item's."""
        return [self.texts[i] for i in items]

    @property
    def name(self) -> str:
        """The dataset's name (stats.json `dataset`: its kind, or goodlens), else the folder's name."""
        return str(self.stats.get("dataset") or self.root.name)

    @cached_property
    def parts(self) -> list[str]:
        """The datasets of a multi-dataset (goodlens) folder, sorted; [] for a single dataset."""
        if "dataset" not in self.items.columns:
            return []
        names = sorted(str(d) for d in self.items["dataset"].unique())
        return names if len(names) > 1 else []

    @cached_property
    def item_parts(self) -> np.ndarray:
        """Each item's dataset as an index into `parts` (int64); all 0 for a single dataset."""
        if not self.parts:
            return np.zeros(self.n_items, dtype=np.int64)
        names = self.items["dataset"].to_numpy(dtype=object).astype(str)
        return np.searchsorted(np.asarray(self.parts), names).astype(np.int64)

    def qualified_ids(self, items: np.ndarray) -> list[str]:
        """Dataset-qualified ids of item indices (`movielens:3114`): a multi-dataset folder's ids carry
        their dataset already; a single dataset's get its name (the kind: `beeray prepare movielens`
        and goodlens's `movielens=` part then name one movie alike)."""
        ids = self.items["item_id"].to_numpy()[np.asarray(items, dtype=np.int64)]
        prefix = "" if "dataset" in self.items.columns else f"{self.name}:"
        return [f"{prefix}{i}" for i in ids]

    def cold_items(self, which: str, part: str | None = None) -> np.ndarray | None:
        """The cold items split `which` scores (of one dataset `part`, or of the whole folder); None on a
        time split, whose candidates are every item."""
        info = None if part is None else self._part_info(which, part)  # an unknown or old part fails first
        if self.split.get(f"{which}_candidates") is None:
            return None
        if info is None:
            return np.asarray(self.split[f"{which}_candidates"], dtype=np.int64)
        return np.asarray(info[f"{which}_items"], dtype=np.int64)

    def _part_info(self, which: str, part: str) -> dict:
        if part not in self.parts:
            raise BeerayError(f"{self.root}: no dataset {part!r} in this prepared folder "
                              f"(it has {', '.join(self.parts) or 'one dataset'})")
        info = self.split.get("per_dataset", {}).get(part, {})
        if f"{which}_excluded_users" not in info:  # written before each part drew its own cold items
            raise BeerayError(f"{self.root / 'split.json'}: no per-dataset {which} split (a goodlens folder of an "
                              "older beeray, whose cold items were drawn over the joint catalog); "
                              "re-run beeray prepare goodlens with --force")
        return info

    def eval_split(self, which: str, part: str | None = None) -> EvalSplit:
        """The users and candidates scored on split `which`; `part`: one dataset of a multi-dataset folder
        (its users, its own cold items as candidates, or all its items on a time split)."""
        if which not in ("val", "test"):
            raise BeerayError(f"unknown split {which!r} (choose val or test)")
        df = files.read_parquet(self.root / f"{which}.parquet", hint="re-run beeray prepare --force").to_pandas()
        cand = self.split.get(f"{which}_candidates")
        candidates = np.arange(self.n_items) if cand is None else np.asarray(cand, dtype=np.int64)
        excluded = self.split.get(f"{which}_excluded_users",
                                  self.stats.get("split", {}).get(which, {}).get("excluded_users", 0))
        source = lists_to_csr(list(df["source"]), self.n_items)
        target = lists_to_csr(list(df["target"]), self.n_items)
        user = df["user"].to_numpy().astype(np.int64)
        if part is None:
            return EvalSplit(which, user, source, target, candidates, int(excluded))
        excluded = self._part_info(which, part)[f"{which}_excluded_users"]
        cold = self.cold_items(which, part)  # item split: the part's own cold items; time split: its whole catalog
        candidates = np.flatnonzero((self.items["dataset"] == part).to_numpy(dtype=bool)) if cold is None else cold
        # A part's users: those with a target among its candidates (users never span datasets).
        rows = np.flatnonzero(np.diff(target[:, candidates].tocsr().indptr) > 0)
        return EvalSplit(which, user[rows], source[rows], target[rows], candidates, int(excluded), part)
