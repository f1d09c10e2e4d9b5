"""Readers for each supported source layout, all returning one raw form (`RawDataset`).

Raw form: `interactions` with columns user_id:str, item_id:str and optionally rating:float,
timestamp:int64; `items` with item_id:str, text:str. Loaders validate what they read and raise
BeerayError naming the file, the 1-based line where it applies, and the problem. Item-catalog
defects that have an obvious safe fix (duplicate ids with the same text, empty texts) are dropped
and counted in `RawDataset.dropped` / `warnings` instead of failing the whole run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from beeray.errors import BeerayError

# At most this many distinct tags per movie: a handful of popular movies carry hundreds, which
# would swamp the title and genres in a 256-token text window.
MAX_TAGS = 10


@dataclass
class RawDataset:
    """Interactions + item texts as read from disk, before any filtering."""

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    # True when `timestamp` is only a per-user position (no clock): time splits go per user.
    order_only: bool = False
    dropped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def has_ratings(self) -> bool:
        return "rating" in self.interactions.columns

    @property
    def has_timestamps(self) -> bool:
        return "timestamp" in self.interactions.columns


# ---------------------------------------------------------------- helpers


def _need_file(path: Path, what: str = "file") -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise BeerayError(f"{path}: {what} not found")
    return path


def _line(index: int, header: bool = True) -> int:
    """1-based line of a data row in a csv (header counts as line 1)."""
    return int(index) + (2 if header else 1)


def _read_table(path: Path, columns: list[str] | None = None, *, header: bool = True,
                names: list[str] | None = None, str_cols: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read csv/tsv/parquet/feather/json-lines; id columns as strings so '007' stays '007'."""
    path = _need_file(path)
    suffix = "".join(path.suffixes[-2:]).lower()
    csv_like = not suffix.endswith((".parquet", ".pq", ".feather", ".arrow", ".jsonl", ".json"))
    if csv_like:
        _refuse_nul_bytes(path, "\t" if suffix.endswith((".tsv", ".tsv.gz")) else ",", header)
    try:
        if suffix.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
        elif suffix.endswith((".feather", ".arrow")):
            df = pd.read_feather(path)
        elif suffix.endswith((".jsonl", ".json")):
            df = pd.read_json(path, lines=suffix.endswith(".jsonl"))
        else:
            sep = "\t" if suffix.endswith((".tsv", ".tsv.gz")) else ","
            dtype = {c: str for c in str_cols}
            # index_col=False: files with trailing delimiters (ml-latest-small) would otherwise
            # silently shift every column by one.
            df = pd.read_csv(path, sep=sep, header=0 if header else None, names=names,
                             index_col=False, dtype=dtype, keep_default_na=True, low_memory=False)
    except BeerayError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad input file
        raise BeerayError(f"{path}: cannot read: {str(exc).splitlines()[0]}") from exc
    if not csv_like:
        _refuse_nul_values(df, path)
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            found = ", ".join(str(c) for c in df.columns if not str(c).startswith("Unnamed"))
            raise BeerayError(f"{path}: missing column(s) {', '.join(missing)} (found: {found})")
    return df


# A NUL byte in a text is refused, whatever the format: pandas' CSV parser silently cuts a field at it
# (and drops a field of NULs alone), while Parquet keeps it; one rule for every input keeps a catalog's
# texts the same whichever format it was exported in.
NUL = "\x00"


def _refuse_nul_bytes(path: Path, sep: str, header: bool) -> None:
    """A csv/tsv (optionally gzipped) holding a NUL byte: one line naming its line and column."""
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    lines, tail, first = 0, b"", None  # newlines before this block, the current line so far, the header
    with opener(path, "rb") as fh:
        while block := fh.read(16 << 20):  # in blocks: a ratings file may be gigabytes
            at = block.find(b"\0")
            chunk = block if at < 0 else block[:at]
            if first is None and b"\n" in tail + chunk:
                first = (tail + chunk).split(b"\n", 1)[0]
            lines += chunk.count(b"\n")
            tail = (tail + chunk).rsplit(b"\n", 1)[-1]
            if at >= 0:
                break
        else:
            return
    line = lines + 1
    field = tail.decode("utf-8", "replace").count(sep)  # the field it is in (quotes aside)
    names = (first or tail).decode("utf-8", "replace").rstrip("\r").split(sep) if header else []
    column = names[field] if field < len(names) else f"field {field + 1}"
    raise BeerayError(f"{path}: line {line}, column {column}: a NUL byte in the text (remove it)")


