"""One module per `beeray` subcommand (each has `register(subparsers)`); what `evaluate` and `compare`
share is defined here, once: their options, and running every encoder and baseline on every dataset."""

from __future__ import annotations

import argparse
from typing import Callable

from beeray.errors import BeerayError
from beeray.models import DEFAULT_MODEL
from beeray.training_record import ALLOW_FLAG, RECORD

MARK = "(!)"  # a table row scored on cold items its model trained on (--allow-trained-items)


def add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", metavar="M",
                   help=f"sentence encoder: hub name or local folder; repeat to compare (default: {DEFAULT_MODEL} "
                        "when no --baseline is given)")
    p.add_argument("--baseline", action="append", metavar="NAME",
                   help="a baseline, scored by the same evaluator (repeatable): popularity, itemknn, ease, als, elsa, "
                        "sansa (time split); heater, text-popularity, cbf+popularity (cold items, from texts). "
                        "Hyperparameters are chosen on the validation split; the test split refits on train+val")
    p.add_argument("--param", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="fix a baseline hyperparameter instead of searching it, e.g. itemknn.K=200")
    p.add_argument("--text-model", metavar="M",
                   help="the encoder whose item embeddings text baselines use (default: the first --model, "
                        f"else {DEFAULT_MODEL})")
    p.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch (default: 64)")
    p.add_argument("--batch-users", type=int, default=1024, help="users scored at once (default: 1024)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for stderr (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="encoder device (default: auto)")
    p.add_argument(ALLOW_FLAG, dest="allow_trained_items", action="store_true",
                   help="score a beeray-trained model even on cold items it trained on (its folder's "
                        f"{RECORD} lists them; without this flag that is refused, exit 2); such results "
                        "carry trained_cold_items and their table row is marked (!)")


def add_catalog_options(p: argparse.ArgumentParser) -> None:
    """How `embed` and `recommend` read a catalog file (beeray/data/items.py) and run its encoder."""
    p.add_argument("--id-column", default="item_id", help="id column of --items (default: item_id)")
    p.add_argument("--text-column", default="text", help="text column of --items (default: text)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="texts per encoder batch (default: 64; embed --use-gpu: 512)")
    p.add_argument("--trust-remote-code", action="store_true", help="let the model run its own code")


def eval_kwargs(args) -> dict:
    """The evaluator's keyword arguments from the shared options."""
    return {"batch_users": args.batch_users, "bootstrap": args.bootstrap, "seed": args.seed}


def baseline_params(args) -> dict[str, dict]:
    """--param NAME.KEY=VALUE grouped by baseline (each NAME must be one of the --baseline)."""
    from beeray.baselines import get, parse_params

    names = list(dict.fromkeys(args.baseline or []))
    for name in names:
        get(name)  # an unknown name fails before anything runs
    pairs: dict[str, list[str]] = {name: [] for name in names}
    for spec in args.param:
        name, dot, setting = spec.partition(".")
        if not dot or name not in pairs:
            raise BeerayError(f"--param {spec}: no --baseline {name} (write NAME.KEY=VALUE for a --baseline NAME)")
        pairs[name].append(setting)
    return {name: parse_params(name, settings) for name, settings in pairs.items()}


def eval_targets(datasets: dict) -> dict[str, tuple]:
    """What gets one result per model: label -> (prepared folder, part). A single-dataset folder is
    scored whole under its label; a multi-dataset (goodlens) folder once per dataset, "<label>:<dataset>"
    (that dataset's users, its own cold items as candidates), then whole, "<label>:joint"."""
    from beeray.evaluate import JOINT

    targets: dict[str, tuple] = {}
    for label, data in datasets.items():
        if not data.parts:
            targets[label] = (data, None)
            continue
        targets.update({f"{label}:{part}": (data, part) for part in data.parts})
        targets[f"{label}:{JOINT}"] = (data, None)
    return targets


def run_evaluations(args, datasets: dict, which: str, log: Callable[[str], None] = print,
                    per_user: bool = False) -> tuple[dict[str, dict], dict[str, dict]]:
    """({row name: {target label: result}}, {target label: popularity oracle}) for every --model and
    --baseline on every target of every dataset (eval_targets), all through the same evaluator. A model
    that trained on the cold items of a target is refused before anything runs (beeray/training_record.py).
    per_user: every result also keeps its users' metric values (for paired comparisons)."""
    from beeray import training_record
    from beeray.baselines import BASELINES, check_split, evaluate_baseline, get, training_matrix
    from beeray.baselines.oracle import PopularityOracle
    from beeray.evaluate import encode_items, evaluate_models, score_split
    from beeray.models import load_model

    params = baseline_params(args)
    scoring = {**eval_kwargs(args), "keep_per_user": per_user}
    targets = eval_targets(datasets)
    for data, part in targets.values():  # a part an older goodlens folder lacks fails before any model loads
        data.cold_items(which, part)
    for name in params:  # a baseline that cannot run on a dataset fails before anything is computed
        for data, part in targets.values():
            for split in ("val", which):
                check_split(get(name), data, split, training_matrix(data, split), part)
    models = list(dict.fromkeys(args.model or ([] if params else [DEFAULT_MODEL])))
    text_model = args.text_model or (models[0] if models else DEFAULT_MODEL)
    text_baselines = [name for name in params if BASELINES[name].needs == "text"]
    trained = training_record.check(models + ([text_model] if text_baselines else []), targets, which,
                                    allow=getattr(args, "allow_trained_items", False))
    rows = evaluate_models(models, targets, which, device=args.device, batch_size=args.batch_size,
                           **scoring)
    encoder = []  # loaded once, on first use by a text baseline

    def embeddings_of(data) -> Callable:
        cache: list = []

        def embeddings():
            if not cache:
                if not encoder:
                    encoder.append(load_model(text_model, device=args.device))
                log(f"encoding {data.n_items} item texts of {data.root} with {text_model} for the text baselines")
                cache.append(encode_items(encoder[0], data.texts, batch_size=args.batch_size, show_progress=False))
            return cache[0]
        return embeddings

    item_embeddings = {id(data): embeddings_of(data) for data in datasets.values()}  # a folder's parts share them
    for name, fixed in params.items():
        per = rows.setdefault(f"baseline:{name}", {})
        for label, (data, part) in targets.items():
            log(f"evaluating baseline {name} on {label} ({which})")
            per[label] = evaluate_baseline(name, data, which, params=fixed, part=part, log=log,
                                           item_embeddings=item_embeddings[id(data)], **scoring)
            if name in text_baselines:
                per[label]["text_model"] = text_model
    # Label what a model scored on cold items it trained on (only reached with --allow-trained-items).
    for row, per in rows.items():
        counts = trained.get(text_model if row.removeprefix("baseline:") in text_baselines else row, {})
        for label, res in per.items():
            if label in counts:
                data, part = targets[label]
                res["trained_cold_items"] = counts[label]
                res["cold_items"] = int(data.cold_items(which, part).size)
    oracle = {}
    for label, (data, part) in targets.items():
        split = data.eval_split(which, part)
        oracle[label] = score_split(PopularityOracle(split.target), split, **scoring)
        for res in [oracle[label], *(per[label] for per in rows.values())]:
            res["split_digest"] = data.split_digest  # which split a result was scored on, by content
    return rows, oracle


def print_tables(rows: dict[str, dict], oracle: dict[str, dict], which: str, title: Callable[[str], str]) -> None:
    """A metrics table per target (`title(label)` above it), closed by its popularity oracle; a row scored
    on cold items its model trained on is marked, and a note under the table says how many."""
    from beeray import artifacts

    for label in oracle:
        named, notes = {}, []
        for name, per in rows.items():
            res = per[label]
            if res.get("trained_cold_items"):
                named[f"{name} {MARK}"] = res
                notes.append(f"{MARK} {name} trained on {res['trained_cold_items']} of the {res['cold_items']} "
                             f"{which} cold items scored here ({ALLOW_FLAG}): not a cold-start figure.")
            else:
                named[name] = res
        print(f"\n{title(label)}")
        print(f"split sha256:{oracle[label]['split_digest']}")
        print(artifacts.metrics_table(named, oracle=oracle[label]))
        for note in notes:
            print(note)
