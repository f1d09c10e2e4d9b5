"""Where beeray's costs go as the data grows (issue 12): the synthetic shop at several sizes.

For each size (users, items, interactions), each operation runs in a fresh process so that its
peak RSS is its own (`/usr/bin/time -f %M`):

  prepare     beeray prepare synthetic --synthetic-size U I K (generate + preprocess + split + write)
  tokenize    what the driver does once per run: load the prepared folder and the model, tokenize
              the training catalog into <prepared>/tokens/ (TokenizedCatalog.cached)
  start-up    what every worker (and every restarted worker) does: the same call, which now maps
              the saved catalog instead of tokenizing it (Recipe.setup's data + catalog part)
  step        one train_step at |I_b| = m on the mapped catalog (users taken until their positives
              reach m/2, so every size does the same work; 1 warm-up, then --reps)
  evaluate    beeray evaluate --split test (item split: the test cold items are the candidates)

The encoder is a tiny random BERT (2 layers, hidden 32, MiniLM's tokenizer) so that encoding is
not what is measured: tokenization, data handling, sampling and scoring are. Writes
benchmarks/results/scale.json (or --out) and prints one table; tests/test_benchmarks_scale.py runs it
at a small size so that it cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PY = sys.executable
BEERAY = str(Path(PY).parent / "beeray")
SIZES = ["100000,10000,2000000", "100000,100000,5000000", "100000,1000000,20000000", "1000000,1000000,20000000"]

TOKENIZE = """
import sys, time
sys.path.insert(0, {repo!r})
t0 = time.perf_counter()
from beeray.data.prepared import PreparedData
from beeray.encoder import TokenizedCatalog
from beeray.models import load_model
data = PreparedData.load({data!r})
model = load_model({model!r}, device="cpu")
catalog = TokenizedCatalog.cached(model, data, {msl})
print("ROWS", len(catalog), "TOKENS", int(catalog.offsets[-1]), "SECONDS", time.perf_counter() - t0)
"""

STEP = """
import sys, time
import numpy as np, pyarrow.parquet as pq, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads(2)
from beeray.data.prepared import PreparedData
from beeray.encoder import TokenizedCatalog
from beeray.models import load_model
from beeray.step import train_step
data = PreparedData.load({data!r})
model = load_model({model!r}, device="cpu")
catalog = TokenizedCatalog.cached(model, data, {msl})
lists = pq.read_table(data.train_path(), columns=["items"]).column("items").slice(0, 1000)
users = [catalog.rows(np.asarray(x, dtype=np.int64)) for x in lists.to_pylist()]
# Batches of consecutive users holding at most m/2 positives together: |I_b| = m at every size, so
# the steps of different sizes do the same work and differ only by the catalog they draw from.
batches, cur = [], []
for u in users:
    if cur and sum(map(len, cur)) + len(u) > {m} // 2:
        batches.append(cur)
        cur = []
    cur.append(u)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
times = []
for rep in range({reps} + 1):
    batch = batches[rep]
    t0 = time.perf_counter()
    res = train_step(model, opt, catalog, batch, m={m}, rng_key=(0, 0, rep), chunk_size=64, device=torch.device("cpu"))
    if rep:
        times.append(time.perf_counter() - t0)
print("ITEMS", res.items, "STEP", sum(times) / len(times))
"""


def timed(cmd: list[str], env=None) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of a command in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    rss = float(re.findall(r"MAXRSS (\d+)", proc.stderr)[-1]) / 1024
    return wall, rss, proc.stdout


def write(args, rows: list[dict]) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "rows": rows}, indent=2) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=SIZES, metavar="USERS,ITEMS,INTERACTIONS")
    p.add_argument("--work", default="/tmp/beeray-scale", help="prepared folders go here")
    p.add_argument("--msl", type=int, default=128)
    p.add_argument("--m", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "scale.json"), help="results JSON (default results/scale.json)")
    p.add_argument("--workers-only", action="store_true",
                   help="re-measure only a worker's start-up and step for the sizes in --out (folders and tokens "
                        "must exist from a full run)")
    args = p.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "true"}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny"
    if not (model / "st").is_dir():
        sys.path.insert(0, str(REPO))
        from tests.helpers import tiny_model

        tiny_model(model)
    model = model / "st"
    rows = []
    if args.workers_only:
        rows = json.loads(Path(args.out).read_text())["rows"]
        for row in rows:
            data = work / f"shop-{row['users']}-{row['items']}-{row['interactions']}"
            code = dict(repo=str(REPO), data=str(data), model=str(model), msl=args.msl)
            row["startup_s"], row["startup_mb"], _ = timed([PY, "-c", TOKENIZE.format(**code)], env)
            _, row["step_mb"], out = timed([PY, "-c", STEP.format(**code, m=args.m, reps=args.reps)], env)
            row["step_s"] = float(re.search(r"STEP ([\d.]+)", out).group(1))
            row["step_items"] = int(re.search(r"ITEMS (\d+)", out).group(1))
            print(json.dumps(row), flush=True)
        args.sizes = []
    for spec in args.sizes:
        users, items, inter = (int(x) for x in spec.split(","))
        data = work / f"shop-{users}-{items}-{inter}"
        row = {"users": users, "items": items, "interactions": inter}
        row["prepare_s"], row["prepare_mb"], _ = timed(
            [BEERAY, "prepare", "synthetic", "--synthetic-size", str(users), str(items), str(inter),
             "--out", str(data), "--force"], env)
        stats = json.loads((data / "stats.json").read_text())
        row.update(kept_users=stats["users"], kept_items=stats["items"], kept_interactions=stats["interactions"],
                   train_items=stats["items"] - stats["split"]["val_items"] - stats["split"]["test_items"])
        code = dict(repo=str(REPO), data=str(data), model=str(model), msl=args.msl)
        subprocess.run(["rm", "-rf", str(data / "tokens")], check=True)
        row["tokenize_s"], row["tokenize_mb"], out = timed([PY, "-c", TOKENIZE.format(**code)], env)
        row["tokens"] = int(re.search(r"TOKENS (\d+)", out).group(1))
        row["startup_s"], row["startup_mb"], _ = timed([PY, "-c", TOKENIZE.format(**code)], env)
        _, row["step_mb"], out = timed([PY, "-c", STEP.format(**code, m=args.m, reps=args.reps)],
                                       env)
        row["step_s"] = float(re.search(r"STEP ([\d.]+)", out).group(1))
        row["step_items"] = int(re.search(r"ITEMS (\d+)", out).group(1))
        row["evaluate_s"], row["evaluate_mb"], _ = timed(
            [BEERAY, "evaluate", "--data", str(data), "--model", str(model), "--split", "test",
             "--bootstrap", "100", "--out", str(work / f"eval-{users}-{items}-{inter}")], env)
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(args, rows)
    if args.workers_only:
        write(args, rows)
    cols = [("users", "users"), ("items", "items"), ("interactions", "rows in"), ("kept_interactions", "kept"),
            ("prepare_s", "prepare s"), ("prepare_mb", "MB"), ("tokenize_s", "tokenize s"), ("tokenize_mb", "MB"),
            ("startup_s", "start-up s"), ("startup_mb", "MB"), ("step_items", "|I_b|"), ("step_s", "step s"), ("step_mb", "MB"),
            ("evaluate_s", "evaluate s"), ("evaluate_mb", "MB")]
    cells = [[h for _, h in cols]] + [[f"{r[k]:,.0f}" if isinstance(r[k], int) else f"{r[k]:,.1f}" for k, _ in cols]
                                      for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    for c in cells:
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