def _refuse_nul_values(df: pd.DataFrame, path: Path) -> None:
    """Parquet, feather, jsonl: a string value holding NUL: one line naming its row (1-based) and column."""
    for col in df.columns:
        values = df[col]
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            hit = values.astype("string").str.contains(NUL, regex=False).fillna(False).to_numpy(dtype=bool)
            if hit.any():
                raise BeerayError(f"{path}: row {int(np.flatnonzero(hit)[0]) + 1}, column {col}: a NUL byte in "
                                  "the text (remove it)")


def _id_column(df: pd.DataFrame, col: str, path: Path, what: str, header: bool = True) -> pd.Series:
    s = df[col]
    bad = s.isna()
    if not bad.any():
        s = s.astype(str).str.strip()
        bad = s == ""
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise BeerayError(f"{path}: line {_line(row, header)}: empty {what} ({col!r})")
    # Numeric columns read from parquet come as ints/floats; 12.0 must become "12", not "12.0".
    if pd.api.types.is_float_dtype(df[col]):
        vals = df[col].to_numpy()
        if np.all(vals == np.round(vals)):
            return pd.Series(vals.astype(np.int64).astype(str), index=df.index)
    return s.astype(str)


def _numeric_column(df: pd.DataFrame, col: str, path: Path, what: str, header: bool = True) -> pd.Series:
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() & df[col].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise BeerayError(
            f"{path}: line {_line(row, header)}: {what} {df[col].iloc[row]!r} in column {col!r} is not a number")
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise BeerayError(f"{path}: line {_line(row, header)}: missing {what} in column {col!r}")
    return values


def _interactions(df: pd.DataFrame, path: Path, user: str, item: str, rating: str | None,
                  timestamp: str | None, header: bool = True) -> pd.DataFrame:
    out = pd.DataFrame({
        "user_id": _id_column(df, user, path, "user id", header).to_numpy(),
        "item_id": _id_column(df, item, path, "item id", header).to_numpy(),
    })
    if rating is not None:
        out["rating"] = _numeric_column(df, rating, path, "rating", header).astype(np.float32).to_numpy()
    if timestamp is not None:
        ts = df[timestamp]
        if not pd.api.types.is_numeric_dtype(ts):
            parsed = pd.to_numeric(ts, errors="coerce")
            if parsed.isna().any():  # ISO dates are fine too
                parsed = pd.to_datetime(ts, errors="coerce", utc=True)
                if parsed.isna().any():
                    row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
                    raise BeerayError(f"{path}: line {_line(row, header)}: timestamp "
                                      f"{ts.iloc[row]!r} is neither a number nor a date")
                parsed = parsed.astype("int64") // 10**9
            ts = parsed
        if ts.isna().any():
            row = int(np.flatnonzero(ts.isna().to_numpy())[0])
            raise BeerayError(f"{path}: line {_line(row, header)}: missing timestamp")
        out["timestamp"] = ts.astype(np.int64).to_numpy()
    if out.empty:
        raise BeerayError(f"{path}: no interactions in file")
    return out


def clean_items(items: pd.DataFrame, path: Path | str, raw_warnings: list[str],
                dropped: dict[str, int]) -> pd.DataFrame:
    """Strip texts, drop empty ones, drop exact duplicate rows; conflicting duplicates are an error.

    Two different texts for one id cannot be resolved safely (which one did the user mean?),
    so that fails; a repeated identical row is harmless and just dropped.
    """
    items = items.copy()
    items["item_id"] = items["item_id"].astype(str)
    items["text"] = items["text"].fillna("").astype(str).str.strip()
    empty = items["text"] == ""
    if empty.any():
        n = int(empty.sum())
        dropped["items_empty_text"] = dropped.get("items_empty_text", 0) + n
        raw_warnings.append(f"{path}: dropped {n} item(s) with an empty text")
        items = items[~empty]
    dup = items.duplicated("item_id", keep=False)
    if dup.any():
        groups = items[dup].groupby("item_id")["text"].nunique()
        conflicting = groups[groups > 1]
        if len(conflicting):
            first = conflicting.index[0]
            raise BeerayError(f"{path}: item id {first!r} appears {int((items['item_id'] == first).sum())} "
                              f"times with different texts ({len(conflicting)} such id(s))")
        n = int(items.duplicated("item_id").sum())
        dropped["items_duplicate_id"] = dropped.get("items_duplicate_id", 0) + n
        raw_warnings.append(f"{path}: dropped {n} duplicate item row(s) (same id, same text)")
        items = items.drop_duplicates("item_id")
    if items.empty:
        raise BeerayError(f"{path}: no item has a non-empty text")
    return items.reset_index(drop=True)[["item_id", "text"] + [c for c in items.columns
                                                                if c not in ("item_id", "text")]]


