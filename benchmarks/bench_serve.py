"""Latency and throughput of `beeray serve` (beeray/serve.py) under a bounded load on 127.0.0.1.

    .venv/bin/python benchmarks/bench_serve.py                 # 10^4 and 10^5 items, MiniLM
    .venv/bin/python benchmarks/bench_serve.py --sizes 2000 --requests 50   # a quick look

For each catalogue size: the service is started on a catalogue of that many items (random unit
vectors written straight into the catalogue: the scores' cost does not depend on what the vectors
mean), then N recommend requests (a history of 5 random ids, k 10) are sent at concurrency C, and
the same queries are answered in-process by beeray.recommender.recommend (the offline path, no HTTP,
no Ray). Then items are added through POST /v1/items, one per request and in batches, and the cost
of the full re-embed that adding avoids is given from the encoder's throughput measured on the same
texts. Prints a table (p50/p95/p99 latency in ms, requests/s) and writes benchmarks/results/serve.json.

The load ends by itself: each case sends exactly N requests.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import platform
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> float:
    """Seconds of one request; raises on anything but 200."""
    data = json.dumps(body).encode()
    t0 = time.perf_counter()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        assert response.status == 200
    return time.perf_counter() - t0


def load(url: str, bodies: list[dict], concurrency: int) -> dict:
    """Send every body (N requests) with `concurrency` in flight; latency percentiles and requests/s."""
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        seconds = list(pool.map(lambda b: post(url, b), bodies))
    wall = time.perf_counter() - t0
    ms = np.array(seconds) * 1000
    return {"requests": len(bodies), "concurrency": concurrency, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "requests_per_s": len(bodies) / wall}


def offline(catalog, histories: list[list[str]], k: int) -> dict:
    from beeray.recommender import recommend

    ids = np.asarray(catalog.ids, dtype=object)
    seconds = []
    for history in histories:
        t0 = time.perf_counter()
        recommend(catalog.vectors, ids, history, k=k)
        seconds.append(time.perf_counter() - t0)
    ms = np.array(seconds) * 1000
    return {"requests": len(histories), "concurrency": 1, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "requests_per_s": len(histories) / ms.sum() * 1000}


def texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["printer", "toner", "cable", "paper", "kettle", "lamp", "drill", "glove", "battery", "seed", "mower",
             "red", "blue", "compact", "heavy-duty", "wireless", "for the garden", "for the office", "steel"]
    return [" ".join(rng.choice(words, size=12)) for _ in range(n)]


def run_size(args, size: int, model: str, dim: int, fingerprint: str, root: Path) -> list[dict]:
    from ray import serve

    from beeray.catalog import Catalog
    from beeray.serve import start

    rng = np.random.default_rng(size)
    folder = root / f"catalog-{size}"
    catalog = Catalog.open(folder, model, fingerprint, dim)
    vectors = rng.normal(size=(size, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = [f"i{j}" for j in range(size)]
    for a in range(0, size, 50_000):  # segments of at most 50,000 rows
        catalog.put(names[a:a + 50_000], [f"item {j}" for j in range(a, min(size, a + 50_000))],
                    vectors[a:a + 50_000], new=False)
    port = free_port()
    url = start(model, str(folder), port=port, replicas=args.replicas)
    histories = [list(rng.choice(names, size=5, replace=False)) for _ in range(args.requests)]
    rows = []
    try:
        post(f"{url}/v1/recommend", {"history": histories[0], "k": 10})  # warm-up
        rows.append({"case": f"recommend, {size:,} items, HTTP", **load(
            f"{url}/v1/recommend", [{"history": h, "k": 10} for h in histories], args.concurrency)})
        rows.append({"case": f"recommend, {size:,} items, in-process (offline path)",
                     **offline(catalog, histories, 10)})
        added = texts(args.add_requests * (1 + args.batch), seed=size)
        one = [{"items": [{"id": f"one-{j}", "text": added[j]}]} for j in range(args.add_requests)]
        rows.append({"case": f"add 1 item a request, {size:,} items", **load(f"{url}/v1/items", one, args.concurrency)})
        rest = added[args.add_requests:]
        batches = [{"items": [{"id": f"b{j}-{i}", "text": rest[j * args.batch + i]} for i in range(args.batch)]}
                   for j in range(args.add_requests)]
        row = load(f"{url}/v1/items", batches, args.concurrency)
        row["items_per_s"] = row["requests_per_s"] * args.batch
        rows.append({"case": f"add {args.batch} items a request, {size:,} items", **row})
    finally:
        serve.shutdown()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--sizes", default="10000,100000", help="catalogue sizes (comma-separated)")
    p.add_argument("--requests", type=int, default=200, help="recommend requests per size (N)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (C)")
    p.add_argument("--add-requests", type=int, default=40, help="add requests per case")
    p.add_argument("--batch", type=int, default=32, help="items per batched add request")
    p.add_argument("--replicas", type=int, default=1, help="API replicas")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve.json"))
    args = p.parse_args(argv)

    import ray

    from beeray.cluster import init_ray
    from beeray.evaluator import encode_items
    from beeray.models import embedding_dim, load_model, model_fingerprint

    encoder = load_model(args.model, device="cpu")
    dim, fingerprint = embedding_dim(encoder), model_fingerprint(args.model)
    sample = texts(1000, seed=0)
    t0 = time.perf_counter()
    encode_items(encoder, sample, batch_size=64, show_progress=False)
    encode_rate = len(sample) / (time.perf_counter() - t0)
    del encoder
    init_ray(None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            rows += run_size(args, size, args.model, dim, fingerprint, Path(tmp))
            rows.append({"case": f"full re-embed of {size:,} items (what adding avoids)",
                         "seconds": size / encode_rate, "items_per_s": encode_rate})
    ray.shutdown()
    print(f"{'case':<58} {'N':>5} {'C':>3} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for r in rows:
        if "seconds" in r:
            print(f"{r['case']:<58} {'':>5} {'':>3} {'':>8} {'':>8} {'':>8} {'':>8}  "
                  f"{r['seconds']:.0f} s at {r['items_per_s']:.0f} items/s (measured on 1,000 texts)")
            continue
        extra = f"  ({r['items_per_s']:.0f} items/s)" if "items_per_s" in r else ""
        print(f"{r['case']:<58} {r['requests']:>5} {r['concurrency']:>3} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['requests_per_s']:>8.1f}{extra}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                               "model": args.model, "args": vars(args), "rows": rows,
                               "encode_items_per_s": encode_rate}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
