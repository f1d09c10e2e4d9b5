"""`beeray serve`: a trained model as an HTTP service on Ray Serve (beeray/serve.py, docs/serve.md)."""

from __future__ import annotations

import argparse

from beeray.commands import path_arg
from beeray.models import DEFAULT_MODEL


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve recommendations over HTTP (Ray Serve): items recommendable the moment their text arrives",
        description="Serve a model over HTTP on Ray Serve, recommending from a catalogue kept in --catalog: "
                    "POST /v1/items adds items (encoded in batches, on disk before the answer), POST "
                    "/v1/recommend scores a history as `beeray recommend` does, POST /v1/embed, DELETE "
                    "/v1/items/{id}, GET /v1/info, GET /healthz. A catalogue made by another model is "
                    "refused unless --re-embed. See docs/serve.md.",
        epilog="examples:\n"
               "  beeray serve --model runs/demo/model --items data/shop --catalog runs/demo/catalog\n"
               "  beeray serve --model runs/ml/model --embeddings runs/ml/embeddings --items data/ml "
               "--catalog runs/ml/catalog --replicas 2 --port 8000\n\n"
               "  curl -s localhost:8000/v1/recommend -d '{\"history\": [\"b000-printer\"], \"k\": 5}'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder or hub name (default: {DEFAULT_MODEL})")
    p.add_argument("--catalog", required=True, type=path_arg("--catalog"),
                   help="the catalogue's folder (created if missing; kept across restarts)")
    p.add_argument("--items", help="an empty catalogue starts with these items (a prepared folder or a file)")
    p.add_argument("--embeddings", help="an empty catalogue starts with these vectors (a `beeray embed` folder "
                                        "of --model; texts from --items)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--replicas", type=int, default=1, help="API replicas (default: 1)")
    p.add_argument("--use-gpu", action="store_true", help="encode on a GPU")
    p.add_argument("--max-batch", type=int, default=256, help="items or texts per request (default: 256)")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="request body limit in MiB (default: 8)")
    p.add_argument("--address", help="Ray cluster address (default: local Ray, or RAY_ADDRESS)")
    p.add_argument("--re-embed", action="store_true", help="encode a catalogue made by another model again")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from ray import serve

    from beeray.errors import BeerayError
    from beeray.serve import start

    if args.replicas < 1 or args.max_batch < 1 or args.max_body_mb <= 0:
        raise BeerayError("--replicas, --max-batch and --max-body-mb must be > 0")
    url = start(args.model, args.catalog, items=args.items, embeddings=args.embeddings, host=args.host,
                port=args.port, replicas=args.replicas, use_gpu=args.use_gpu, max_items=args.max_batch,
                max_body=int(args.max_body_mb * 2**20), address=args.address, re_embed=args.re_embed)
    print(f"serving on {url} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0
