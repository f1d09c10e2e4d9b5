"""`beeray evaluate`: cold-start / time-split metrics of one or more encoders on a prepared split."""

from __future__ import annotations

import argparse
from pathlib import Path

from beeray import artifacts
from beeray.commands import add_eval_options, eval_kwargs
from beeray.evaluate import METRICS
from beeray.models import DEFAULT_MODEL


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
    add_eval_options(p)
    p.add_argument("--split", choices=["val", "test"], default="val", help="which split to score (default: val)")
    p.add_argument("--out", type=Path, help="write results: .csv gives one row per model, anything else JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from beeray.data.prepared import PreparedData
    from beeray.evaluate import evaluate_models

    data = PreparedData.load(args.data)
    models = list(dict.fromkeys(args.model or [DEFAULT_MODEL]))
    label = str(args.data)
    per_model = evaluate_models(models, {label: data}, args.split, device=args.device, **eval_kwargs(args))
    results = [per[label] for per in per_model.values()]

    print(f"\n{args.data} — {args.split} split")
    if len(results) == 1:
        res = results[0]
        print(f"model: {res['model']}  (excluded users: {res['excluded_users']})")
        print(artifacts.text_table(["metric", "value ± stderr", "users"],
                                   [[m, artifacts.fmt(res, m), res["users"]] for m in METRICS]))
    else:
        print(artifacts.text_table(["model", *METRICS, "users"],
                                   [[r["model"], *(artifacts.fmt(r, m) for m in METRICS), r["users"]] for r in results]))

    if args.out:
        if args.out.suffix.lower() == ".csv":
            artifacts.write_csv(args.out, [artifacts.result_row(r) for r in results])
        else:
            # one model: a single result object; several: a list of them, same shape each
            artifacts.write_json(args.out, results[0] if len(results) == 1 else results)
        print(f"wrote {args.out}")
    return 0
