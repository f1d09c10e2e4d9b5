"""`beeray prepare`: turn a raw dataset into the prepared-data folder every other command reads."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from beeray.data.loaders import DATASETS, GenericColumns
from beeray.data.prepare import format_stats
from beeray.errors import BeerayError
from beeray.commands import path_arg

EPILOG = """\
datasets and their --input:
  movielens     folder with ratings.csv + movies.csv [+ tags.csv] (ml-latest-small, ml-20m)
  goodbooks     folder with ratings.csv or ratings_subset.csv + item_text_descriptions.feather
                [+ books.csv], or the ratings csv itself (--items: the descriptions file)
  amazon-books  ratings csv asin,user,rating,timestamp (header optional) + --items csv/parquet
                with asin,text or asin,title,description
  amazon-json   folder with <Name>.inter.json + <Name>.item.json (sequence data, no ratings)
  generic       any interactions csv/parquet + --items csv/parquet (item_id or id, text);
                column names via --user-col/--item-col/--rating-col/--time-col/--item-key/--text-col
  synthetic     a generated shop of product bundles (the default; needs no --input); any size
                with --synthetic-size USERS ITEMS INTERACTIONS
  goodlens      several datasets in one catalog: --input KIND=PATH, repeated

preprocessing (docs/method.md §1): rating >= --min-rating is an interaction (no rating column: all
are), items without text dropped, (user, item) deduplicated, users with fewer than
--min-user-interactions dropped. Splits: see docs/data.md.

examples:
  beeray prepare                                   # synthetic demo shop -> data/synthetic
  beeray prepare synthetic --synthetic-size 100000 1000000 20000000 --out data/shop-1m
  beeray prepare movielens --input ../shared/data/ml-latest-small --out data/ml
  beeray prepare goodbooks --input ../shared/data/goodbooks --out data/goodbooks --val-items 1000
  beeray prepare amazon-json --input ../shared/data/amazon-scientific --out data/sci --split time
  beeray prepare goodlens --input goodbooks=../shared/data/goodbooks \\
                          --input movielens=../shared/data/ml-latest-small --out data/goodlens
  beeray prepare generic --input clicks.parquet --items products.csv --item-key sku --out data/shop
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="preprocess a dataset and write its train/val/test split",
        description="Read a dataset, apply the paper's preprocessing, split it (cold items or time) and "
                    "write a prepared-data folder (parquet + split.json + stats.json). The folder is "
                    "written atomically; re-running with the same inputs and options does nothing.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", default="synthetic", choices=DATASETS + ("goodlens",),
                   help="dataset layout (default: synthetic)")
    p.add_argument("--input", action="append", metavar="PATH",
                   help="dataset folder or interactions file; for goodlens KIND=PATH, repeatable")
    p.add_argument("--items", metavar="PATH", help="item text file where the layout needs one")
    p.add_argument("--out", metavar="DIR", type=path_arg("--out", urls=True),
                   help="output folder (default: data/<dataset>), or object storage (s3://bucket/prefix: prepared in "
                        "a local staging folder, then uploaded with _COMPLETE.json last; train --data reads it)")
    p.add_argument("--split", choices=("item", "time"), default="item",
                   help="item: cold-start items held out (default); time: last interactions held out")
    p.add_argument("--val-items", type=int, metavar="N", help="validation cold items (default min(2000, 10%%))")
    p.add_argument("--test-items", type=int, metavar="N", help="test cold items (default min(2000, 10%%))")
    p.add_argument("--val-frac", type=float, default=0.2, help="time split: validation share (default 0.2)")
    p.add_argument("--test-frac", type=float, default=0.2, help="time split: test share (default 0.2)")
    p.add_argument("--seed", type=int, default=42, help="seed of the cold-item draw (default 42)")
    p.add_argument("--split-items", metavar="FILE", type=path_arg("--split-items", Path),
                   help="item split: the validation and test cold items listed in FILE (a prepared folder's "
                        "split_items.tsv, or docs/splits/), instead of a seeded draw: reproduces that split")
    p.add_argument("--min-rating", type=float, default=4.0, help="ratings >= this are interactions (default 4)")
    p.add_argument("--min-user-interactions", type=int, default=5, metavar="N",
                   help="drop users with fewer interactions (default 5)")
    p.add_argument("--synthetic-seed", type=int, default=0, help="seed of the synthetic shop (default 0)")
    p.add_argument("--synthetic-size", type=int, nargs=3, metavar=("USERS", "ITEMS", "INTERACTIONS"),
                   help="generate the shop at this size (items a multiple of 40), e.g. 100000 1000000 20000000; "
                        "default: the demo shop (640 users, 400 items)")
    g = p.add_argument_group("generic column names")
    g.add_argument("--user-col", default="user_id")
    g.add_argument("--item-col", default="item_id")
    g.add_argument("--rating-col", default="rating", help="used when present")
    g.add_argument("--time-col", default="timestamp", help="used when present")
    g.add_argument("--item-key", default=None, help="id column of the items file (default item_id, else id)")
    g.add_argument("--text-col", default="text")
    p.add_argument("--force", action="store_true", help="overwrite an output folder holding another prepared set")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beeray.api import prepare_folder

    inputs = args.input or []
    if args.dataset == "goodlens":
        source: str | dict | None = {}
        for spec in inputs:
            if "=" not in spec:
                raise BeerayError(f"goodlens: --input {spec!r} must be KIND=PATH, e.g. goodbooks=data/goodbooks")
            name, _, value = spec.partition("=")
            if name in source:
                raise BeerayError(f"goodlens: dataset {name!r} given twice")
            source[name] = value
    else:
        if len(inputs) > 1:
            raise BeerayError(f"{args.dataset}: --input given {len(inputs)} times (only goodlens takes several)")
        source = inputs[0] if inputs else None
    columns = GenericColumns(user=args.user_col, item=args.item_col, rating=args.rating_col,
                             timestamp=args.time_col, item_key=args.item_key, text=args.text_col)
    result, where = prepare_folder(
        args.dataset, args.out, source, items=args.items, split=args.split, val_items=args.val_items,
        test_items=args.test_items, val_frac=args.val_frac, test_frac=args.test_frac, seed=args.seed,
        split_items=args.split_items, min_rating=args.min_rating, min_user_interactions=args.min_user_interactions,
        columns=dataclasses.asdict(columns) if args.dataset in ("generic", "goodlens") else None, synthetic_seed=args.synthetic_seed, synthetic_size=args.synthetic_size,
        force=args.force)
    if result.up_to_date:
        print(f"{where}: up to date (fingerprint {result.stats.get('fingerprint')}); --force to rebuild")
        return 0
    print(format_stats(result.stats))
    print(f"wrote {where}", file=sys.stderr)
    return 0
