"""Per-step time of the distributed step: `items` mode W=1 vs W=2, and `data` mode W=2.

How it runs: W worker processes started with torch.multiprocessing, joined in a torch.distributed
process group (gloo on CPU, NCCL on GPU), each calling beeray.step.train_step with beeray's Comm,
exactly what a Ray Train worker calls inside train_loop_per_worker. Ray itself (cluster start,
Ray Data shards, TorchTrainer) is left out on purpose: its start-up costs tens of seconds on a
2-core machine and is not part of a step; the collectives and the step code are the same.

Same global batch and m for every configuration: items mode splits the global batch of B users
over the W workers (B/W each) and shares one I_b; data mode gives each worker B/W users and its
own I_b of size m (docs/method.md §3). Each worker gets 1 CPU thread. Timed steps are bracketed by
barriers, so a step's time is the slowest worker's. Configurations run one after the other
within one invocation, in rounds (W1, W2-items, W2-data, then again when --rounds > 1), so they
see the same machine load. Prints a table and writes benchmarks/results/ray.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = REPO.parent / "shared" / "data"
SEED = 42
CONFIGS = [("items", 1), ("items", 2), ("data", 2)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, mode: str, args: dict, out_path: str) -> None:
    import pyarrow.parquet as pq

    from beeray.config import TrainConfig
    from beeray.step import train_step
    from beeray.train_loop import Recipe

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = args["device"] == "cuda"
    device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    # The worker's set-up is the trainer's own: model, training catalog, optimizer, Comm.
    cfg = TrainConfig(data=args["data"], model=args["model"], lr=1e-5, max_seq_length=args["msl"],
                      encode_batch_size=args["chunk"], parallel=mode, num_workers=world,
                      cpus_per_worker=args["threads"], amp="off")
    recipe = Recipe.setup(cfg, rank, world, device)
    model, optimizer, catalog, comm = recipe.model, recipe.optimizer, recipe.catalog, recipe.comm
    rows = pq.read_table(Path(args["data"]) / "train.parquet", columns=["items"]).column("items").to_pylist()
    users = [catalog.rows(np.asarray(r, dtype=np.int64)) for r in rows]

    # The same global batches in every configuration; worker r holds users r, r+W, ...
    rng = np.random.default_rng(SEED)
    global_batches = [[users[i] for i in rng.choice(len(users), size=args["batch"], replace=False)]
                      for _ in range(args["steps"] + 1)]

    def one(step: int, batch_all, m: int):
        mine = batch_all[rank::world]
        key = (SEED, 0, step) if mode == "items" else (SEED, 0, step, rank)
        torch.manual_seed(SEED + step)
        return train_step(model, optimizer, catalog, mine, m=m, rng_key=key, chunk_size=args["chunk"],
                          device=device, mode=mode, comm=comm)

    # Warm-up: a small step (a few users, m = one chunk) so first-call costs are not timed.
    one(999, global_batches[0][: 2 * world], args["chunk"])
    records = []
    for step, batch_all in enumerate(global_batches[1:]):
        dist.barrier()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = one(step, batch_all, args["m"])
        if cuda:
            torch.cuda.synchronize()
        own = time.perf_counter() - t0
        dist.barrier()
        wall = time.perf_counter() - t0
        # Each worker's own compute time (before the closing barrier) shows load imbalance.
        own_all = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(world)]
        dist.all_gather(own_all, torch.tensor([own], dtype=torch.float64, device=device))
        records.append({"step": step, "wall_s": wall, "own_s": [float(x.item()) for x in own_all],
                        "items": res.items, "encoded_rank0": res.encoded, "users": res.users, "loss": res.loss})
    if rank == 0:
        Path(out_path).write_text(json.dumps(records))
    dist.destroy_process_group()


def run_config(mode: str, world: int, args: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        mp.spawn(_worker, args=(world, _free_port(), mode, args, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def table(headers, rows) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    from beeray.models import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/bench_ml", help="prepared ml-latest-small (prepared if missing)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--msl", type=int, default=64)
    p.add_argument("--m", type=int, default=256)
    p.add_argument("--batch", type=int, default=32, help="global batch of users")
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after 1 warm-up)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the W1/W2-items/W2-data cycle")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (cuda needs >= 2 GPUs for W=2)")
    a = p.parse_args(argv)

    if not (Path(a.data) / "stats.json").is_file():
        from beeray.data.prepare import prepare

        prepare("movielens", a.data, source=SHARED / "ml-latest-small")
    device = a.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and torch.cuda.device_count() >= 2 else "cpu"
    args = {"data": a.data, "model": a.model, "msl": a.msl, "m": a.m, "batch": a.batch, "chunk": a.chunk,
            "steps": a.steps, "threads": a.threads, "device": device}

    results: dict[str, list[dict]] = {}
    for rnd in range(a.rounds):
        for mode, world in CONFIGS:
            name = f"{mode}-W{world}"
            t0 = time.perf_counter()
            recs = run_config(mode, world, args)
            for r in recs:
                r["round"] = rnd
            results.setdefault(name, []).extend(recs)
            mean = statistics.mean(r["wall_s"] for r in recs)
            print(f"  round {rnd} {name}: {mean:.2f} s/step ({time.perf_counter() - t0:.0f}s incl. start-up)",
                  flush=True)

    base = statistics.mean(r["wall_s"] for r in results["items-W1"])
    rows, summary = [], {}
    for name, recs in results.items():
        s = statistics.mean(r["wall_s"] for r in recs)
        items = statistics.mean(r["items"] for r in recs)
        users = statistics.mean(r["users"] for r in recs)
        enc0 = statistics.mean(r["encoded_rank0"] for r in recs)
        summary[name] = {"s_per_step": s, "steps_per_s": 1 / s, "items_per_step": items,
                         "encoded_per_worker": enc0, "speedup_vs_items_W1": base / s,
                         "users_per_s": users / s}
        rows.append([name, len(recs), round(users), round(items), round(enc0), s, 1 / s, users / s, base / s])
    print()
    print(f"distributed step ({device}, {a.threads} thread(s) per worker, torch.multiprocessing + "
          f"{'nccl' if device == 'cuda' else 'gloo'}, not Ray start-up): {Path(a.model).name}, ml-latest-small, msl {a.msl}, "
          f"m {a.m}, global batch {a.batch} users, chunk {a.chunk}, {a.steps} steps x {a.rounds} round(s)")
    print(table(["config", "steps", "users/step", "|I_b|/step (per worker in data)", "encoded/worker", "s/step",
                 "steps/s", "users/s", "speed-up vs items-W1"], rows))
    print("items mode: one I_b per global batch, each worker encodes ~|I_b|/W; data mode: each worker its own "
          "I_b (|I_b| above is rank 0's), users/s is the fair throughput comparison.")
    if device == "cpu":
        print(f"note: measured on CPU ({os.cpu_count()} cores shared with other jobs). On a GPU machine "
              "(>= 2 GPUs) the same script runs one worker per GPU over NCCL and reports steps/s the same way; "
              "no GPU was available in this session (the device tool reports none lent to this task).")
    doc = {"case": "ray", "config": args, "method": "torch.multiprocessing + torch.distributed process group; "
           "beeray.step.train_step with beeray.distributed.Comm; no Ray start-up",
           "machine": {"date": dt.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                       "load_avg_1m": os.getloadavg()[0], "torch": torch.__version__},
           "results": results, "summary": summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "ray.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
