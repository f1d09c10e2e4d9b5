"""`beeray recommend`: the top-k items for a history, with their texts (beeray/recommender.py)."""

from __future__ import annotations

import argparse

from beeray.commands import add_catalog_options
from beeray.models import DEFAULT_MODEL

WIDTH = 100  # characters of each item's text shown


def register(sub) -> None:
    p = sub.add_parser(
        "recommend",
        help="recommend items for a history of item ids (the evaluator's CBF scoring)",
        description="Score every other item of the catalog for the given history exactly as `beeray evaluate` "
                    "scores candidates (relu(x A Aᵀ - x) over unit-norm text embeddings) and print the top k "
                    "with their texts. The embeddings come from --embeddings (a `beeray embed` folder) or are "
                    "computed from --items with --model.",
        epilog="examples:\n"
               "  beeray recommend --model runs/demo/model --items data/shop --history P0001 -k 10\n"
               "  beeray recommend --embeddings runs/ml/embeddings --items data/ml --history 1 2571 -k 20",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help=f"model folder or hub name (default: {DEFAULT_MODEL}); with --embeddings, the "
                                    "folder must hold this model's vectors (checked by content), else it is refused")
    p.add_argument("--items", help="catalog with the texts: prepared-data folder or a file (as `beeray embed`)")
    p.add_argument("--embeddings", help="a `beeray embed` output folder (then nothing is encoded)")
    p.add_argument("--history", nargs="+", required=True, metavar="ID", help="item ids the user has")
    p.add_argument("-k", type=int, default=20, help="how many items (default: 20)")
    add_catalog_options(p)
    p.set_defaults(func=run)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= WIDTH else text[:WIDTH - 1] + "…"


def run(args) -> int:
    from beeray.artifacts import text_table
    from beeray.errors import BeerayError
    from beeray.recommender import catalog_embeddings, recommend

    texts, ids, emb, source = catalog_embeddings(model=args.model, items=args.items, embeddings=args.embeddings,
                                                 id_column=args.id_column, text_column=args.text_column,
                                                 batch_size=args.batch_size, trust_remote_code=args.trust_remote_code)
    if args.k <= 0:
        raise BeerayError(f"-k must be > 0, got {args.k}")
    recs = recommend(emb, ids, args.history, k=args.k, source=source)
    print("history:")
    for h in args.history:
        print(f"  {h}  {_short(texts.get(str(h), ''))}")
    print()
    print(text_table(["rank", "item_id", "score", "text"],
                     [[r + 1, rec.item_id, f"{rec.score:.4f}", _short(texts.get(rec.item_id, ""))]
                      for r, rec in enumerate(recs)]))
    return 0