def _finish(name: str, inter: pd.DataFrame, items: pd.DataFrame, items_path: Path | str,
            order_only: bool = False) -> RawDataset:
    warnings: list[str] = []
    dropped: dict[str, int] = {}
    items = clean_items(items, items_path, warnings, dropped)
    return RawDataset(name, inter, items, order_only=order_only, dropped=dropped, warnings=warnings)


# ---------------------------------------------------------------- MovieLens


def _genres(g: object) -> str:
    if not isinstance(g, str) or g.strip() in ("", "(no genres listed)"):
        return ""
    return ", ".join(x.strip() for x in g.split("|") if x.strip())


def movielens_text(title: str, genres: str, tags: list[str] | None) -> str:
    parts = [str(title).strip().rstrip(".") + "."]
    if genres:
        parts.append(f"Genres: {genres}.")
    if tags:
        parts.append(f"Tags: {', '.join(tags)}.")
    return " ".join(p for p in parts if p)


def load_movielens(path: str | Path) -> RawDataset:
    """A MovieLens folder: ratings.csv + movies.csv [+ tags.csv] (ml-latest-small and ML-20M layouts)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BeerayError(f"{root}: MovieLens folder not found (expected ratings.csv and movies.csv in it)")
    rpath, mpath, tpath = root / "ratings.csv", root / "movies.csv", root / "tags.csv"
    ratings = _read_table(rpath, ["userId", "movieId", "rating"], str_cols=("userId", "movieId"))
    inter = _interactions(ratings, rpath, "userId", "movieId", "rating",
                          "timestamp" if "timestamp" in ratings.columns else None)
    movies = _read_table(mpath, ["movieId", "title"], str_cols=("movieId",))
    ids = _id_column(movies, "movieId", mpath, "movie id")
    genres = movies["genres"].map(_genres) if "genres" in movies.columns else pd.Series("", index=movies.index)
    tags: dict[str, list[str]] = {}
    if tpath.is_file():
        t = _read_table(tpath, ["movieId", "tag"], str_cols=("movieId", "tag"))
        t = t.dropna(subset=["movieId", "tag"])
        t["movieId"] = t["movieId"].astype(str).str.strip()
        t["tag"] = t["tag"].astype(str).str.strip()
        t = t[t["tag"] != ""]
        t["key"] = t["tag"].str.lower()
        # Most-used tags first; dedupe case-insensitively, keep the first spelling seen.
        counts = t.groupby(["movieId", "key"], sort=False).agg(tag=("tag", "first"), n=("tag", "size"))
        counts = counts.reset_index().sort_values(["movieId", "n", "key"], ascending=[True, False, True])
        for mid, grp in counts.groupby("movieId", sort=False):
            tags[mid] = grp["tag"].head(MAX_TAGS).tolist()
    texts = [movielens_text(ti if isinstance(ti, str) else "", g, tags.get(i))
             for i, ti, g in zip(ids, movies["title"], genres)]
    items = pd.DataFrame({"item_id": ids.to_numpy(), "text": texts})
    return _finish("movielens", inter, items, mpath)


# ---------------------------------------------------------------- Goodbooks


def load_goodbooks(path: str | Path, items: str | Path | None = None) -> RawDataset:
    """Goodbooks-10k: ratings csv (user_id,book_id,rating) + item_text_descriptions.feather [+ books.csv].

    `path` is the ratings csv or a folder holding ratings.csv (preferred) or ratings_subset.csv.
    `items` is the descriptions file; default: item_text_descriptions.feather beside the ratings.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        rpath = p / "ratings.csv" if (p / "ratings.csv").is_file() else p / "ratings_subset.csv"
        if not rpath.is_file():
            raise BeerayError(f"{p}: no ratings.csv or ratings_subset.csv in this folder")
    else:
        rpath = _need_file(p, "ratings file")
    dpath = Path(items).expanduser() if items else rpath.parent / "item_text_descriptions.feather"
    ratings = _read_table(rpath, ["user_id", "book_id", "rating"], str_cols=("user_id", "book_id"))
    inter = _interactions(ratings, rpath, "user_id", "book_id", "rating", None)
    desc = _read_table(dpath, ["book_id", "llama31_description"])
    ids = _id_column(desc, "book_id", dpath, "book id")
    text = desc["llama31_description"].fillna("").astype(str).str.strip()
    bpath = dpath.parent / "books.csv"
    if bpath.is_file():
        books = _read_table(bpath, ["book_id", "title"], str_cols=("book_id",))
        titles = dict(zip(books["book_id"].astype(str).str.strip(), books["title"].fillna("").astype(str)))
        # Only books that have a description get a title: a bare title is not "an item with text".
        text = pd.Series([f"{titles[i].strip()}. {t}" if t and titles.get(i, "").strip() else t
                          for i, t in zip(ids, text)], index=desc.index)
    return _finish("goodbooks", inter, pd.DataFrame({"item_id": ids.to_numpy(), "text": text.to_numpy()}), dpath)


