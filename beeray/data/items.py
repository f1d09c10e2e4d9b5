"""Item texts to embed or recommend from: any catalog file, checked row by row.

`beeray embed` and `beeray recommend` read a catalog that need not be a prepared-data folder: a
parquet, csv/tsv, jsonl or feather file with an id and a text column, a folder of parquet files,
or a prepared folder (its items.parquet). A row without an id, without a text, or repeating an
earlier id is a bad row; it is reported with its line (csv/tsv: the file's line, header = 1) or
row number (other formats: 1-based), and refused or skipped as the caller asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from beeray.data.loaders import _read_table
from beeray.errors import BeerayError

SHOWN = 5  # bad rows named in the one-line message


@dataclass
class ItemTexts:
    source: str  # what was read (file or folder)
    ids: np.ndarray  # object array of str, unique
    texts: list[str]
    skipped: list[str]  # "line 7: missing text", ... (bad rows left out with bad_rows="skip")

    def __len__(self) -> int:
        return len(self.ids)


def _files(path: Path) -> tuple[list[Path], bool]:
    """The files to read, and whether their row numbers are csv lines."""
    if path.is_dir():
        if (path / "items.parquet").is_file():  # a prepared-data folder
            return [path / "items.parquet"], False
        parts = sorted(p for p in path.iterdir() if p.suffix.lower() in (".parquet", ".pq"))
        if not parts:
            raise BeerayError(f"{path}: no items.parquet and no parquet files in this folder")
        return parts, False
    if not path.is_file():
        raise BeerayError(f"{path}: item file not found")
    return [path], path.suffix.lower() in (".csv", ".tsv") or path.name.lower().endswith((".csv.gz", ".tsv.gz"))


def read_item_texts(path: str | Path, id_col: str = "item_id", text_col: str = "text",
                    bad_rows: str = "refuse") -> ItemTexts:
    """Ids and texts of a catalog; bad rows refused (one line naming them) or, with "skip", left out."""
    if bad_rows not in ("refuse", "skip"):
        raise BeerayError(f"bad_rows must be 'refuse' or 'skip', got {bad_rows!r}")
    path = Path(path).expanduser()
    files, csv_lines = _files(path)
    ids: list[np.ndarray] = []
    texts: list[np.ndarray] = []
    problems: list[str] = []
    seen: dict[str, str] = {}  # id -> where it first appeared

    for f in files:
        def where(i: int) -> str:  # a row's position as a person finds it in the file
            return (f"{f.name + ' ' if len(files) > 1 else ''}{'line' if csv_lines else 'row'} "
                    f"{i + (2 if csv_lines else 1)}")

        df = _read_table(f, [id_col, text_col], str_cols=(id_col,))
        raw_id, raw_text = df[id_col], df[text_col]
        id_str = raw_id.astype(str).str.strip()
        if pd.api.types.is_float_dtype(raw_id):  # parquet ids stored as floats: 12.0 -> "12"
            id_str = raw_id.map(lambda v: str(int(v)) if v == v and float(v).is_integer() else str(v))
        text_str = raw_text.astype(str)
        ok = np.ones(len(df), dtype=bool)
        for i in np.flatnonzero(raw_id.isna().to_numpy() | (id_str == "").to_numpy()):
            problems.append(f"{where(i)}: missing id")
            ok[i] = False
        for i in np.flatnonzero(raw_text.isna().to_numpy() | (text_str.str.strip() == "").to_numpy()):
            if ok[i]:
                problems.append(f"{where(i)}: missing text")
            ok[i] = False
        id_values = id_str.to_numpy(dtype=object)
        for i in np.flatnonzero(ok):
            first = seen.get(id_values[i])
            if first is None:
                seen[id_values[i]] = where(i)
            else:
                problems.append(f"{where(i)}: duplicate id {id_values[i]!r} (first at {first})")
                ok[i] = False
        ids.append(id_values[ok])
        texts.append(text_str.to_numpy(dtype=object)[ok])
    if problems and bad_rows == "refuse":
        more = f" and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise BeerayError(f"{path}: {len(problems)} bad row(s): {'; '.join(problems[:SHOWN])}{more} "
                          f"(fix them, or pass --bad-rows skip to leave them out)")
    all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=object)
    if all_ids.size == 0:
        raise BeerayError(f"{path}: no items with an id and a text")
    return ItemTexts(str(path), all_ids, [str(t) for t in np.concatenate(texts)], problems)
