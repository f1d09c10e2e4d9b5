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

--ray-workers W [W ...] measures instead the real `beeray train` path through Ray Train (TorchTrainer)
for each size and worker count W (issue 12: start-up per worker, peak RSS of driver and workers):

  driver      a fresh process running `beeray train` (beeray.cli.main) on the prepared folder: its
              time from process start to the end of the first optimizer step, its tokenize_catalog
              time and whether it tokenized, and its peak RSS (getrusage, in-process, so Ray's own
              processes are not in it; they are sampled separately: ray_tree_pss_mb, ray_tree_rss_mb)
  worker      per Ray Train worker process, measured inside it: loop entry -> Recipe.setup done
              (data load + model load + map or tokenize the catalog), the same from process start,
              its peak RSS (getrusage) at set-up and at the end, and how often it called the
              tokenizer (TokenizedCatalog.build and any tokenizer __call__; must be 0)

The run is the real one up to its length: each worker's shard is read in full and then cut to
--ray-steps steps (epochs 1, --no-eval, no base-model baseline), and the final evaluation of the
trained model is skipped (beeray.trainer.final_metrics returns {}), since neither is start-up. Each
run uses its own folder of symlinks to the prepared files, with its own tokens/: `cold` starts it
empty (the driver tokenizes), `warm` links the existing tokenized catalogs (driver and workers map),
`restart` is warm plus an injected crash of rank 0 at step 2 with max_failures 1 and a checkpoint
every step, so that the restarted workers' start-up (with checkpoint restore) is measured too.
Writes --out (default results/scale-ray.json).
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
# The first 1,000 users only: reading the whole training file (1.8e7 rows at 10^6 items) would put
# ~250 MB of the benchmark's own into the step process's peak RSS.
lists = next(pq.ParquetFile(data.train_path()).iter_batches(batch_size=1000, columns=["items"])).column("items")
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


RAY_RUNS = ("cold", "warm", "restart")