# ---------------------------------------------------------------- Amazon Books (ratings csv + descriptions)

_AMAZON_COLS = ["asin", "user", "rating", "timestamp"]


def _amazon_items(dpath: Path) -> pd.DataFrame:
    desc = _read_table(dpath, ["asin"], str_cols=("asin",))
    ids = _id_column(desc, "asin", dpath, "asin")
    if "text" in desc.columns:
        text = desc["text"].fillna("").astype(str)
    elif "title" in desc.columns or "description" in desc.columns:
        title = desc["title"].fillna("").astype(str).str.strip() if "title" in desc.columns else ""
        body = desc["description"].fillna("").astype(str).str.strip() if "description" in desc.columns else ""
        text = (title + ". " + body).str.strip(". ").where((title != "") & (body != ""), title + body)
    else:
        raise BeerayError(f"{dpath}: missing column(s) text (or title/description)")
    return pd.DataFrame({"item_id": ids.to_numpy(), "text": text.to_numpy()})


def load_amazon_books(path: str | Path, items: str | Path) -> RawDataset:
    """Amazon ratings csv (asin,user,rating,timestamp; header optional) + descriptions (asin,text|title,description)."""
    rpath = _need_file(Path(path), "ratings file")
    if items is None:
        raise BeerayError("amazon-books needs --items (csv/parquet with asin,text or asin,title,description)")
    with open(rpath, encoding="utf-8", errors="replace") as fh:
        first = fh.readline().strip().lower().split(",")
    header = "asin" in first or "user" in first
    if rpath.suffix.lower() in (".parquet", ".pq"):
        header = True
    df = _read_table(rpath, _AMAZON_COLS[:3], header=header, names=None if header else _AMAZON_COLS[:len(first)],
                     str_cols=("asin", "user"))
    inter = _interactions(df, rpath, "user", "asin", "rating",
                          "timestamp" if "timestamp" in df.columns else None, header=header)
    return _finish("amazon-books", inter, _amazon_items(Path(items).expanduser()), Path(items))


# ---------------------------------------------------------------- Amazon JSON (sequence data)


