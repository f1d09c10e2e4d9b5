"""The reports beeray leaves for people: metric tables, the training history and its plot, the model
card, a search's results and plots. They sit above the evaluator (they read its metric names) and
write through `beeray.files`, the atomic writers every layer shares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from beeray import files
from beeray.metrics import METRICS, VAL_METRICS
from beeray.files import save_figure, write_csv, write_text

if TYPE_CHECKING:
    from beeray.config import TuneConfig


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


POPULARITY_COLUMNS = {"recall@20_head": "R@20 head", "recall@20_middle": "mid", "recall@20_tail": "tail",
                      "popularity_percentile@20": "pop %ile@20"}


def _pct(value) -> str:
    return "-" if value is None else f"{value:.3f}" if value <= 1 else f"{value:.1f}"


def metrics_table(rows: dict[str, dict], oracle: dict | None = None) -> str:
    """One row per named result: metrics ± stderr, users, and how the top 20 uses popularity (recall@20 on
    the head / middle / tail thirds of the candidates' targets, mean popularity percentile). `oracle`,
    the ranking by the split's own target counts, closes the table on a separate, labelled line."""
    header = ["", *METRICS, "users", *POPULARITY_COLUMNS.values()]

    def line(name: str, res: dict) -> list:
        return [name, *(fmt(res, m) for m in METRICS), res.get("users", ""),
                *(_pct(res.get("popularity", {}).get(k)) for k in POPULARITY_COLUMNS)]

    body = [line(name, res) for name, res in rows.items()]
    if oracle is None:
        return text_table(header, body)
    lines = text_table(header, [*body, line(ORACLE_LABEL, oracle)]).splitlines()
    return "\n".join([*lines[:-1], lines[1], lines[-1], ORACLE_NOTE])


ORACLE_LABEL = "(popularity oracle)"
ORACLE_NOTE = ("(popularity oracle) ranks the candidates by how often they are this split's targets: it peeks at "
               "the answers, a ceiling for popularity-only ranking, not a model.")


def result_row(res: dict) -> dict:
    """One flat record of a result: identification (with the part of a multi-dataset folder), user counts,
    how many of the scored cold items the model trained on (models with a training record), metrics, their
    stderr, popularity columns, and for a baseline its chosen parameters and seconds."""
    row = {k: res[k] for k in ("model", "data", "split", "part", "split_digest") if k in res}
    row.update(users=res["users"], excluded_users=res["excluded_users"])
    if "trained_cold_items" in res:  # the model's training record: how many scored cold items it trained on
        row.update(trained_cold_items=res["trained_cold_items"], cold_items=res.get("cold_items"))
    for m in METRICS:
        row[m] = res[m]
        row[f"{m}_stderr"] = res["stderr"][m]
    row.update(res.get("popularity", {}))
    if "seconds" in res:
        row["seconds"] = res["seconds"]
    if "params" in res:
        row.update(params=json.dumps(res["params"], sort_keys=True), fit_s=res.get("fit_s"), score_s=res.get("score_s"))
    return row


# ---------------------------------------------------------------- a training run's files

def history_frame(history: list[dict], steps: list[dict]) -> pd.DataFrame:
    """The training curve as one table: a row per optimizer step (`kind` step: its loss) and a row per
    epoch (`kind` epoch: the epoch's mean loss and validation metrics; epoch 0 = the base model)."""
    epochs = pd.DataFrame(history).assign(kind="epoch")
    per_step = pd.DataFrame(steps).assign(kind="step")
    frame = pd.concat([f for f in (epochs, per_step) if not f.empty], ignore_index=True) if history or steps \
        else pd.DataFrame(columns=["kind", "epoch", "step", "loss"])
    # Sorted along training: a step row sits before the row of the epoch it closes.
    order = frame.assign(_end=(frame["kind"] == "epoch").astype(int)).sort_values(["step", "_end"], kind="stable")
    return order.drop(columns="_end")[["kind"] + [c for c in frame.columns if c != "kind"]].reset_index(drop=True)


def write_history(history: list[dict], steps: list[dict], out: Path, kept_epoch: int | None = None) -> pd.DataFrame:
    """history.csv (and its plot); `kept_epoch`: the epoch whose weights the run saved, marked True in the
    `kept` column of the epoch rows."""
    frame = history_frame(history, steps)
    if kept_epoch is not None and not frame.empty:
        epochs = frame["kind"] == "epoch"
        frame["kept"] = pd.Series(pd.NA, index=frame.index, dtype="boolean")
        frame.loc[epochs, "kept"] = frame.loc[epochs, "epoch"] == kept_epoch
    write_csv(out / "history.csv", frame)
    if not frame.empty:
        plot_history(frame, out / "history.png")
    return frame


def plot_history(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = frame[frame["kind"] == "step"]
    epochs = frame[frame["kind"] == "epoch"]
    trained = epochs[epochs["epoch"] > 0]
    if not steps.empty:
        ax.plot(steps["epoch"], steps["loss"], "-", color="tab:red", alpha=0.35, lw=1, label="step loss")
    ax.plot(trained["epoch"], trained["loss"], "o-", color="tab:red", label="epoch mean loss")
    ax.set_xlabel("epoch (0 = the base model)")
    ax.set_ylabel("training loss (NMSE)", color="tab:red")
    ax.set_xticks(epochs["epoch"])
    kept = epochs.loc[epochs["kept"].fillna(False).astype(bool), "epoch"] if "kept" in epochs else epochs["epoch"][:0]
    if not kept.empty:
        ax.axvline(kept.iloc[0], color="0.4", ls=":", lw=1, label=f"kept: epoch {kept.iloc[0]:g}")
    handles, labels = ax.get_legend_handles_labels()
    cols = [c for c in VAL_METRICS if c in epochs and epochs[c].notna().any()]
    if cols:
        ax2 = ax.twinx()
        for col in cols:
            ax2.plot(epochs["epoch"], epochs[col], "s--", label=f"val {col.removeprefix('val_')}")
        ax2.set_ylabel("validation metric (cold-start items)")
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.set_title("beeray training")
    # One legend for both axes, under the plot, where it cannot cover a curve.
    ncol = min(len(labels), 4)  # more in one row would run off the figure's edges
    rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, fontsize="small")
    fig.tight_layout(rect=(0, 0.07 * rows, 1, 1))
    save_figure(fig, path)


CARD_TAGS = ("beeformer", "sentence-transformers", "recommendation")
CARD_TASK = "cold-start-recommendation"  # model-index task type (free-form on the Hub, like MTEB's "Retrieval")
BEEFORMER_BIBTEX = """@inproceedings{vancura2024beeformer,
  title = {beeFormer: Bridging the Gap Between Semantic and Interaction Similarity in Recommender Systems},
  author = {Van{\\v{c}}ura, Vojt{\\v{e}}ch and Kord{\\'{i}}k, Pavel and Straka, Milan},
  booktitle = {Proceedings of the 18th ACM Conference on Recommender Systems (RecSys '24)},
  year = {2024}
}"""


def hub_model_id(name: str) -> str | None:
    """The Hub id of a base model as beeray names it (`all-MiniLM-L6-v2` -> `sentence-transformers/all-MiniLM-L6-v2`,
    the way sentence-transformers resolves a bare name); None for a local folder or a URL, whose Hub id is unknown."""
    if not name or files.names_place(name):
        return None
    if "/" in name:
        return name if name.count("/") == 1 else None
    try:
        from sentence_transformers.util import ORIGINAL_TRANSFORMER_MODELS
    except ImportError:  # older sentence-transformers
        ORIGINAL_TRANSFORMER_MODELS = []
    return name if name.lower() in ORIGINAL_TRANSFORMER_MODELS else f"sentence-transformers/{name}"


def _base_license(name: str) -> str | None:
    """The license in the base model's own card (its local folder, or the packaged offline copy), else None."""
    from huggingface_hub import ModelCard

    from beeray.models import resolve_model

    try:
        readme = Path(resolve_model(name)) / "README.md"
        if readme.is_file():
            return ModelCard.load(readme, ignore_metadata_errors=True).data.license or None
    except Exception:  # noqa: BLE001 - no card, an unreadable one, a model not installed offline: unknown
        pass
    return None


def model_card(model_dir: Path, cfg: dict, stats: dict, metrics: dict, model=None,
               fingerprint: str | None = None, kept: dict | None = None, split_digest: str | None = None) -> Path:
    """Write `model_dir/README.md`: sentence-transformers' own model card, filled through its card data
    (base model, datasets, language, license where the base model's card states one, tags), with the
    trained model's test metrics as `model-index` and beeray's training record below. Offline: the card
    data is told never to look the base model or datasets up on the Hub. `model`: the loaded model,
    else it is loaded from `model_dir`."""
    from huggingface_hub import ModelCard
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.model_card import generate_model_card

    model_dir = Path(model_dir)
    if model is None:
        # local_files_only: loading would otherwise ask the Hub about the folder's name as a base model
        model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True,
                                    trust_remote_code=bool(cfg.get("trust_remote_code"))).float()
    split = stats.get("split", {})
    kind = split.get("kind", "item")
    dataset = str(stats.get("dataset") or Path(cfg["data"]).name)
    parts = sorted(stats.get("per_dataset", {}))  # a goodlens folder's datasets
    base = hub_model_id(cfg["model"])

    card = model.model_card_data
    card.local_files_only = True  # no Hub look-ups (base model, datasets) while the card is generated
    card.base_model = base  # set_base_model would ask the Hub whether the id exists
    card.base_model_revision = None
    card.model_name = f"{base or Path(cfg['model']).name} fine-tuned with beeFormer on {dataset}"
    card.set_language("en")
    card.license = _base_license(cfg["model"])
    card.add_tags(list(CARD_TAGS))
    card.datasets = parts or [dataset]
    card.citations = {**card.citations, "beeFormer": BEEFORMER_BIBTEX}
    text = generate_model_card(model)

    results = card_eval_results(metrics, dataset, kind)
    hub = ModelCard(text)
    if results:
        hub.data.model_name = card.model_name
        hub.data.eval_results = results

    lines = card_training_section(model_dir, cfg, stats, metrics, dataset, parts, fingerprint, kept, split_digest)
    hub.text = hub.text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    content = str(hub)
    ModelCard(content)  # parses the metadata back (model-index included): raises rather than write a bad card
    readme = model_dir / "README.md"
    write_text(readme, content)
    return readme


