"""Every file beeray leaves for people, written so that a crash never leaves half a file.

One home for the writers: JSON, CSV, PNG, metric tables, the training history and the model
card. Each file is written to a temporary sibling and renamed into place (a rename within one
folder is atomic on POSIX file systems), and a folder is copied beside its destination and then
swapped in.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pandas as pd

from beeray.errors import BeerayError
from beeray.evaluate import METRICS, VAL_METRICS


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


def write_csv(path: str | Path, rows: list[dict] | pd.DataFrame) -> None:
    """A CSV from records (columns in first-seen order) or a DataFrame."""
    with atomic_path(path) as tmp:
        if isinstance(rows, pd.DataFrame):
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


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Copy folder `src` to `dst`, replacing what was there only once the copy is complete."""
    dst = Path(dst)
    tag = uuid.uuid4().hex[:8]
    tmp = dst.parent / f".{dst.name}.new-{tag}"
    shutil.copytree(src, tmp)
    swap_dir(tmp, dst)


def swap_dir(new: Path, dst: Path) -> None:
    """Move the finished folder `new` to `dst` (same parent), replacing an old `dst` if present."""
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
        os.replace(new, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dst)


# ---------------------------------------------------------------- tables

def fmt(res: dict, metric: str) -> str:
    """`value ± stderr` of one metric of one result."""
    err = res.get("stderr", {}).get(metric)
    return f"{res[metric]:.4f} ± {err:.4f}" if err is not None else f"{res[metric]:.4f}"


def text_table(header: list[str], rows: list[list]) -> str:
    """Left-aligned columns with a rule under the header."""
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def metrics_table(rows: dict[str, dict]) -> str:
    """One row per named result (model / split), metric columns with ± stderr, and the user count."""
    return text_table(["", *METRICS, "users"],
                      [[name, *(fmt(res, m) for m in METRICS), res.get("users", "")] for name, res in rows.items()])


def result_row(res: dict) -> dict:
    """One flat record of a result: identification, metrics, their stderr, user counts."""
    row = {k: res[k] for k in ("model", "data", "split") if k in res}
    row.update(users=res["users"], excluded_users=res["excluded_users"])
    for m in METRICS:
        row[m] = res[m]
        row[f"{m}_stderr"] = res["stderr"][m]
    return row


# ---------------------------------------------------------------- a training run's files

def write_history(history: list[dict], out: Path) -> pd.DataFrame:
    frame = pd.DataFrame(history)
    write_csv(out / "history.csv", frame)
    if not frame.empty:
        plot_history(frame, out / "history.png")
    return frame


def plot_history(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    trained = frame[frame["epoch"] > 0]
    ax.plot(trained["epoch"], trained["loss"], "o-", color="tab:red", label="training loss")
    ax.set_xlabel("epoch (0 = the base model)")
    ax.set_ylabel("training loss (NMSE)", color="tab:red")
    ax.set_xticks(frame["epoch"])
    cols = [c for c in VAL_METRICS if c in frame]
    if cols:
        ax2 = ax.twinx()
        for col in cols:
            ax2.plot(frame["epoch"], frame[col], "s--", label=col.removeprefix("val_"))
        ax2.set_ylabel("validation metric (cold-start items)")
        ax2.legend(loc="lower right")
    ax.set_title("beeray training")
    fig.tight_layout()
    save_figure(fig, path)


def model_card(model_dir: Path, cfg: dict, stats: dict, metrics: dict) -> None:
    """Append beeray's training record to the README.md that sentence-transformers writes."""
    readme = model_dir / "README.md"
    text = readme.read_text() if readme.exists() else ""
    lines = [
        "", "## beeray training", "",
        f"Trained with beeray (beeFormer method) from `{cfg['model']}` on the prepared data set "
        f"`{stats.get('dataset', cfg['data'])}` ({stats.get('users')} users, {stats.get('items')} items, "
        f"{stats.get('interactions')} interactions), {'train + validation' if cfg['full_train'] else 'training'} "
        f"part of its {stats.get('split', {}).get('kind', 'item')} split.", "",
        "| hyperparameter | value |", "|---|---|",
    ]
    for key in ("lr", "epochs", "batch_size", "m", "max_seq_length", "encode_batch_size", "seed", "parallel",
                "num_workers"):
        lines.append(f"| {key} | {cfg[key]} |")
    if metrics:
        lines += ["", "| model | split | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for who, per_split in metrics.items():
            for split, res in per_split.items():
                lines.append(f"| {who} | {split} | " + " | ".join(f"{res[m]:.4f}" for m in METRICS) + " |")
    write_text(readme, text + "\n".join(lines) + "\n")


# ---------------------------------------------------------------- run folders

def prepare_run_dir(out: str | Path, *, state: str, config_file: str, config: dict, resume: bool,
                    conflicts, what: str) -> Path:
    """Create (or reopen, with --resume) the output folder of a run or search, and record its config.

    `state`: the sub-folder where Ray keeps the run's state (its existence means a run was
    started here); `conflicts(saved_config) -> list[str]`: the differences that forbid continuing.
    """
    out = Path(out).expanduser().resolve()
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
