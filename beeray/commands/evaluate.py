"""`beeray evaluate`: cold-start / time-split metrics of encoders and baselines on a prepared split."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import json

from beeray import artifacts, files
from beeray.commands import add_eval_options, print_tables, run_evaluations
from beeray.commands import path_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="cold-start / time-split metrics of sentence encoders on a prepared dataset",
        description="\n\n".join(textwrap.fill(par, 100) for par in (
            "Encode the split's items with each model, score users with relu(x Â Âᵀ − x) over the "
            "split's candidates and report calibrated Recall@20/@50 (hits / min(K, targets)) and NDCG@100, as RecPack defines them, with "
            "bootstrap standard errors, plus Recall@20 on the head / middle / tail thirds of the targets by "
            "popularity. Several --model evaluate each on the same split (a model trained on another dataset "
            "gives the cross-dataset / zero-shot figure); --baseline adds baselines scored the same way. The "
            "popularity oracle (candidates ranked by the split's own target counts) closes the table.",
            "On a multi-dataset (goodlens) folder every model and baseline gets one labelled result per dataset "
            "(DATA:goodbooks, DATA:movielens: that dataset's users, its own cold items as candidates; the same "
            "items `beeray prepare KIND` gives that dataset alone), then DATA:joint for the whole folder.",
            "A model folder written by beeray train/tune records the items it trained on (beeray_training.json.gz): "
            "scoring it on a split whose cold items it trained on is refused (exit 2) unless "
            "--allow-trained-items, which marks its results (trained_cold_items; (!) in the table).")),
        epilog="examples:\n"
               "  beeray evaluate --data data/ml --model all-MiniLM-L6-v2 --split val\n"
               "  beeray evaluate --data data/ml --model runs/ml/model --baseline heater --split test --out ml.csv\n"
               "  beeray evaluate --data data/goodlens --model runs/goodlens/model --model runs/ml/model --split test",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=path_arg("--data", Path), help="prepared folder (from `beeray prepare`)")
    add_eval_options(p)
    p.add_argument("--split", choices=["val", "test"], default="val", help="which split to score (default: val)")
    p.add_argument("--out", type=path_arg("--out", Path), help="write results: .csv gives one row per model (and per dataset of a "
                                            "goodlens folder), anything else JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from beeray.data.prepared import PreparedData

    data = PreparedData.load(args.data)
    rows, oracle = run_evaluations(args, {str(args.data): data}, args.split)
    results = [per[label] for label in oracle for per in rows.values()]  # by target, then by row

    print_tables(rows, oracle, args.split,
                 lambda label: f"{label} — {args.split} split (excluded users: {oracle[label]['excluded_users']})")
    for res in results:
        if "params" in res:
            where = f" on {res['part']}" if "part" in res else ""
            print(f"{res['model']}{where}: {json.dumps(res['params'], sort_keys=True)} (chosen on validation), "
                  f"fit {res['fit_s']:.1f}s, scoring {res['score_s']:.1f}s")

    if args.out:
        if args.out.suffix.lower() == ".csv":
            files.write_csv(args.out, [artifacts.result_row(r) for r in results])
        else:
            # one row: a single result object; several: a list of them, same shape each
            files.write_json(args.out, results[0] if len(results) == 1 else results)
        print(f"wrote {args.out}")
    return 0