# ---------------------------------------------------------------- a search's results (beeray tune)

@dataclass
class TrialRow:
    trial_id: str
    config: dict
    history: list[dict]  # one row per epoch with the validation metrics
    status: str
    time_s: float | None
    error: str | None
    best: float | None = None
    best_epoch: int | None = None



def card_eval_results(metrics: dict, dataset: str, kind: str) -> list:
    """The trained model's test (else validation) metrics as huggingface_hub EvalResults: the card's
    model-index. sentence-transformers builds one only from its own evaluators, so the metrics go in
    through huggingface_hub's EvalResult (which also validates them when the card is loaded)."""
    from huggingface_hub import EvalResult

    trained = metrics.get("trained", {})
    split_name = "test" if "test" in trained else "val" if "val" in trained else None
    return [] if split_name is None else [
        EvalResult(task_type=CARD_TASK, task_name="Cold-start recommendation (beeray)", dataset_type=dataset,
                   dataset_name=dataset, dataset_config=f"{kind} split",
                   dataset_split="test" if split_name == "test" else "validation",
                   metric_type=m.replace("@", "_at_"), metric_name=m, metric_value=float(trained[split_name][m]))
        for m in METRICS]


def card_training_section(model_dir: Path, cfg: dict, stats: dict, metrics: dict, dataset: str, parts: list[str],
                          fingerprint: str | None, kept: dict | None, split_digest: str | None) -> list[str]:
    """The card's "beeray training" section: what the model trained on and what it withheld, the split's
    digest, the kept epoch, the fingerprint, the training record, the metrics table and the recipe."""
    import yaml

    from beeray import training_record

    split = stats.get("split", {})
    kind = split.get("kind", "item")
    if kind == "item":
        withheld = int(split.get("test_items", 0)) + (0 if cfg.get("full_train") else int(split.get("val_items", 0)))
        cold = (f"{withheld} cold items withheld from training ("
                + (f"the {split.get('test_items')} test items; the validation cold items were trained on"
                   if cfg.get("full_train") else
                   f"{split.get('val_items')} validation + {split.get('test_items')} test items") + ")")
    else:
        cold = f"no cold items ({kind} split: each user's later interactions are withheld instead)"
    record = training_record.read(model_dir)
    lines = [
        "", "## beeray training", "",
        f"Trained with beeray (the beeFormer method) from `{cfg['model']}` on the prepared "
        f"data set `{dataset}`" + (f" (datasets {', '.join(parts)})" if parts else "")
        + f": {stats.get('users')} users, {stats.get('items')} items, {stats.get('interactions')} interactions, "
        f"{'train + validation' if cfg.get('full_train') else 'training'} part of its {kind} split.", "",
        f"- data fingerprint: `{stats.get('fingerprint')}`",
        *([f"- split digest: `sha256:{split_digest}` (the cold items are listed in the prepared folder's "
           "`split_items.tsv`; `beeray prepare --split-items` reproduces the split)"] if split_digest else []),
        f"- {cold}",
    ]
    if kept:
        from beeray.checkpoint import kept_text

        lines.append(f"- the weights of {kept_text(kept)}")
    if fingerprint:
        lines.append(f"- model fingerprint: `{fingerprint}` (SHA-256 over this folder's weights, configs and "
                     "tokenizer; `beeray embed` records it, and `beeray recommend --model` checks it)")
    if record is not None:
        lines.append(f"- `{training_record.RECORD}` in this folder lists the {len(record['item_ids'])} items the "
                     "model trained on (dataset-qualified ids, with the prepared folder and its fingerprint); "
                     "`beeray evaluate` refuses to score it on those items as cold ones unless "
                     f"{training_record.ALLOW_FLAG}")
    if metrics:
        lines += ["", "### Metrics (cold-start items)", "",
                  "| model | split | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for who, per_split in metrics.items():
            for name, res in per_split.items():
                lines.append(f"| {who} | {name} | " + " | ".join(f"{res[m]:.4f}" for m in METRICS) + " |")
    lines += ["", "### Recipe (beeray TrainConfig)", "", "```yaml",
              yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False).rstrip(), "```"]
    return lines


