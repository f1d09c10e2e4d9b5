"""The `beeray` command: one subcommand per module under beeray/commands."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import logging
import os
import sys

from beeray.errors import BeerayError, user_message

_COMMANDS = ["prepare", "evaluate", "train", "tune", "compare", "embed", "recommend", "serve"]


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


class _Console(logging.Handler):
    """The library's log lines as the command's own output: information on stdout, warnings on stderr,
    each to the stream in place when it is written (so a caller that swaps sys.stdout still sees it)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        stream.write(self.format(record) + "\n")
        stream.flush()


@contextlib.contextmanager
def console_logging():
    """The `beeray` loggers on the console while a command runs (the library itself only logs); as
    they were afterwards, so that library calls later in the same process stay quiet."""
    logger = logging.getLogger("beeray")
    handler, level = _Console(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with console_logging():
        return _run(args)


def _run(args) -> int:
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
