"""`beeray compare`: the paper's Table 2 shape — rows = models, columns = dataset x metric."""

from __future__ import annotations

import argparse
from pathlib import Path

from beeray import artifacts
from beeray.commands import add_eval_options, eval_kwargs
from beeray.evaluate import METRICS
from beeray.models import DEFAULT_MODEL


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="table of several models x several prepared datasets (same metrics as evaluate)",
        description=(
            "Evaluate every --model on every --data split and write one row per model with "
            "<dataset>/<metric> columns (plus _stderr and /users), like the paper's Table 2."
        ),
    )
    p.add_argument("--data", required=True, action="append", type=Path, metavar="DIR",
                   help="prepared folder; repeat for several datasets")
    add_eval_options(p)
    p.add_argument("--split", choices=["val", "test"], default="test", help="which split (default: test)")
    p.add_argument("--out", type=Path, help="table file: .csv, or JSON for any other suffix")
    p.set_defaults(func=run)


def dataset_labels(paths: list[Path], datasets: list) -> list[str]:
    """Column prefix per dataset: stats.json's name, falling back to the folder name on clashes."""
    names = [str((getattr(d, "stats", None) or {}).get("dataset") or p.name) for p, d in zip(paths, datasets)]
    if len(set(names)) < len(names):
        names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names


def table_rows(results: dict[str, dict], labels: list[str]) -> list[dict]:
    rows = []
    for model, per_data in results.items():
        row: dict = {"model": model}
        for label in labels:
            res = per_data[label]
            for m in METRICS:
                row[f"{label}/{m}"] = res[m]
                row[f"{label}/{m}_stderr"] = res["stderr"][m]
            row[f"{label}/users"] = res["users"]
        rows.append(row)
    return rows


def run(args) -> int:
    from beeray.data.prepared import PreparedData
    from beeray.evaluate import evaluate_models

    # open every folder before loading any model so a typo fails fast
    loaded = [PreparedData.load(p) for p in args.data]
    labels = dataset_labels(args.data, loaded)
    datasets = dict(zip(labels, loaded))
    models = list(dict.fromkeys(args.model or [DEFAULT_MODEL]))
    results = evaluate_models(models, datasets, args.split, device=args.device, **eval_kwargs(args))

    print(f"\n{args.split} split")
    header = ["model", *(f"{lab} {m}" for lab in labels for m in METRICS)]
    print(artifacts.text_table(header, [[model, *(artifacts.fmt(per[lab], m) for lab in labels for m in METRICS)]
                                        for model, per in results.items()]))
    print("users: " + ", ".join(f"{lab}={results[models[0]][lab]['users']}" for lab in labels))

    if args.out:
        if args.out.suffix.lower() == ".csv":
            artifacts.write_csv(args.out, table_rows(results, labels))
        else:
            artifacts.write_json(args.out, {"split": args.split,
                                            "datasets": {lab: str(d.root) for lab, d in datasets.items()},
                                            "results": results})
        print(f"wrote {args.out}")
    return 0
