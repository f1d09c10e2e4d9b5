"""One module per `beeray` subcommand (each has `register(subparsers)`); what `evaluate` and `compare`
share is defined here, once: their options, and running every encoder and baseline on every dataset."""

from __future__ import annotations

import argparse
from typing import Callable

from beeray import files
from beeray.errors import BeerayError
from beeray.models import DEFAULT_MODEL
from beeray.training_record import ALLOW_FLAG, RECORD


def path_arg(what: str, kind: type = str, urls: bool = False):
    """An argparse `type` for a path: local only (`local_path`), so that a URL fails before anything
    runs, unless `urls` (then an object-storage URL is accepted too and checked by `remote_fs`); the
    value comes back as `kind` (str or Path; a URL always as str)."""
    def parse(value: str):
        try:
            if urls and files.is_url(value):
                scheme = value.split("://", 1)[0].lower()
                if scheme not in files.SCHEMES:  # checked without the network; the store itself is reached later
                    raise BeerayError(f"{what} {value}: not a storage URL pyarrow can open "
                                      f"(schemes: {', '.join(sorted(files.SCHEMES))})")
                return value.rstrip("/")
            files.local_path(value, what)
        except BeerayError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{what} ")) from None
        return kind(value)

    return parse


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


def run_evaluations(args, datasets: dict, which: str, per_user: bool = False) -> tuple[dict[str, dict], dict[str, dict]]:
    """beeray.comparison.score_rows with the shared options of `evaluate` and `compare`."""
    from beeray.comparison import score_rows

    return score_rows(datasets, which, models=args.model or (), baselines=baseline_params(args),
                      text_model=args.text_model, device=args.device, batch_size=args.batch_size,
                      batch_users=args.batch_users, bootstrap=args.bootstrap, seed=args.seed,
                      keep_per_user=per_user, allow_trained_items=getattr(args, "allow_trained_items", False))


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
