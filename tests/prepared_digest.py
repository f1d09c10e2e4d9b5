"""Content digests of a prepared folder, independent of the library versions that wrote it.

Parquet bytes carry the writer's version, so each table is digested by its values: the columns in file
order, each as JSON of its Python values (lists, strings, numbers), in row order (row order is the item
and user index). split.json and stats.json are digested as parsed JSON, without stats.json's `inputs`
(the path it was given). `python -m tests.prepared_digest FOLDER...` prints them; it needs only pyarrow.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

TABLES = ("items", "users", "train", "train_full", "val", "test")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _type(t) -> str:
    """The Arrow type, with the string layouts pandas versions choose between (large, view) as one."""
    return str(t).replace("large_", "").replace("string_view", "string")


def digest(folder: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    folder = Path(folder)
    out = {}
    for name in TABLES:
        table = pq.read_table(folder / f"{name}.parquet")
        out[f"{name}.parquet"] = _sha([[c, _type(table.schema.field(c).type), table.column(c).to_pylist()]
                                       for c in table.column_names])
    split = json.loads((folder / "split.json").read_text())
    split.pop("digest", None)  # the split's own digest (issue 31), added after these were recorded
    out["split.json"] = _sha(split)
    stats = json.loads((folder / "stats.json").read_text())
    stats.pop("inputs", None)
    stats.get("split", {}).pop("digest", None)
    out["stats.json"] = _sha(stats)
    return out


if __name__ == "__main__":
    print(json.dumps({arg: digest(Path(arg)) for arg in sys.argv[1:]}, indent=1))
