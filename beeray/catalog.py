"""A live catalogue: the items a service recommends from, growing while it serves (issue 33).

New items arrive with their texts; once their vectors are written here they are recommendable, with
no retraining. The catalogue belongs to one model: vectors of another encoder are never mixed in.

Layout of DIR:

  catalog.json                       the model (name, content fingerprint) and the vectors' dimension,
                                     written when DIR is created; a catalogue of another model is refused
  segments/000000001.parquet, ...    append-only, one per acknowledged write: op (put | delete), id,
                                     text, new (added while serving), vector (unit norm, float32); each
                                     written whole under a temporary name and renamed into place, named
                                     by the catalogue version it makes

A write is persisted before it is applied (and before a service answers it), so a restart loses
nothing acknowledged. Opening reads every segment in order and refuses, in one line naming it, one
that is torn or unreadable: nothing is served from half a catalogue. Putting an id that exists
replaces its text and vector in place; deleting one moves the last row into its place. Every reader
applies the same segments in the same order, so every copy holds the same rows in the same order.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beeray import files
from beeray.errors import BeerayError

MANIFEST = "catalog.json"
SEGMENTS = "segments"


def segment_name(version: int) -> str:
    return f"{SEGMENTS}/{version:09d}.parquet"


@dataclass
class Write:
    """One acknowledged change: items put (id, text, vector) or ids deleted."""

    op: str  # put | delete
    ids: list[str]
    texts: list[str] | None = None
    vectors: np.ndarray | None = None
    new: bool = True  # put while serving (not part of the catalogue the service started from)


class Catalog:
    """Ids, texts and vectors of one model's items, kept in DIR (see the module doc)."""

    def __init__(self, root: str | Path, model: str, fingerprint: str, dim: int) -> None:
        self.root, self.model, self.fingerprint, self.dim = Path(root), model, fingerprint, int(dim)
        self.version = 0
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.new = np.zeros(0, dtype=bool)
        self.vectors = np.zeros((0, self.dim), dtype=np.float32)
        self.row: dict[str, int] = {}

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, root: str | Path, model: str, fingerprint: str, dim: int) -> "Catalog":
        """The catalogue in `root` (created empty if there is none), refused when another model made it."""
        root = Path(root)
        manifest = root / MANIFEST
        if manifest.is_file():
            try:
                saved = json.loads(manifest.read_text())
            except ValueError as exc:
                raise BeerayError(f"{manifest}: not valid JSON ({exc})") from None
            if saved.get("model_fingerprint") != fingerprint:
                raise BeerayError(f"{root} holds a catalogue of another model ({saved.get('model')}, "
                                  f"{saved.get('model_fingerprint')}), not of {model} ({fingerprint}): "
                                  "choose another catalogue folder, or re-embed it")
            catalog = cls(root, saved["model"], fingerprint, saved["dim"])
        else:
            (root / SEGMENTS).mkdir(parents=True, exist_ok=True)
            files.write_json(manifest, {"format": 1, "model": model, "model_fingerprint": fingerprint, "dim": dim})
            catalog = cls(root, model, fingerprint, dim)
        catalog.refresh()
        return catalog

    def refresh(self) -> int:
        """Apply the segments written since this copy's version (another writer's, or all on opening)."""
        while True:
            path = self.root / segment_name(self.version + 1)
            if not path.is_file():
                return self.version
            self._apply(read_segment(path, self.dim))
            self.version += 1

    # ------------------------------------------------------------ writing

    def put(self, ids: list[str], texts: list[str], vectors: np.ndarray, new: bool = True) -> int:
        """Add or replace items; returns the catalogue version that holds them (persisted first)."""
        ids, texts = [str(i) for i in ids], [str(t) for t in texts]
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not (len(ids) == len(texts) == len(vectors)) or vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise BeerayError(f"put: {len(ids)} ids, {len(texts)} texts and vectors of shape {vectors.shape}; "
                              f"expected one {self.dim}-dimensional vector per item")
        if len(set(ids)) != len(ids):
            raise BeerayError("put: an id is given twice in one write")
        return self._commit(Write("put", ids, texts, vectors, new))

    def delete(self, ids: list[str]) -> int:
        """Remove items; an unknown id is refused (nothing is written)."""
        ids = [str(i) for i in ids]
        unknown = [i for i in ids if i not in self.row]
        if unknown:
            raise BeerayError(f"delete: no item with id {', '.join(map(repr, unknown[:5]))}")
        return self._commit(Write("delete", list(dict.fromkeys(ids))))

    def _commit(self, write: Write) -> int:
        if not write.ids:
            raise BeerayError(f"{write.op}: no items given")
        while True:
            self.refresh()  # a write lands after everything already acknowledged
            if write.op == "delete" and any(i not in self.row for i in write.ids):
                raise BeerayError(f"delete: an id was deleted meanwhile ({', '.join(write.ids[:5])})")
            if write_segment(self.root / segment_name(self.version + 1), write, self.dim):
                break  # else another writer took this version first: apply its write, then try the next
        self._apply(write)
        self.version += 1
        return self.version

    def recommend(self, history: list[str], k: int = 10, exclude_history: bool = True,
                  only_new: bool = False) -> list:
        """The k best items for a history of ids, scored as `beeray recommend` scores (relu(x Â Âᵀ − x)
        over the catalogue); `only_new`: among the items added while serving only."""
        from beeray.recommender import recommend

        return recommend(self.vectors, np.asarray(self.ids, dtype=object), history, k=k, source=str(self.root),
                         allowed=self.new if only_new else None, exclude_history=exclude_history)

    def _apply(self, write: Write) -> None:
        if write.op == "delete":
            for item in write.ids:
                self._remove(item)
            return
        fresh = [i for i in write.ids if i not in self.row]
        if fresh:
            start = len(self.ids)
            self.ids += fresh
            self.texts += [""] * len(fresh)
            self.new = np.concatenate([self.new, np.zeros(len(fresh), dtype=bool)])
            self.vectors = np.concatenate([self.vectors, np.zeros((len(fresh), self.dim), dtype=np.float32)])
            self.row.update({item: start + j for j, item in enumerate(fresh)})
        rows = np.array([self.row[i] for i in write.ids], dtype=np.int64)
        self.vectors[rows] = write.vectors
        self.new[rows] = write.new
        for r, text in zip(rows, write.texts):
            self.texts[r] = text

    def _remove(self, item: str) -> None:
        r, last = self.row.pop(item), len(self.ids) - 1
        if r != last:  # the last row moves into the hole: rows stay dense, the same on every copy
            moved = self.ids[last]
            self.ids[r], self.texts[r] = moved, self.texts[last]
            self.vectors[r], self.new[r] = self.vectors[last], self.new[last]
            self.row[moved] = r
        self.ids.pop()
        self.texts.pop()
        self.vectors, self.new = self.vectors[:last], self.new[:last]

    def __len__(self) -> int:
        return len(self.ids)


