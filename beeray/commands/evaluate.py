"""`beeray evaluate`: CBF metrics of one or more encoders on a prepared split (zero-shot or trained)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from beeray.errors import BeerayError
from beeray.models import DEFAULT_MODEL

METRIC_NAMES = ("recall@20", "recall@50", "ndcg@100")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="cold-start / time-split metrics of sentence encoders on a prepared dataset",
        description=(
            "Encode the split's items with each model, score users with relu(x Â Âᵀ − x) over the "
            "split's candidates and report CalibratedRecall@20/@50 and NDCG@100 (RecPack) with "
            "bootstrap standard errors. Several --model evaluate each on the same split (a model "
            "trained on another dataset gives the cross-dataset / zero-shot figure)."
        ),
    )
    p.add_argument("--data", required=True, type=Path, help="prepared folder (from `beeray prepare`)")
    add_common_args(p)
    p.add_argument("--split", choices=["val", "test"], default="val", help="which split to score (default: val)")
    p.add_argument("--out", type=Path, help="write results: .csv gives one row per model, anything else JSON")
    p.set_defaults(func=run)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options shared with `beeray compare`."""
    p.add_argument("--model", action="append", metavar="M",
                   help=f"hub name or local folder; repeat to compare (default: {DEFAULT_MODEL})")
    p.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch (default: 64)")
    p.add_argument("--batch-users", type=int, default=1024, help="users scored at once (default: 1024)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for stderr (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="encoder device (default: auto)")


def load_data(path: Path):
    """Open a prepared folder, with a clear error when it is not there."""
    from beeray.data.prepared import PreparedData

    path = Path(path)
    if not path.is_dir():
        raise BeerayError(f"{path}: data folder not found (create it with `beeray prepare`)")
    return PreparedData.load(path)


def evaluate_models(models: list[str], datasets: dict[str, object], split: str, args) -> dict[str, dict]:
    """{model: {dataset label: result}}; each model is loaded once and scored on every dataset."""
    from beeray.evaluate import evaluate
    from beeray.models import load_model

    out: dict[str, dict] = {}
    for name in models:
        model = load_model(name, device=args.device)
        out[name] = {}
        for label, data in datasets.items():
            print(f"evaluating {name} on {label} ({split})", flush=True)
            res = evaluate(model, data, split, batch_size=args.batch_size, batch_users=args.batch_users,
                           bootstrap=args.bootstrap, seed=args.seed)
            out[name][label] = {"model": name, "data": str(data.root), "split": split, **res}
    return out


def fmt(res: dict, metric: str) -> str:
    return f"{res[metric]:.4f} ± {res['stderr'][metric]:.4f}"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def flat_row(res: dict) -> dict:
    """One CSV row: metrics, their stderr, and the user counts."""
    row = {"model": res["model"], "data": res["data"], "split": res["split"],
           "users": res["users"], "excluded_users": res["excluded_users"]}
    for m in METRIC_NAMES:
        row[m] = res[m]
        row[f"{m}_stderr"] = res["stderr"][m]
    return row


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def run(args) -> int:
    data = load_data(args.data)
    models = list(dict.fromkeys(args.model or [DEFAULT_MODEL]))
    label = str(args.data)
    results = [per[label] for per in evaluate_models(models, {label: data}, args.split, args).values()]

    print(f"\n{args.data} — {args.split} split")
    if len(results) == 1:
        res = results[0]
        print(f"model: {res['model']}  (excluded users: {res['excluded_users']})")
        print_table(["metric", "value ± stderr", "users"], [[m, fmt(res, m), str(res["users"])] for m in METRIC_NAMES])
    else:
        print_table(["model", *METRIC_NAMES, "users"],
                    [[r["model"], *(fmt(r, m) for m in METRIC_NAMES), str(r["users"])] for r in results])

    if args.out:
        if args.out.suffix.lower() == ".csv":
            write_csv(args.out, [flat_row(r) for r in results])
        else:
            # one model: a single result object; several: a list of them, same shape each
            write_json(args.out, results[0] if len(results) == 1 else results)
        print(f"wrote {args.out}")
    return 0
