"""Files a finished run leaves for people: history CSV + PNG, metrics JSON, a model card."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

METRICS = ("recall@20", "recall@50", "ndcg@100")


def write_history(history: list[dict], out: Path) -> pd.DataFrame:
    frame = pd.DataFrame(history)
    frame.to_csv(out / "history.csv", index=False)
    if not frame.empty:
        plot_history(frame, out / "history.png")
    return frame


def plot_history(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(frame["epoch"], frame["loss"], "o-", color="tab:red", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (NMSE)", color="tab:red")
    ax.set_xticks(frame["epoch"])
    cols = [f"val_{m}" for m in METRICS if f"val_{m}" in frame]
    if cols:
        ax2 = ax.twinx()
        for col in cols:
            ax2.plot(frame["epoch"], frame[col], "s--", label=col.removeprefix("val_"))
        ax2.set_ylabel("validation metric (cold-start items)")
        ax2.legend(loc="lower right")
    ax.set_title("beeray training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(obj: dict, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n")


def metrics_table(rows: dict[str, dict]) -> str:
    """Aligned text table: one row per model/split, metric columns with ± stderr."""
    header = f"{'':<24}" + "".join(f"{m:>20}" for m in METRICS) + f"{'users':>8}"
    lines = [header]
    for name, res in rows.items():
        cells = []
        for m in METRICS:
            err = res.get("stderr", {}).get(m)
            cells.append(f"{res[m]:.4f} ± {err:.4f}" if err is not None else f"{res[m]:.4f}")
        lines.append(f"{name:<24}" + "".join(f"{c:>20}" for c in cells) + f"{res.get('users', ''):>8}")
    return "\n".join(lines)


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
    readme.write_text(text + "\n".join(lines) + "\n")
