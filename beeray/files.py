"""Where beeray's files go: written so that a crash never leaves half a file or half a folder.

The bottom of the package's I/O (it imports nothing of beeray but its errors): every writer above it
(reports, model folders, prepared data, embeddings, checkpoints' copies) goes through these. A file
is written to a temporary sibling and renamed into place (a rename within one folder is atomic on
POSIX file systems); a folder is built beside its destination and then swapped in. The run-folder
layout (`prepare_run_dir`) lives here too.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from beeray.errors import BeerayError

if TYPE_CHECKING:
    import pandas as pd


def local_path(value: str | Path, what: str = "--out") -> Path:
    """`value` as a local (or mounted) path; a URL (s3://, gs://, ...) is refused in one line, where
    pathlib would silently turn "s3://bucket/run" into a local folder "s3:/bucket/run"."""
    text = str(value)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", text):
        raise BeerayError(f"{what} {text}: a URL; beeray reads and writes local or mounted (NFS/EFS) folders "
                          "only, object storage is not supported yet (docs/cluster.md, section 5)")
    return Path(text)


def path_arg(what: str, kind: type = str):
    """An argparse `type` that accepts local paths only (`local_path`), so a URL fails before anything
    runs; the value comes back as `kind` (str or Path)."""
    import argparse

    def parse(value: str):
        try:
            local_path(value, what)
        except BeerayError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{what} ")) from None
        return kind(value)

    return parse


# ---------------------------------------------------------------- atomic writes

@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def write_csv(path: str | Path, rows: "list[dict] | pd.DataFrame") -> None:
    """A CSV from records (columns in first-seen order) or a DataFrame."""
    with atomic_path(path) as tmp:
        if hasattr(rows, "to_csv"):  # a DataFrame (pandas is not imported at this layer)
            rows.to_csv(tmp, index=False)
            return
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def save_figure(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


@contextlib.contextmanager
def staged_dir(dst: str | Path, keep_existing: Callable[[], bool] | None = None):
    """Yield an empty folder beside `dst`; when the block succeeds it becomes `dst`, else it is removed.

    An old `dst` is replaced (`swap_dir`), except one that `keep_existing()` accepts: a finished copy
    that a concurrent writer put there first stays, so processes building the same folder at once
    (Ray workers on one node) all end with one complete copy.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if keep_existing is None or not keep_existing():
            try:
                swap_dir(tmp, dst)
            except OSError:
                if keep_existing is None or not keep_existing():  # not a concurrent writer's copy
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Copy folder `src` to `dst`, replacing what was there only once the copy is complete."""
    with staged_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def swap_dir(new: Path, dst: Path) -> None:
    """Move the finished folder `new` to `dst` (same parent), replacing an old `dst` if present."""
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
        os.replace(new, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dst)


# ---------------------------------------------------------------- run folders

def prepare_run_dir(out: str | Path, *, state: str, config_file: str, config: dict, resume: bool,
                    conflicts, what: str) -> Path:
    """Create (or reopen, with --resume) the output folder of a run or search, and record its config.

    `state`: the sub-folder where Ray keeps the run's state (its existence means a run was
    started here); `conflicts(saved_config) -> list[str]`: the differences that forbid continuing.
    """
    out = local_path(out, "--out").expanduser().resolve()
    state_dir = out / state
    saved = out / config_file
    if resume:
        if not state_dir.exists() or not saved.exists():
            raise BeerayError(f"--resume: no previous {what} in {out}")
        changed = conflicts(json.loads(saved.read_text()))
        if changed:
            raise BeerayError(f"--resume: the {what} in {out} was started with a different config "
                              f"({', '.join(changed)})")
    elif state_dir.exists():
        raise BeerayError(f"{out} already holds a {what}: pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(saved, config)
    return out