def _error_summary(error: Any) -> str:
    """One line for a failed trial: the innermost "...Error: ..." line of Ray's wrapped traceback."""
    text = str(error).strip()
    # Ray wraps the cause; its last "Error: ..." line is the one that says what happened.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    causes = [ln for ln in lines if "Error" in ln.split(":")[0] or "Exception" in ln.split(":")[0]]
    return (causes[-1] if causes else lines[0] if lines else type(error).__name__)[:300]


def collect(result_grid, cfg: "TuneConfig") -> list[TrialRow]:
    """One row per trial of a Ray Tune ResultGrid: its sampled values, per-epoch validation, best epoch."""
    rows = []
    better = max if cfg.search.mode == "max" else min
    for res in result_grid:
        trial_id = (res.metrics or {}).get("trial_id") or Path(res.path).name
        frame = res.metrics_dataframe
        history: list[dict] = []
        if frame is not None and not frame.empty and cfg.search.metric in frame:
            # epoch-end reports of trained epochs (epoch 0 is the base model, mid-epoch reports repeat
            # the newest validation)
            frame = frame[frame["epoch_end"].astype(bool) & (frame["epoch"] > 0) & frame[cfg.search.metric].notna()]
            keep = [c for c in ("epoch", "loss", *VAL_METRICS) if c in frame]
            history = frame[keep].to_dict("records")
        time_s = (res.metrics or {}).get("time_total_s")
        row = TrialRow(trial_id=str(trial_id), config={s.name: res.config.get(s.name) for s in cfg.space},
                       history=history, status="ERROR" if res.error else "TERMINATED",
                       time_s=time_s, error=_error_summary(res.error) if res.error else None)
        if history:
            best = better(history, key=lambda h: h[cfg.search.metric])
            row.best, row.best_epoch = float(best[cfg.search.metric]), int(best["epoch"])
        rows.append(row)
    return rows  # in the order Tune created the trials


