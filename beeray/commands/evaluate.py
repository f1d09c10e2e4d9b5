"""`beeray evaluate`: cold-start / time-split metrics of encoders and baselines on a prepared split."""

from __future__ import annotations

import argparse
from pathlib import Path

import json

from beeray import artifacts
from beeray.commands import add_eval_options, run_evaluations


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="cold-start / time-split metrics of sentence encoders on a prepared dataset",
        description=(
            "Encode the split's items with each model, score users with relu(x Â Âᵀ − x) over the "
            "split's candidates and report CalibratedRecall@20/@50 and NDCG@100 (RecPack) with "
            "bootstrap standard errors, plus Recall@20 on the head / middle / tail thirds of the targets by "
            "popularity. Several --model evaluate each on the same split (a model trained on another dataset "
            "gives the cross-dataset / zero-shot figure); --baseline adds baselines scored the same way. The "
            "popularity oracle (candidates ranked by the split's own target counts) closes the table."
        ),
    )
    p.add_argument("--data", required=True, type=Path, help="prepared folder (from `beeray prepare`)")
    add_eval_options(p)
    p.add_argument("--split", choices=["val", "test"], default="val", help="which split to score (default: val)")
    p.add_argument("--out", type=Path, help="write results: .csv gives one row per model, anything else JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from beeray.data.prepared import PreparedData

    data = PreparedData.load(args.data)
    label = str(args.data)
    rows, oracle = run_evaluations(args, {label: data}, args.split)
    results = [per[label] for per in rows.values()]

    print(f"\n{args.data} — {args.split} split (excluded users: {results[0]['excluded_users']})")
    print(artifacts.metrics_table({name: per[label] for name, per in rows.items()}, oracle=oracle[label]))
    for res in results:
        if "params" in res:
            print(f"{res['model']}: {json.dumps(res['params'], sort_keys=True)} (chosen on validation), "
                  f"fit {res['fit_s']:.1f}s, scoring {res['score_s']:.1f}s")

    if args.out:
        if args.out.suffix.lower() == ".csv":
            artifacts.write_csv(args.out, [artifacts.result_row(r) for r in results])
        else:
            # one row: a single result object; several: a list of them, same shape each
            artifacts.write_json(args.out, results[0] if len(results) == 1 else results)
        print(f"wrote {args.out}")
    return 0
