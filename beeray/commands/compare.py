"""`beeray compare`: the paper's Table 2 shape — rows = encoders and baselines, a table per dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from beeray import artifacts, files
from beeray.commands import add_eval_options, print_tables, run_evaluations
from beeray.comparison import ALPHA, check_references, dataset_labels, eval_targets, paired_table, row_names
from beeray.commands import path_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="table of several models x several prepared datasets (same metrics as evaluate)",
        description=(
            "Evaluate every --model and --baseline on every --data split: a table per dataset on screen "
            "(with the popularity oracle's line), and one row per model with <dataset>/<metric> columns "
            "(plus _stderr, /users and the popularity columns) in a CSV, like the paper's Table 2. A multi-dataset "
            "(goodlens) folder gives a table per dataset (LABEL:goodbooks, ...) and one for the whole (LABEL:joint): "
            "the paper's Table 3. A model is refused on cold items it trained on unless --allow-trained-items. "
            "Every row is also compared with the --reference row on the same users: the mean per-user difference, "
            "its paired bootstrap stderr, and a verdict with Holm's correction over the table's comparisons."
        ),
    )
    p.add_argument("--data", required=True, action="append", type=path_arg("--data", Path), metavar="DIR",
                   help="prepared folder; repeat for several datasets")
    add_eval_options(p)
    p.add_argument("--split", choices=["val", "test"], default="test", help="which split (default: test)")
    p.add_argument("--out", type=path_arg("--out", Path), help="table file: .csv, or JSON for any other suffix")
    p.add_argument("--reference", action="append", metavar="ROW",
                   help="the row every other row is compared with, paired (a --model, or baseline:NAME; "
                        "default: the first --model, else the first --baseline); repeat for several, each "
                        "with its own table of paired differences")
    p.set_defaults(func=run)


def print_paired(paired: dict, reference: str) -> None:
    from beeray.metrics import METRICS

    for label, per in paired.items():  # per target
        if not per:
            continue
        n = sum(len(cells) for cells in per.values())
        print(f"\n{label}: each row minus {reference}, on the same users (mean per-user difference ± paired "
              f"bootstrap stderr; verdict at Holm-adjusted p < {ALPHA} over these {n} comparisons)")
        for row, cells in per.items():
            print(f"  {row}: " + "; ".join(f"{m} {c['diff']:+.4f} ± {c['stderr']:.4f} ({c['verdict']}, p_holm "
                                          f"{c['p_holm']:.2g})" for m, c in ((m, cells[m]) for m in METRICS)))


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
    rows = row_names(args.model or (), dict.fromkeys(args.baseline or []))
    references = list(dict.fromkeys(args.reference or rows[:1]))
    check_references(references, rows)
    results, oracle = run_evaluations(args, datasets, args.split, per_user=True)
    paired = {ref: paired_table(results, ref, list(oracle), args.bootstrap, args.seed) for ref in references}
    for res in [*oracle.values(), *(r for per in results.values() for r in per.values())]:
        res.pop("per_user", None)  # what the paired comparison needed; too long for the outputs
    print_tables(results, oracle, args.split, lambda lab: f"{lab} — {args.split} split")
    for reference, tables in paired.items():
        print_paired(tables, reference)

    if args.out:
        if args.out.suffix.lower() == ".csv":
            files.write_csv(args.out, table_rows(results, list(oracle)))
        else:
            files.write_json(args.out, {"split": args.split,
                                            "datasets": {lab: str(data.root)
                                                         for lab, (data, _) in eval_targets(datasets).items()},
                                            "results": results, "oracle": oracle,
                                            "paired": {"alpha": ALPHA, "by_reference": paired}})
        print(f"wrote {args.out}")
    return 0
