"""What a model folder trained on, and the guard that refuses to score it on those items as cold ones.

`beeray train` (and so `beeray tune`'s final model) writes `beeray_training.json.gz` into the model
folder it saves: the dataset-qualified ids of its training catalog (`movielens:3114`,
`goodbooks:1`: docs/method.md §2.1, the items of the file it trained on) and the prepared folder
it came from (path, dataset, fingerprint, training file). A model fine-tuned from another beeray
model inherits that model's record too.

`evaluate`, `compare` (and `make results`, which runs `compare`) call `check` before scoring: a
model that trained on any cold item of the split it is asked to score would be measured on items it
has seen, so the run stops with one line naming how many, unless the user passes
--allow-trained-items, in which case each such result carries `trained_cold_items` and the table
marks its row. Models without a record (hub names, zero-shot) and time splits (no cold items) are
scored as before. Ids are compared across folders by dataset name, so a model trained on
`beeray prepare movielens` is caught on goodlens's `movielens` part, and the other way round.

The record is gzip-compressed JSON: a million ids take a few MB, and reading it runs no code
(no pickle).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING

from beeray import files
from beeray.version import __version__
from beeray.errors import BeerayError
from beeray.files import atomic_path

if TYPE_CHECKING:
    from beeray.data.prepared import PreparedData

RECORD = "beeray_training.json.gz"
ALLOW_FLAG = "--allow-trained-items"


def build(data: "PreparedData", full: bool, base_model: str, model_fingerprint: str | None = None) -> dict:
    """The record of a model trained on `data`'s training file (`full`: train_full.parquet) from
    `base_model`, including what `base_model` itself trained on if it is a recorded beeray model.
    `model_fingerprint`: the trained folder's own (beeray.models.model_fingerprint; the record itself
    is not part of it)."""
    from beeray.models import model_fingerprint as fingerprint_of

    inherited = read(base_model) or {"trained_on": [], "item_ids": []}
    items = data.train_items(full)
    source = {"data": str(data.root.resolve()), "dataset": data.name,
              "fingerprint": data.stats.get("fingerprint"), "file": data.train_path(full).name,
              "items": int(items.size), "base_model": base_model, "base_model_fingerprint": fingerprint_of(base_model)}
    ids = sorted(set(inherited["item_ids"]).union(data.qualified_ids(items)))
    return {"format": 1, "beeray_version": __version__, "model_fingerprint": model_fingerprint,
            "trained_on": [*inherited["trained_on"], source], "item_ids": ids}


def write(model_dir: str | Path, record: dict) -> Path:
    path = Path(model_dir) / RECORD
    with atomic_path(path) as tmp:
        # mtime 0: the same training catalog gives the same bytes
        with gzip.GzipFile(tmp, "wb", mtime=0) as fh:
            fh.write(json.dumps(record, separators=(",", ":")).encode("utf-8"))
    return path


def read(model: str | Path) -> dict | None:
    """The record of a model folder (or a published model's URL, fetched); None for a hub name or a
    folder without one."""
    folder = files.readable_dir(model, "--model")
    path = folder / RECORD
    if not path.is_file():
        return None
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, EOFError, ValueError) as exc:
        raise BeerayError(f"{path}: unreadable training record ({exc}); delete it to score the model "
                          "as one without a record") from exc
    if not isinstance(record, dict) or not isinstance(record.get("item_ids"), list):
        raise BeerayError(f"{path}: training record without an item_ids list")
    return record


def trained_cold_items(record: dict | None, data: "PreparedData", which: str, part: str | None) -> int | None:
    """How many of the cold items scored on split `which` (of dataset `part`) the record's model trained on;
    None when nothing can overlap (no record, or a time split: no cold items)."""
    cold = data.cold_items(which, part)
    if record is None or cold is None:
        return None
    trained = set(record["item_ids"])
    return int(sum(i in trained for i in data.qualified_ids(cold)))


def check(models: list[str], targets: dict[str, tuple["PreparedData", str | None]], which: str,
          allow: bool) -> dict[str, dict[str, int]]:
    """{model: {target label: trained cold items}} for every recorded model (`targets`: label ->
    (prepared folder, part)); BeerayError on the first overlap unless `allow`."""
    out: dict[str, dict[str, int]] = {}
    for model in dict.fromkeys(models):
        record = read(model)
        if record is None:
            continue
        out[model] = {}
        for label, (data, part) in targets.items():
            n = trained_cold_items(record, data, which, part)
            if n is None:
                continue
            out[model][label] = n
            if n and not allow:
                cold = len(data.cold_items(which, part))
                where = f"{data.root}" + (f" (its {part} part)" if part else "")
                raise BeerayError(f"{model} trained on {n} of the {cold} {which} cold items of {where}: its score "
                                  f"there would not be a cold-start figure; pass {ALLOW_FLAG} to score it anyway "
                                  "(the results are then marked)")
    return out
