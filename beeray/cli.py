"""The `beeray` command: one subcommand per module under beeray/commands."""

from __future__ import annotations

import argparse
import importlib
import sys

from beeray.errors import BeerayError

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


if __name__ == "__main__":
    sys.exit(main())
