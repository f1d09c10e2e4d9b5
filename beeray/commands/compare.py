"""`beeray compare`: the paper's Table 2 shape — rows = encoders and baselines, a table per dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from beeray import artifacts
from beeray.commands import add_eval_options, eval_targets, print_tables, run_evaluations


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="table of several models x several prepared datasets (same metrics as evaluate)",
        description=(
            "Evaluate every --model and --baseline on every --data split: a table per dataset on screen "
            "(with the popularity oracle's line), and one row per model with <dataset>/<metric> columns "
            "(plus _stderr, /users and the popularity columns) in a CSV, like the paper's Table 2. A multi-dataset "
            "(goodlens) folder gives a table per dataset (LABEL:goodbooks, ...) and one for the whole (LABEL:joint): "
            "the paper's Table 3. A model is refused on cold items it trained on unless --allow-trained-items."
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
    """One CSV row per model or baseline: <dataset>/<column> for every column of its result row."""
    rows = []
    for model, per_data in results.items():
        row: dict = {"model": model}
        for label in labels:
            flat = artifacts.result_row(per_data[label])
            row.update({f"{label}/{k}": v for k, v in flat.items() if k not in ("model", "data", "split", "part")})
        rows.append(row)
    return rows


def run(args) -> int:
    from beeray.data.prepared import PreparedData

    # open every folder before loading any model so a typo fails fast
    loaded = [PreparedData.load(p) for p in args.data]
    labels = dataset_labels(args.data, loaded)
    datasets = dict(zip(labels, loaded))
    results, oracle = run_evaluations(args, datasets, args.split)
    print_tables(results, oracle, args.split, lambda lab: f"{lab} — {args.split} split")

    if args.out:
        if args.out.suffix.lower() == ".csv":
            artifacts.write_csv(args.out, table_rows(results, list(oracle)))
        else:
            artifacts.write_json(args.out, {"split": args.split,
                                            "datasets": {lab: str(data.root)
                                                         for lab, (data, _) in eval_targets(datasets).items()},
                                            "results": results, "oracle": oracle})
        print(f"wrote {args.out}")
    return 0
