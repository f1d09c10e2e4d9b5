"""One module per `beeray` subcommand (each has `register(subparsers)`); the options that
`evaluate` and `compare` share are defined here, once."""

from __future__ import annotations

import argparse

from beeray.models import DEFAULT_MODEL


def add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", metavar="M",
                   help=f"hub name or local folder; repeat to compare (default: {DEFAULT_MODEL})")
    p.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch (default: 64)")
    p.add_argument("--batch-users", type=int, default=1024, help="users scored at once (default: 1024)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for stderr (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="encoder device (default: auto)")


def eval_kwargs(args) -> dict:
    """The evaluator's keyword arguments from the shared options."""
    return {"batch_size": args.batch_size, "batch_users": args.batch_users, "bootstrap": args.bootstrap,
            "seed": args.seed}
