"""`beeray embed`: a model's embeddings of any catalog, through Ray Data (beeray/embedding.py)."""

from __future__ import annotations

import argparse

from beeray.commands import add_catalog_options
from beeray.commands import path_arg
from beeray.models import DEFAULT_MODEL


def register(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="embed a catalog's item texts with a model (Ray Data), into Parquet shards",
        description="Encode every item text of a catalog with a SentenceTransformer (a trained beeray model "
                    "folder or a hub name) on a pool of Ray Data encoder actors, and write OUT/shards/*.parquet "
                    "(item_id, embedding; unit L2 norm) and OUT/embed.json. Re-running the same command "
                    "keeps the shards already written (a killed run continues; a catalog that grew re-encodes "
                    "only the shards that changed).",
        epilog="examples:\n"
               "  beeray embed --model runs/demo/model --items data/shop --out runs/demo/embeddings\n"
               "  beeray embed --model runs/ml/model --items catalog.parquet --out emb --workers 4 --use-gpu "
               "--dtype float16 --faiss   # bf16 autocast, 512 texts a batch\n"
               "  beeray embed --model runs/ml/model --items new_items.csv --id-column asin --bad-rows skip "
               "--out emb\n\n"
               "--items: a prepared-data folder (its items.parquet), a parquet/csv/tsv/jsonl/feather file, or a "
               "folder of parquet files, with an id column and a text column.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder or hub name (default: {DEFAULT_MODEL})")
    p.add_argument("--items", required=True, help="catalog: file or folder (see below)")
    p.add_argument("--out", required=True, type=path_arg("--out", urls=True),
                   help="output folder, or object storage (s3://bucket/prefix; embed.json is written last)")
    add_catalog_options(p)
    p.add_argument("--bad-rows", choices=["refuse", "skip"], default="refuse",
                   help="rows without id or text, or repeating an id: refuse the file (default) or skip them")
    p.add_argument("--shard-size", type=int, default=100_000, help="items per output shard (default: 100000)")
    p.add_argument("--workers", type=int, default=2, help="encoder actors (default: 2)")
    p.add_argument("--cpus-per-worker", type=int, default=None,
                   help="CPUs per actor, which also tokenize its texts (default: 1; 4 with --use-gpu)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="compute precision (autocast): auto = bf16 on GPUs with native bf16 (compute capability "
                        ">= 8.0), else fp32 (default: auto)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="stored precision of the unit-norm vectors (default: float32)")
    p.add_argument("--faiss", action="store_true", help="also write OUT/index.faiss (needs beeray[faiss])")
    p.add_argument("--address", help="Ray cluster address (default: local Ray, or RAY_ADDRESS)")
    p.set_defaults(func=run)


def run(args) -> int:
    from beeray.data.items import read_item_texts
    from beeray.embedding import embed

    items = read_item_texts(args.items, args.id_column, args.text_column, args.bad_rows)
    for problem in items.skipped[:20]:
        print(f"beeray embed: skipped {problem}")
    if len(items.skipped) > 20:
        print(f"beeray embed: skipped {len(items.skipped) - 20} more bad rows")
    manifest = embed(args.model, items, args.out, shard_size=args.shard_size, workers=args.workers,
                     dtype=args.dtype, batch_size=args.batch_size, use_gpu=args.use_gpu,
                     cpus_per_worker=args.cpus_per_worker, precision=args.precision, build_index=args.faiss,
                     address=args.address,
                     trust_remote_code=args.trust_remote_code)
    rate = f", {manifest['items_per_s']:,.0f} items/s" if manifest["items_per_s"] else ""
    print(f"{manifest['rows']:,} items x {manifest['dim']} ({manifest['dtype']}) in {args.out} "
          f"({manifest['encoded_this_run']:,} encoded this run{rate})")
    return 0