def results_frame(rows: list[TrialRow], cfg: "TuneConfig") -> pd.DataFrame:
    records = []
    for row in rows:
        rec: dict = {"trial_id": row.trial_id, **row.config}
        for h in row.history:
            for m in VAL_METRICS:
                if m in h:
                    rec[f"{m}_epoch{int(h['epoch'])}"] = h[m]
        rec.update({f"best_{cfg.search.metric}": row.best, "best_epoch": row.best_epoch, "epochs_run": len(row.history),
                    "status": row.status, "time_s": row.time_s, "error": row.error})
        records.append(rec)
    frame = pd.DataFrame(records)
    # Epoch columns in epoch order, whatever order the trials reported them in.
    fixed = ["trial_id", *[s.name for s in cfg.space]]
    tail = [f"best_{cfg.search.metric}", "best_epoch", "epochs_run", "status", "time_s", "error"]
    middle = sorted((c for c in frame.columns if c not in fixed + tail),
                    key=lambda c: (VAL_METRICS.index(c.rsplit("_epoch", 1)[0]), int(c.rsplit("_epoch", 1)[1])))
    return frame.reindex(columns=fixed + middle + tail)


def plot_trials(rows: list[TrialRow], cfg: "TuneConfig", best: TrialRow, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        if not row.history:
            continue
        epochs = [h["epoch"] for h in row.history]
        values = [h[cfg.search.metric] for h in row.history]
        is_best = row is best
        ax.plot(epochs, values, "o-", lw=2.5 if is_best else 1, alpha=1 if is_best else 0.6,
                label=f"{row.trial_id}{' (best)' if is_best else ''}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{cfg.search.metric} (validation)")
    ax.set_xticks(range(1, cfg.max_epochs + 1))
    ax.set_title(f"beeray tune: {len(rows)} trials")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path)


def plot_hyperparameters(rows: list[TrialRow], cfg: "TuneConfig", best: TrialRow, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(cfg.space)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False)
    scored = [r for r in rows if r.best is not None]
    for ax, spec in zip(axes[0], cfg.space):
        xs = [r.config[spec.name] for r in scored]
        ys = [r.best for r in scored]
        if spec.type == "choice" and not all(isinstance(x, (int, float)) for x in xs):
            labels = [str(v) for v in spec.values]
            xs = [labels.index(str(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels)
        ax.scatter(xs, ys, c=["tab:red" if r is best else "tab:blue" for r in scored], zorder=3)
        if spec.log_scale:
            ax.set_xscale("log")
        ax.set_xlabel(spec.name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"best {cfg.search.metric}")
    fig.suptitle("validation metric against each searched hyperparameter (red: best trial)")
    fig.tight_layout()
    save_figure(fig, path)
