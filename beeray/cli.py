"""The `beeray` command: one subcommand per module under beeray/commands."""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys

from beeray.errors import BeerayError, user_message

_COMMANDS = ["prepare", "evaluate", "train", "tune", "compare", "embed", "recommend"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beeray",
        description=(
            "Train sentence-Transformer text encoders on user-item interactions (beeFormer), "
            "on Ray, and evaluate them on cold-start items.\n\n"
            "Typical flow:\n"
            "  beeray prepare movielens --input ml-latest-small --out data/ml   # parquet + split + stats\n"
            "  beeray evaluate --data data/ml --model all-MiniLM-L6-v2 --split val\n"
            "  beeray train --data data/ml --config experiments/ml-small-cpu.yaml --out runs/ml\n"
            "  beeray tune --config experiments/tune-ml-small-cpu.yaml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        importlib.import_module(f"beeray.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BeerayError as exc:
        print(f"beeray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"beeray {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a full disk or an object store's refusal is the user's to fix, not a bug
        message = user_message(exc)
        if message is None:
            raise
        print(f"beeray {args.command}: error: {message}", file=sys.stderr)
        return 2


def run() -> None:
    """The `beeray` executable: main(), then an exit that skips the C++ runtime's teardown.

    Once Python's own exit handlers have run (Ray's shutdown, logging, temporary folders), the status
    is final; a native thread pool still alive at that point (pyarrow's, a tokenizer's) could otherwise
    abort the process while static objects are destroyed ("terminate called without an active
    exception", status 134) and turn a clean 0 or 2 into a crash at random."""
    try:
        code = main()
    except SystemExit as exc:  # argparse's usage errors (2), --help (0)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()  # what interpreter shutdown would run first; then nothing native runs
    os._exit(code)


if __name__ == "__main__":
    run()