def write_segment(path: Path, write: Write, dim: int) -> bool:
    """Write one segment as `path`, whole or not at all; False when another writer made that version first."""
    n = len(write.ids)
    vectors = write.vectors if write.vectors is not None else np.zeros((n, dim), dtype=np.float32)
    table = pa.table({
        "op": pa.array([write.op] * n), "id": pa.array(write.ids),
        "text": pa.array(write.texts if write.texts is not None else [""] * n),
        "new": pa.array([write.new] * n),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.link(tmp, path)  # appears whole, and only if no other writer made this version first
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the new name survives a crash of the machine, not only of the process
        finally:
            os.close(folder)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def read_segment(path: Path, dim: int) -> Write:
    """A segment, whole; a torn or foreign one is refused in one line naming it."""
    try:
        table = pq.read_table(path)
        ops = set(table.column("op").to_pylist())
        vectors = np.asarray(table.column("vector").combine_chunks().flatten(), dtype=np.float32).reshape(-1, dim)
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        raise BeerayError(f"{path}: a torn or unreadable catalogue segment ({' '.join(str(exc).split())[:200]}); "
                          "nothing is served from half a catalogue") from None
    if len(ops) != 1 or not ops <= {"put", "delete"} or len(vectors) != table.num_rows:
        raise BeerayError(f"{path}: not a catalogue segment (ops {sorted(ops)}, {table.num_rows} rows)")
    op = ops.pop()
    ids = table.column("id").to_pylist()
    if op == "delete":
        return Write("delete", ids)
    new = table.column("new").to_pylist()
    return Write("put", ids, table.column("text").to_pylist(), vectors, bool(new[0]) if new else True)