def _mem() -> dict:
    """This process's peak RSS (getrusage, MB) and its RSS now, split by kind (/proc/self/status, MB)."""
    import resource

    out = {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(val.split()[0]) / 1024
    return out


def _count_tokenizer(counts: dict) -> None:
    """Count every catalog tokenization and every tokenizer call made in this process from now on."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from beeray.encoder import TokenizedCatalog

    build, call = TokenizedCatalog.__dict__["build"].__func__, PreTrainedTokenizerBase.__call__

    def counted_build(cls, *a, **k):
        counts["catalog_builds"] += 1
        return build(cls, *a, **k)

    def counted_call(self, *a, **k):
        counts["tokenizer_calls"] += 1
        return call(self, *a, **k)

    TokenizedCatalog.build = classmethod(counted_build)
    PreTrainedTokenizerBase.__call__ = counted_call


def _make_worker_loop(rec_dir: str, steps: int):
    """beeray's train_loop_per_worker, instrumented: the same loop, timed and measured from inside.

    Defined in __main__ (the driver runs this file), so cloudpickle ships it to the workers by value.
    """

    def loop(config: dict) -> None:
        import json
        import math
        import os
        import time

        entry = time.time()
        before_import = _mem()
        import ray.train
        import psutil  # Ray's bundled copy (ray/thirdparty_files)

        # beeray's own train_loop_per_worker is unpickled by reference, which imports beeray.train_loop
        # (torch, transformers, sentence-transformers) before the loop starts; this wrapper comes by
        # value, so that import happens here, timed.
        import beeray.train_loop as tl

        imported = time.time()
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        rec = {"rank": rank, "world": world, "pid": os.getpid(), "process_start": psutil.Process().create_time(),
               "loop_entry": entry, "restored": ray.train.get_checkpoint() is not None,
               "import_s": imported - entry, "before_import_mem": before_import,
               "catalog_builds": 0, "tokenizer_calls": 0, "steps": 0}
        path = os.path.join(rec_dir, f"worker-{rank}-{os.getpid()}-{int(entry * 1e6)}.json")

        def mark(tag: str) -> None:
            rec[f"{tag}_t"] = time.time()
            rec[f"{tag}_mem"] = _mem()
            with open(path + ".tmp", "w") as f:
                json.dump(rec, f)
            os.replace(path + ".tmp", path)

        def timed_fn(name: str, fn):
            def wrapper(*a, **k):
                t0 = time.time()
                try:
                    return fn(*a, **k)
                finally:
                    rec[f"{name}_s"] = rec.get(f"{name}_s", 0.0) + time.time() - t0
            return wrapper

        mark("entry")
        _count_tokenizer(rec)
        # Set-up, piece by piece (Recipe.setup looks these names up at call time).
        setup = tl.Recipe.__dict__["setup"].__func__
        load_data = tl.PreparedData.__dict__["load"].__func__
        cached = tl.TokenizedCatalog.__dict__["cached"].__func__

        def timed_setup(cls, *a, **k):
            mark("setup_start")
            recipe = setup(cls, *a, **k)
            mark("setup_done")
            return recipe

        tl.Recipe.setup = classmethod(timed_setup)
        tl.PreparedData.load = classmethod(timed_fn("data_load", load_data))
        tl.TokenizedCatalog.cached = classmethod(timed_fn("catalog", cached))
        tl.load_model = timed_fn("model_load", tl.load_model)
        # The run's length: the shard is read in full, then cut to `steps` steps on every worker.
        read_shard, train_step = tl.read_shard, tl.train_step
        local = math.ceil(config["batch_size"] / world) if config["parallel"] == "items" else config["batch_size"]

        def short_shard(shard):
            users, items = read_shard(shard)
            # A full epoch would also hold each list as catalog rows (train_epoch): as many bytes again.
            rec["shard_users"], rec["shard_item_mb"] = int(users.size), sum(x.nbytes for x in items) / 2**20
            mark("shard_read")
            return users[:steps * local], items[:steps * local]

        def counted_step(*a, **k):
            res = train_step(*a, **k)
            rec["steps"] += 1
            if rec["steps"] == 1:
                mark("first_step")
            return res

        tl.read_shard, tl.train_step = short_shard, counted_step
        mark("patched")
        tl.train_loop_per_worker(config)
        mark("end")

    return loop


def _sample_tree(stop, peaks: dict) -> None:
    """Peak memory of the processes under the driver (Ray's own processes and its workers), sampled
    every 0.5 s: the sum of their RSS (shared pages counted once per process) and of their PSS
    (shared pages split among the processes that map them: what the run takes from the node)."""
    import psutil  # Ray's bundled copy, importable once ray is

    me = psutil.Process()
    while not stop.wait(0.5):
        rss_sum = pss_sum = 0
        for p in me.children(recursive=True):
            try:
                title = " ".join(p.cmdline())[:60]
                with open(f"/proc/{p.pid}/smaps_rollup") as f:
                    kb = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f)
                          if k in ("Rss", "Pss")}
            except (psutil.Error, OSError, ValueError):
                continue
            rss_sum += kb.get("Rss", 0)
            pss_sum += kb.get("Pss", 0)
            old = peaks["procs"].get(p.pid, (0, 0, title))
            peaks["procs"][p.pid] = (max(old[0], kb.get("Rss", 0)), max(old[1], kb.get("Pss", 0)), title)
        peaks["rss"], peaks["pss"] = max(peaks["rss"], rss_sum), max(peaks["pss"], pss_sum)


def ray_driver(spec_path: str) -> int:
    """The driver of one Ray run (this file run with --ray-driver SPEC): `beeray train`, instrumented."""
    import threading

    import ray  # noqa: F401  (puts Ray's bundled psutil, ray/thirdparty_files, on sys.path)
    import psutil

    sys.path.insert(0, str(REPO))
    spec = json.loads(Path(spec_path).read_text())
    start = psutil.Process().create_time()
    import beeray.trainer as trainer
    from beeray.cli import main as cli
    from beeray.config import TrainConfig

    res: dict = {"process_start": start, "catalog_builds": 0, "tokenizer_calls": 0}
    _count_tokenizer(res)
    tokenize, fit = trainer.tokenize_catalog, trainer.fit

    def timed_tokenize(cfg, data):
        t0 = time.time()
        tokenize(cfg, data)
        res["tokenize_catalog_s"] = time.time() - t0
        res["after_tokenize_mem"] = _mem()

    def timed_fit(*a, **k):
        res["fit_start"] = time.time()
        try:
            return fit(*a, **k)
        finally:
            res["fit_end"] = time.time()
            res["after_fit_mem"] = _mem()

    trainer.tokenize_catalog, trainer.fit = timed_tokenize, timed_fit
    trainer.train_loop_per_worker = _make_worker_loop(spec["records"], spec["steps"])
    trainer.final_metrics = lambda *a, **k: {}  # the trained model's evaluation is not start-up
    argv = ["train", *spec["argv"]]
    if "tracking" in TrainConfig.__dataclass_fields__:
        argv += ["--set", "tracking=none"]
    stop, peaks = threading.Event(), {"rss": 0, "pss": 0, "procs": {}}
    sampler = threading.Thread(target=_sample_tree, args=(stop, peaks), daemon=True)
    sampler.start()
    rc = cli(argv)
    res["end"] = time.time()
    stop.set()
    sampler.join()
    res.update(rc=rc, mem=_mem(), ray_tree_rss_mb=peaks["rss"] / 1024, ray_tree_pss_mb=peaks["pss"] / 1024,
               ray_procs=sorted(([v[0] / 1024, v[1] / 1024, v[2]] for v in peaks["procs"].values()), reverse=True))
    Path(spec["result"]).write_text(json.dumps(res))
    return rc


def ray_run(data: Path, model: Path, workers: int, kind: str, args, env) -> dict:
    """One `beeray train` through Ray Train with `workers` workers; returns its row."""
    import shutil

    base = Path(args.work) / "ray-runs" / f"{data.name}-w{workers}-{kind}"
    shutil.rmtree(base, ignore_errors=True)
    folder, records = base / "data", base / "records"
    folder.mkdir(parents=True)
    records.mkdir()
    for f in data.iterdir():
        if f.name != "tokens":
            (folder / f.name).symlink_to(f)
    (folder / "tokens").mkdir()
    if kind != "cold" and (data / "tokens").is_dir():
        for key in (data / "tokens").iterdir():
            (folder / "tokens" / key.name).symlink_to(key)
    steps = 3 if kind == "restart" else args.ray_steps
    argv = ["--data", str(folder), "--model", str(model), "--out", str(base / "run"), "--epochs", "1",
            "--num-workers", str(workers), "--cpus-per-worker", "1", "--batch-size", str(args.ray_batch * workers),
            "--m", str(args.m), "--max-seq-length", str(args.msl), "--encode-batch-size", "64", "--amp", "off",
            "--no-eval", "--no-baseline"]
    if kind == "restart":
        argv += ["--max-failures", "1", "--checkpoint-every", "1"]
        env = {**env, "BEERAY_CRASH_AT_STEP": "2"}  # the fault drill (beeray.train_loop.CRASH_AT_STEP)
    spec = base / "spec.json"
    spec.write_text(json.dumps({"argv": argv, "records": str(records), "steps": steps,
                                "result": str(base / "driver.json")}))
    t0 = time.perf_counter()
    proc = subprocess.run([PY, __file__, "--ray-driver", str(spec)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    (base / "driver.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"ray run failed ({proc.returncode}), log in {base / 'driver.log'}:\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    drv = json.loads((base / "driver.json").read_text())
    recs = sorted((json.loads(p.read_text()) for p in records.glob("worker-*.json")),
                  key=lambda r: (r["loop_entry"], r["rank"]))
    t_drv = drv["process_start"]
    firsts = [r["first_step_t"] for r in recs if "first_step_t" in r]
    row = {"workers": workers, "run": kind, "steps": steps, "wall_s": wall,
           "driver_tokenized": drv["catalog_builds"] > 0, "driver_tokenize_s": drv.get("tokenize_catalog_s"),
           "driver_first_step_s": min(firsts) - t_drv if firsts else None,
           "driver_fit_s": drv["fit_end"] - drv["fit_start"], "driver_total_s": drv["end"] - t_drv,
           "driver_mb": drv["mem"]["peak_mb"], "driver_mb_after_tokenize": drv["after_tokenize_mem"]["peak_mb"],
           "driver_mem_end": drv["mem"], "ray_tree_rss_mb": drv["ray_tree_rss_mb"],
           "ray_tree_pss_mb": drv["ray_tree_pss_mb"], "ray_procs": drv["ray_procs"],
           "worker_rows": []}
    for r in recs:
        done = r.get("setup_done_t")
        row["worker_rows"].append({
            "rank": r["rank"], "pid": r["pid"], "restored": r["restored"],
            "entry_after_driver_s": r["loop_entry"] - t_drv,
            "process_age_at_entry_s": r["loop_entry"] - r["process_start"],
            "startup_s": done - r["process_start"] if done else None,  # worker process start -> Recipe.setup done
            "entry_to_setup_s": done - r["loop_entry"] if done else None,  # imports + Recipe.setup
            "setup_s": done - r["setup_start_t"] if done else None,  # Recipe.setup alone
            "import_s": r["import_s"],  # beeray.train_loop and what it imports
            "instrument_s": r["patched_t"] - r["loop_entry"] - r["import_s"],  # this benchmark's own patching
            "prelude_s": r["setup_start_t"] - r["patched_t"] if done else None,  # the loop before Recipe.setup
            "data_load_s": r.get("data_load_s"), "model_load_s": r.get("model_load_s"), "catalog_s": r.get("catalog_s"),
            "shard_read_s": r["shard_read_t"] - done if "shard_read_t" in r and done else None,
            "first_step_s": r["first_step_t"] - r["shard_read_t"] if "first_step_t" in r else None,
            "steps": r["steps"], "catalog_builds": r["catalog_builds"], "tokenizer_calls": r["tokenizer_calls"],
            "mb_before_import": r["before_import_mem"]["peak_mb"], "mb_at_entry": r["entry_mem"]["peak_mb"],
            "shard_users": r.get("shard_users"), "shard_item_mb": r.get("shard_item_mb"),
            "mb_at_setup": r["setup_done_mem"]["peak_mb"] if done else None,
            "mb": r[[k for k in r if k.endswith("_mem")][-1]]["peak_mb"],  # the latest mark's peak
            "mem_at_setup": r.get("setup_done_mem"), "mem_last": r[[k for k in r if k.endswith("_mem")][-1]]})
    row["worker_tokenizer_calls"] = sum(w["tokenizer_calls"] + w["catalog_builds"] for w in row["worker_rows"])
    return row


def ray_table(rows: list[dict]) -> None:
    head = ["items", "rows", "W", "run", "drv tok s", "drv->step1 s", "drv MB", "drv MB@tok", "tree PSS MB",
            "worker", "age s", "start-up s", "import s", "setup s", "data s", "model s", "catalog s", "MB@entry",
            "MB@setup", "MB peak", "tok"]
    f = lambda x: "" if x is None else f"{x:,.1f}"  # noqa: E731
    cells = [head]
    for r in rows:
        run = [f"{r['kept_items']:,}", f"{r['kept_interactions']:,}", str(r["workers"]), r["run"],
               f(r["driver_tokenize_s"]) + ("*" if r["driver_tokenized"] else ""), f(r["driver_first_step_s"]),
               f(r["driver_mb"]), f(r["driver_mb_after_tokenize"]), f(r["ray_tree_pss_mb"])]
        for i, w in enumerate(r["worker_rows"]):
            cells.append((run if i == 0 else [""] * len(run)) + [
                f"r{w['rank']}{'R' if w['restored'] else ''}", f(w["process_age_at_entry_s"]), f(w["startup_s"]),
                f(w["import_s"]), f(w["setup_s"]), f(w["data_load_s"]), f(w["model_load_s"]), f(w["catalog_s"]),
                f(w["mb_at_entry"]), f(w["mb_at_setup"]), f(w["mb"]), str(w["tokenizer_calls"] + w["catalog_builds"])])
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for c in cells:
        print("  ".join(x.rjust(wd) for x, wd in zip(c, widths)))
    print("drv tok s: the driver's tokenize_catalog (* = it tokenized; else it mapped the saved catalog); "
          "drv->step1: driver process start -> first step done; age: the worker process's age when the loop "
          "started; start-up: worker process start -> Recipe.setup done, of which import (beeray.train_loop) and "
          "setup (Recipe.setup: data + model + catalog + optimizer); rNR: a restarted worker (restored from a "
          "checkpoint); MB: peak RSS (getrusage); tree PSS: peak sum of PSS over Ray's processes and workers (sampled); "
          "tok: the worker's catalog builds + tokenizer calls (must be 0)")


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
    p.add_argument("--ray-workers", type=int, nargs="+", metavar="W",
                   help="measure `beeray train` through Ray Train with W workers instead (see above)")
    p.add_argument("--ray-runs", nargs="+", choices=RAY_RUNS, default=["cold", "warm"],
                   help="tokens cache state of each Ray run (default: cold warm)")
    p.add_argument("--ray-steps", type=int, default=1, help="optimizer steps of a Ray run (restart: 3)")
    p.add_argument("--ray-batch", type=int, default=2, help="users per worker per step in a Ray run")
    p.add_argument("--ray-driver", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ray_driver:
        return ray_driver(args.ray_driver)
    if args.ray_workers and args.out == str(RESULTS / "scale.json"):
        args.out = str(RESULTS / "scale-ray.json")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "true"}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny"
    if not (model / "st").is_dir():
        sys.path.insert(0, str(REPO))
        from beeray.testing import tiny_model

        tiny_model(model)
    model = model / "st"
    rows = []
    if args.ray_workers:
        for spec in args.sizes:
            users, items, inter = (int(x) for x in spec.split(","))
            data = work / f"shop-{users}-{items}-{inter}"
            if not (data / "stats.json").is_file():
                subprocess.run([BEERAY, "prepare", "synthetic", "--synthetic-size", str(users), str(items), str(inter),
                                "--out", str(data), "--force"], check=True, capture_output=True, env=env)
            stats = json.loads((data / "stats.json").read_text())
            for w in args.ray_workers:
                for kind in args.ray_runs:
                    row = {"users": users, "items": items, "interactions": inter, "kept_items": stats["items"],
                           "kept_interactions": stats["interactions"], **ray_run(data, model, w, kind, args, env)}
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k not in ("ray_procs", "driver_mem_end")}),
                          flush=True)
                    write(args, rows)
        ray_table(rows)
        return 0
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