def _load_json(path: Path) -> dict:
    path = _need_file(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BeerayError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BeerayError(f"{path}: expected a JSON object at the top level")
    return data


def load_amazon_json(path: str | Path, items: str | Path | None = None) -> RawDataset:
    """`<Name>.inter.json` {user: [items in time order]} + `<Name>.item.json` {item: {title, description, ...}}.

    `path` is the folder (one *.inter.json + *.item.json) or the inter file itself. No ratings (every
    entry is an interaction) and no clock: the list position becomes the timestamp (order_only).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(p.glob("*.inter.json"))
        if not found:
            raise BeerayError(f"{p}: no *.inter.json file in this folder")
        ipath = found[0]
    else:
        ipath = p
    item_path = Path(items).expanduser() if items else ipath.with_name(ipath.name.replace(".inter.json", ".item.json"))
    inter_raw = _load_json(ipath)
    users, its, pos = [], [], []
    from tqdm import tqdm

    for u, seq in tqdm(inter_raw.items(), desc=f"reading {ipath.name}", unit=" users",
                       disable=len(inter_raw) < 200_000, leave=False):
        if not isinstance(seq, list):
            raise BeerayError(f"{ipath}: user {u!r}: expected a list of item ids, got {type(seq).__name__}")
        for k, it in enumerate(seq):
            if it is None or str(it).strip() == "":
                raise BeerayError(f"{ipath}: user {u!r}: empty item id at position {k}")
            users.append(str(u))
            its.append(str(it))
            pos.append(k)
    if not users:
        raise BeerayError(f"{ipath}: no interactions in file")
    inter = pd.DataFrame({"user_id": users, "item_id": its, "timestamp": np.asarray(pos, dtype=np.int64)})
    meta = _load_json(item_path)
    ids, texts = [], []
    for k, v in meta.items():
        if isinstance(v, dict):
            title = str(v.get("title") or "").strip()
            desc = str(v.get("description") or "").strip()
            brand = str(v.get("brand") or "").strip()
            cats = str(v.get("categories") or "").strip()
            parts = [title]
            if brand:
                parts.append(f"Brand: {brand.rstrip('.')}.")
            if cats:
                parts.append(f"Categories: {cats.replace(',', ', ')}.")
            if desc:
                parts.append(desc)
            text = " ".join(x for x in parts if x) if title or desc else ""
        else:
            text = str(v or "")
        ids.append(str(k))
        texts.append(text)
    name = ipath.name.replace(".inter.json", "").lower() or "amazon"
    return _finish(f"amazon-{name}", inter, pd.DataFrame({"item_id": ids, "text": texts}), item_path,
                   order_only=True)


# ---------------------------------------------------------------- Generic


@dataclass(frozen=True)
class GenericColumns:
    user: str = "user_id"
    item: str = "item_id"
    rating: str | None = "rating"  # used when present in the file
    timestamp: str | None = "timestamp"  # used when present in the file
    item_key: str | None = None  # items file id column; default: item_id, else id
    text: str = "text"


def load_generic(path: str | Path, items: str | Path | None,
                 columns: GenericColumns = GenericColumns(), name: str = "generic") -> RawDataset:
    """Any interactions csv/parquet + items csv/parquet (id,text); column names configurable."""
    rpath = Path(path).expanduser()
    if items is None:
        raise BeerayError("generic needs --items (a csv/parquet with item ids and texts)")
    df = _read_table(rpath, [columns.user, columns.item], str_cols=(columns.user, columns.item))
    rating = columns.rating if columns.rating and columns.rating in df.columns else None
    ts = columns.timestamp if columns.timestamp and columns.timestamp in df.columns else None
    inter = _interactions(df, rpath, columns.user, columns.item, rating, ts)
    ipath = Path(items).expanduser()
    key = columns.item_key
    head = _read_table(ipath, str_cols=tuple(c for c in (key, "item_id", "id") if c))
    if key is None:
        key = "item_id" if "item_id" in head.columns else "id"
    missing = [c for c in (key, columns.text) if c not in head.columns]
    if missing:
        raise BeerayError(f"{ipath}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, head.columns))})")
    ids = _id_column(head, key, ipath, "item id")
    return _finish(name, inter, pd.DataFrame({"item_id": ids.to_numpy(), "text": head[columns.text].to_numpy()}), ipath)


DATASETS = ("movielens", "goodbooks", "amazon-books", "amazon-json", "generic", "synthetic")


def load_dataset(kind: str, path: str | Path | None, items: str | Path | None = None,
                 columns: GenericColumns | None = None, seed: int = 0,
                 size: tuple[int, int, int] | None = None) -> RawDataset:
    """Dispatch on the dataset kind (the `beeray prepare` positional argument); `size` = (users,
    items, interactions) of a scaled synthetic shop (default: the demo shop)."""
    if kind == "synthetic":
        from beeray.data.synthetic import generate_scaled_shop, generate_shop

        if size is None:
            inter, its = generate_shop(seed=seed)
        else:
            try:
                inter, its = generate_scaled_shop(*size, seed=seed)
            except ValueError as exc:
                raise BeerayError(f"--synthetic-size: {exc}") from None
        return RawDataset("synthetic", inter, its[["item_id", "text", "group"]].copy())
    if path is None:
        raise BeerayError(f"{kind} needs --input PATH")
    if kind == "movielens":
        return load_movielens(path)
    if kind == "goodbooks":
        return load_goodbooks(path, items)
    if kind == "amazon-books":
        return load_amazon_books(path, items)
    if kind == "amazon-json":
        return load_amazon_json(path, items)
    if kind == "generic":
        return load_generic(path, items, columns or GenericColumns())
    raise BeerayError(f"unknown dataset kind {kind!r} (choose from {', '.join(DATASETS)})")
