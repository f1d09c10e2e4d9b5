"""Benchmarks of one beeFormer training step (beeray.step.train_step).

Cases (each prints a table and writes benchmarks/results/<case>.json):
  goodbooks     step efficiency: seconds of one train_step / seconds to encode the same I_b once
                without grad (same model, texts, chunking, process), Goodbooks LLM descriptions.
  ml-reference  beeray's train_step vs the paper's reference step (benchmarks/reference_step.py)
                on ml-latest-small, same model, users and I_b, interleaved.
  gb-reference  the same comparison on the Goodbooks LLM descriptions at max_seq_length 256.
  memory        peak memory of one step for several m and catalog sizes, one fresh subprocess each.
  precision     the same steps in fp32 and under bf16 autocast (`amp: bf16`), two copies of the model
                from the same weights, interleaved: seconds per step of each and the speed-up
                (--on ml: ml-latest-small; --on goodbooks: the Goodbooks descriptions; --on amazon:
                Amazon Industrial & Scientific, time split).

Every figure that compares two things is measured side by side in one process with the
repetitions interleaved (A, B, A, B, ...): the machine may be shared, so absolute seconds
drift, but ratios taken this way stay comparable.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import beeray.step as step_mod  # noqa: E402
from beeray.data.prepared import PreparedData  # noqa: E402
from beeray.encoder import ChunkPlan, TokenizedCatalog, encode  # noqa: E402
from beeray.models import DEFAULT_MODEL, load_model, set_attention_dropout  # noqa: E402
from beeray.sampler import sample_item_set, step_rng  # noqa: E402
from beeray.step import train_step  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = REPO.parent / "shared" / "data"
SEED = 42


# ---------------------------------------------------------------- helpers

def machine() -> dict:
    info = {"date": dt.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_avg_1m": os.getloadavg()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ensure_prepared(kind: str, raw: Path, out: Path, split: str = "item") -> Path:
    """A prepared folder for the benchmark (written once with beeray's own prepare)."""
    if not (out / "stats.json").is_file():
        from beeray.data.prepare import PrepareOptions, prepare

        print(f"preparing {kind} from {raw} -> {out}", flush=True)
        prepare(kind, out, source=raw, options=PrepareOptions(split=split))
    return out


def train_users(root: Path, catalog_items: np.ndarray) -> list[np.ndarray]:
    """The training users' items as rows of the training catalog (`catalog_items`)."""
    rows = pq.read_table(root / "train.parquet", columns=["items"]).column("items").to_pylist()
    return [np.searchsorted(catalog_items, np.asarray(r, dtype=np.int64)) for r in rows]


def batches(users: list[np.ndarray], batch: int, n: int, seed: int = SEED) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[users[i] for i in rng.choice(len(users), size=batch, replace=False)] for _ in range(n)]


def step_items(batch: list[np.ndarray], n_items: int, m: int, key: tuple[int, ...]) -> np.ndarray:
    """The I_b train_step will draw for this batch and rng key (same sampler, same key)."""
    return sample_item_set(np.unique(np.concatenate(batch)), n_items, m, step_rng(*key))


def encode_only(model, catalog: TokenizedCatalog, item_set: np.ndarray, chunk: int, device,
                precision: str = "fp32") -> float:
    """Seconds to encode I_b once, no grad, inference mode (eval: no dropout), same chunks as the step
    (I_b in length order, then ChunkPlan), features built on the device as the step builds them."""
    mine = item_set[np.argsort(catalog.lengths[item_set], kind="stable")]
    on_device = catalog.on(device)
    plan = ChunkPlan.build(catalog, mine, chunk, device)
    was_training = model.training
    model.eval()
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for rows, width in zip(plan.rows, plan.widths):
            encode(model, on_device.features(rows, width), precision)
    sync(device)
    model.train(was_training)
    return time.perf_counter() - t0


class PhaseTimer:
    """Splits train_step's time into pass 1 / pass 2 / optimizer by wrapping the functions it calls.

    Wraps the names in beeray.step's namespace only (no change to beeray): the rest of the step
    (sampling, collectives, loss, dL/dA) is what remains.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = {}
        self._orig = {}

    def _wrap(self, name: str, fn):
        def timed(*a, **k):
            sync(self.device)
            t0 = time.perf_counter()
            out = fn(*a, **k)
            sync(self.device)
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
            return out
        return timed

    @contextmanager
    def active(self, optimizer):
        self.times = {}
        self._orig = {"encode_pass1": step_mod.encode_pass1, "backward_pass2": step_mod.backward_pass2}
        step_mod.encode_pass1 = self._wrap("pass1", self._orig["encode_pass1"])
        step_mod.backward_pass2 = self._wrap("pass2", self._orig["backward_pass2"])
        orig_opt = optimizer.step
        optimizer.step = self._wrap("optimizer", orig_opt)
        try:
            yield self
        finally:
            step_mod.encode_pass1 = self._orig["encode_pass1"]
            step_mod.backward_pass2 = self._orig["backward_pass2"]
            optimizer.step = orig_opt


def timed_step(model, optimizer, catalog, batch, *, m, key, chunk, device, phases: PhaseTimer | None = None,
               activation_memory: float = 0.0, precision: str = "fp32"):
    sync(device)
    t0 = time.perf_counter()
    kw = dict(m=m, rng_key=key, chunk_size=chunk, device=device, activation_memory=activation_memory,
              precision=precision)
    if phases is None:
        res = train_step(model, optimizer, catalog, batch, **kw)
    else:
        with phases.active(optimizer):
            res = train_step(model, optimizer, catalog, batch, **kw)
    sync(device)
    return time.perf_counter() - t0, res


def load(model_name: str, msl: int, device: torch.device, attention_dropout: float | None = None):
    model = load_model(model_name, device=str(device))
    model.max_seq_length = msl
    if attention_dropout is not None:
        set_attention_dropout(model, attention_dropout)
    return model


def warm_up(model, optimizer, catalog, users, chunk, device) -> None:
    """One small step (1 user, m = one chunk) so that first-call costs (allocator, thread pool,
    kernels) stay out of the timed repetitions without spending a full step on it."""
    train_step(model, optimizer, catalog, [users[0]], m=chunk, rng_key=(SEED, 99, 0), chunk_size=chunk,
               device=device)
    encode_only(model, catalog, np.arange(chunk), chunk, device)


def write(name: str, doc: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------- case: goodbooks

def case_goodbooks(args) -> dict:
    device = pick_device(args.device)
    root = ensure_prepared("goodbooks", SHARED / "goodbooks", Path(args.data or "/tmp/gb"))
    data = PreparedData.load(root)
    catalog_items = data.train_items()
    users = train_users(root, catalog_items)
    model = load(args.model, args.msl, device, args.attention_dropout)
    catalog = TokenizedCatalog.build(model, data.train_texts(catalog_items), args.msl, items=catalog_items)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    steps = batches(users, args.batch, args.reps)
    warm_up(model, optimizer, catalog, users, args.chunk, device)

    rows, records = [], []
    phases = PhaseTimer(device)
    for rep, batch in enumerate(steps):
        key = (SEED, 0, rep)
        item_set = step_items(batch, len(catalog), args.m, key)
        positives = np.unique(np.concatenate(batch)).size
        tokens = int(catalog.lengths[item_set].sum())
        # Interleave: encode-only and the step alternate, and which goes first alternates too.
        if rep % 2 == 0:
            enc_s = encode_only(model, catalog, item_set, args.chunk, device)
            step_s, res = timed_step(model, optimizer, catalog, batch, m=args.m, key=key, chunk=args.chunk,
                                     device=device, phases=phases, activation_memory=args.activation_memory * 2**30)
        else:
            step_s, res = timed_step(model, optimizer, catalog, batch, m=args.m, key=key, chunk=args.chunk,
                                     device=device, phases=phases, activation_memory=args.activation_memory * 2**30)
            enc_s = encode_only(model, catalog, item_set, args.chunk, device)
        assert res.items == item_set.size
        ph = dict(phases.times)
        rec = {"rep": rep, "items": res.items, "positives": int(positives), "tokens": tokens, "step_s": step_s,
               "encode_s": enc_s, "ratio": step_s / enc_s, "pass1_s": ph.get("pass1", 0.0),
               "pass2_s": ph.get("pass2", 0.0), "optimizer_s": ph.get("optimizer", 0.0), "loss": res.loss}
        rec["other_s"] = step_s - rec["pass1_s"] - rec["pass2_s"] - rec["optimizer_s"]
        records.append(rec)
        rows.append([rep, res.items, positives, tokens, step_s, enc_s, step_s / enc_s, rec["pass1_s"],
                     rec["pass2_s"], rec["optimizer_s"], rec["other_s"]])
        print(f"  rep {rep}: |I_b| {res.items}  step {step_s:.2f}s  encode {enc_s:.2f}s  "
              f"ratio {step_s / enc_s:.2f}", flush=True)
        write("goodbooks.partial", {"case": "goodbooks", "config": vars(args), "reps": records})

    step_total = sum(r["step_s"] for r in records)
    enc_total = sum(r["encode_s"] for r in records)
    summary = {"step_s_mean": step_total / len(records), "encode_s_mean": enc_total / len(records),
               "ratio": step_total / enc_total, "ratio_median": statistics.median(r["ratio"] for r in records),
               "pass2_over_pass1": sum(r["pass2_s"] for r in records) / sum(r["pass1_s"] for r in records),
               "goal": 4.5}
    print()
    print(f"goodbooks step efficiency: {Path(args.model).name}, msl {args.msl}, m {args.m}, chunk {args.chunk}, batch "
          f"{args.batch} users, {device}, {torch.get_num_threads()} threads, activation_memory "
          f"{args.activation_memory} GiB")
    print(table(["rep", "|I_b|", "pos", "tokens", "step_s", "encode_s", "ratio", "pass1_s", "pass2_s", "optim_s",
                 "other_s"], rows))
    print(f"ratio (sum step / sum encode) = {summary['ratio']:.2f}   median {summary['ratio_median']:.2f}   "
          f"goal <= 4.5   pass2/pass1 = {summary['pass2_over_pass1']:.2f}")
    return {"case": "goodbooks", "config": vars(args), "machine": machine(), "reps": records, "summary": summary}


# ---------------------------------------------------------------- case: precision

def case_precision(args) -> dict:
    """fp32 against bf16 autocast, the same users, I_b and dropout draws for both, interleaved (which
    goes first alternates); each side trains its own copy of the model from the same weights."""
    device = pick_device(args.device)
    kind, raw, default, label, split = PRECISION_DATA[args.on]
    root = ensure_prepared(kind, raw, Path(args.data or default), split)
    data = PreparedData.load(root)
    catalog_items = data.train_items()
    users = train_users(root, catalog_items)
    models = {"fp32": load(args.model, args.msl, device, args.attention_dropout)}
    models["bf16"] = copy.deepcopy(models["fp32"])
    catalog = TokenizedCatalog.build(models["fp32"], data.train_texts(catalog_items), args.msl, items=catalog_items)
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}
    for name in models:
        warm_up(models[name], optimizers[name], catalog, users, args.chunk, device)
    records = []
    for rep, batch in enumerate(batches(users, args.batch, args.reps)):
        key = (SEED, 0, rep)
        rec = {"rep": rep}
        for name in (("fp32", "bf16") if rep % 2 == 0 else ("bf16", "fp32")):
            torch.manual_seed(rep)  # the same dropout draws on both sides
            rec[f"{name}_s"], res = timed_step(models[name], optimizers[name], catalog, batch, m=args.m, key=key,
                                               chunk=args.chunk, device=device, precision=name)
            rec[f"{name}_loss"], rec["items"] = res.loss, res.items
        rec["speedup"] = rec["fp32_s"] / rec["bf16_s"]
        records.append(rec)
        print(f"  rep {rep}: |I_b| {rec['items']}  fp32 {rec['fp32_s']:.2f}s  bf16 {rec['bf16_s']:.2f}s  "
              f"speed-up {rec['speedup']:.2f}x  loss fp32 {rec['fp32_loss']:.6f} bf16 {rec['bf16_loss']:.6f}", flush=True)
    fp32, bf16 = (sum(r[f"{k}_s"] for r in records) for k in ("fp32", "bf16"))
    summary = {"fp32_s_mean": fp32 / len(records), "bf16_s_mean": bf16 / len(records), "speedup": fp32 / bf16}
    print()
    print(f"precision on {label}: {Path(args.model).name}, msl {args.msl}, m {args.m}, chunk {args.chunk}, batch "
          f"{args.batch} users, {device}, {torch.get_num_threads()} threads")
    print(table(["rep", "|I_b|", "fp32_s", "bf16_s", "speed-up"],
                [[r["rep"], r["items"], r["fp32_s"], r["bf16_s"], r["speedup"]] for r in records]))
    print(f"fp32 {summary['fp32_s_mean']:.2f} s/step, bf16 {summary['bf16_s_mean']:.2f} s/step: "
          f"bf16 is {summary['speedup']:.2f}x as fast")
    return {"case": "precision", "config": vars(args), "machine": machine(), "reps": records, "summary": summary}


# ---------------------------------------------------------------- cases: ml-reference, gb-reference

# Data of each reference case: (loader kind, raw folder, default prepared folder, label).
REFERENCE_DATA = {
    "ml-reference": ("movielens", SHARED / "ml-latest-small", "/tmp/bench_ml", "ml-latest-small"),
    "gb-reference": ("goodbooks", SHARED / "goodbooks", "/tmp/gb", "Goodbooks LLM descriptions"),
}
# The precision case's data sets, each split as docs/results.md splits it: (..., label, split).
PRECISION_DATA = {"ml": (*REFERENCE_DATA["ml-reference"], "item"), "goodbooks": (*REFERENCE_DATA["gb-reference"], "item"),
                  "amazon": ("amazon-json", SHARED / "amazon-scientific", "/tmp/bench_amazon",
                             "Amazon Industrial & Scientific", "time")}


def case_reference(args) -> dict:
    from reference_step import reference_encode_no_grad, reference_train_step, tokenize_catalog

    device = pick_device(args.device)
    kind, raw, default_dir, label = REFERENCE_DATA[args.case]
    root = ensure_prepared(kind, raw, Path(args.data or default_dir))
    data = PreparedData.load(root)
    catalog_items = data.train_items()
    texts = data.train_texts(catalog_items)
    users = train_users(root, catalog_items)
    model = load(args.model, args.msl, device)
    ref_model = copy.deepcopy(model)  # same weights; each side updates its own copy
    # Both sides tokenize the training catalog once, here, outside every timed step.
    catalog = TokenizedCatalog.build(model, texts, args.msl, items=catalog_items)
    ref_catalog = tokenize_catalog(ref_model, texts, args.msl, device)
    width = ref_catalog.width
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ref_optimizer = torch.optim.NAdam(ref_model.parameters(), lr=1e-5)  # the reference's keras Nadam
    steps = batches(users, args.batch, args.reps)
    warm_up(model, optimizer, catalog, users, args.chunk, device)
    small = np.arange(args.chunk)
    reference_train_step(ref_model, ref_optimizer, ref_catalog, [users[0]], np.union1d(users[0], small),
                         sbert_batch_size=args.chunk, device=device)

    def ref_encode(item_set, batch) -> float:
        pos = np.unique(np.concatenate(batch))
        order = np.concatenate([pos, np.setdiff1d(item_set, pos, assume_unique=True)])
        ref_model.eval()
        sync(device)
        t0 = time.perf_counter()
        reference_encode_no_grad(ref_model, ref_catalog, order, args.chunk)
        sync(device)
        return time.perf_counter() - t0

    def ref_step(item_set, batch):
        sync(device)
        t0 = time.perf_counter()
        loss = reference_train_step(ref_model, ref_optimizer, ref_catalog, batch, item_set,
                                    sbert_batch_size=args.chunk, device=device)
        sync(device)
        return time.perf_counter() - t0, loss

    records, rows = [], []
    for rep, batch in enumerate(steps):
        key = (SEED, 0, rep)
        item_set = step_items(batch, len(catalog), args.m, key)
        # Interleaved, order flipped every repetition.
        order = ["bee", "ref"] if rep % 2 == 0 else ["ref", "bee"]
        rec = {"rep": rep, "items": int(item_set.size),
               "bee_tokens": int(catalog.lengths[item_set].sum()), "ref_tokens": int(item_set.size * width)}
        for side in order:
            if side == "bee":
                rec["bee_encode_s"] = encode_only(model, catalog, item_set, args.chunk, device)
                rec["bee_step_s"], res = timed_step(model, optimizer, catalog, batch, m=args.m, key=key,
                                                    chunk=args.chunk, device=device,
                                                    activation_memory=args.activation_memory * 2**30)
                assert res.items == item_set.size
            else:
                rec["ref_encode_s"] = ref_encode(item_set, batch)
                rec["ref_step_s"], _ = ref_step(item_set, batch)
        rec["speedup"] = rec["ref_step_s"] / rec["bee_step_s"]
        records.append(rec)
        rows.append([rep, rec["items"], rec["bee_step_s"], rec["ref_step_s"], rec["speedup"], rec["bee_encode_s"],
                     rec["ref_encode_s"], rec["bee_step_s"] / rec["bee_encode_s"],
                     rec["ref_step_s"] / rec["ref_encode_s"]])
        print(f"  rep {rep}: |I_b| {rec['items']}  beeray {rec['bee_step_s']:.2f}s  reference "
              f"{rec['ref_step_s']:.2f}s  speed-up {rec['speedup']:.2f}x", flush=True)
        write(f"{args.case}.partial", {"case": args.case, "config": vars(args), "reps": records})

    def tot(k):
        return sum(r[k] for r in records)

    summary = {"bee_step_s_mean": tot("bee_step_s") / len(records), "ref_step_s_mean": tot("ref_step_s") / len(records),
               "speedup": tot("ref_step_s") / tot("bee_step_s"),
               "bee_encode_s_mean": tot("bee_encode_s") / len(records),
               "ref_encode_s_mean": tot("ref_encode_s") / len(records),
               "bee_step_over_encode": tot("bee_step_s") / tot("bee_encode_s"),
               "ref_step_over_encode": tot("ref_step_s") / tot("ref_encode_s"),
               "ref_width": width, "mean_tokens_per_text": float(catalog.lengths.mean()),
               "goal_speedup": 2.5}
    print()
    print(f"{args.case}: {Path(args.model).name}, {label} ({len(catalog)} training items), msl {args.msl} (reference pads to "
          f"{width}), m {args.m}, chunk {args.chunk}, batch {args.batch} users, {device}, "
          f"{torch.get_num_threads()} threads")
    print(table(["rep", "|I_b|", "beeray_s", "ref_s", "speedup", "bee_enc_s", "ref_enc_s", "bee_step/enc",
                 "ref_step/enc"], rows))
    print(f"beeray {summary['bee_step_s_mean']:.2f} s/step, reference {summary['ref_step_s_mean']:.2f} s/step, "
          f"speed-up {summary['speedup']:.2f}x (goal >= 2.5x); step/encode: beeray "
          f"{summary['bee_step_over_encode']:.2f}, reference {summary['ref_step_over_encode']:.2f}")
    return {"case": args.case, "config": vars(args), "machine": machine(), "reps": records, "summary": summary}


# ---------------------------------------------------------------- case: memory

def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(args) -> dict:
    """One configuration in a fresh process: load, tokenize, one step, report peaks."""
    device = pick_device(args.device)
    root = Path(args.data or "/tmp/gb")
    data = PreparedData.load(root)
    catalog_items = data.train_items()
    users = train_users(root, catalog_items)
    texts = data.train_texts(catalog_items)
    rng = np.random.default_rng(SEED)
    if args.catalog and args.catalog < len(texts):
        keep = np.sort(rng.choice(len(texts), size=args.catalog, replace=False))
        remap = np.full(len(texts), -1, dtype=np.int64)
        remap[keep] = np.arange(keep.size)
        texts = [texts[i] for i in keep]
        users = [remap[u][remap[u] >= 0] for u in users]
        users = [u for u in users if u.size]
    model = load(args.model, args.msl, device)
    catalog = TokenizedCatalog.build(model, texts, args.msl)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    # Few users, so that |I_b| = m (positives below m) for every m measured.
    batch = [users[i] for i in rng.choice(len(users), size=args.batch, replace=False)]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    base_rss = rss_mb()
    base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = train_step(model, optimizer, catalog, batch, m=args.m, rng_key=(SEED, 0, 0), chunk_size=args.chunk,
                     device=device)
    sync(device)
    out = {"m": args.m, "catalog": len(catalog), "items": res.items, "step_s": time.perf_counter() - t0,
           "rss_after_load_mb": base_rss, "peak_before_step_mb": base_peak,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out["step_delta_mb"] = out["peak_rss_mb"] - base_rss
    if device.type == "cuda":
        out["cuda_base_mb"] = base
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_step_delta_mb"] = out["cuda_peak_mb"] - base
    return out


def case_memory(args) -> dict:
    ensure_prepared("goodbooks", SHARED / "goodbooks", Path(args.data or "/tmp/gb"))
    n_all = PreparedData.load(Path(args.data or "/tmp/gb")).train_items().size
    # m sweep on the whole catalog; catalog sweep at m=512 (the whole catalog's run is reused when m=512 is swept).
    configs = [(m, 0) for m in args.ms]
    configs += [(512, n) for n in args.catalogs if n < n_all or 512 not in args.ms]
    records, rows = [], []
    for m, n in configs:
        cmd = [sys.executable, __file__, "--case", "memory", "--child", "--m", str(m), "--catalog", str(n),
               "--msl", str(args.msl), "--chunk", str(args.chunk), "--batch", str(args.batch),
               "--threads", str(args.threads), "--device", args.device, "--model", args.model]
        if args.data:
            cmd += ["--data", args.data]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"memory child m={m} catalog={n} failed:\n{proc.stderr[-3000:]}")
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        records.append(rec)
        row = [rec["m"], rec["catalog"], rec["items"], rec["rss_after_load_mb"], rec["peak_rss_mb"],
               rec["step_delta_mb"], rec["step_s"]]
        if "cuda_peak_mb" in rec:
            row += [rec["cuda_peak_mb"], rec["cuda_step_delta_mb"]]
        rows.append(row)
        print(f"  m {m} catalog {rec['catalog']}: peak {rec['peak_rss_mb']:.0f} MB, step delta "
              f"{rec['step_delta_mb']:.0f} MB ({rec['step_s']:.1f}s)", flush=True)
    headers = ["m", "catalog", "|I_b|", "rss_load_MB", "peak_rss_MB", "step_delta_MB", "step_s"]
    if records and "cuda_peak_mb" in records[0]:
        headers += ["cuda_peak_MB", "cuda_delta_MB"]
    print()
    print(f"memory: {Path(args.model).name}, msl {args.msl}, chunk {args.chunk}, batch {args.batch} users, one step per fresh "
          f"process, {args.device}; peak = ru_maxrss after the step, delta = peak - RSS after model load + tokenize")
    print(table(headers, rows))
    print("note: the delta includes the AdamW state (2 x params) and gradients (1 x params) created by the first "
          "step: MiniLM has 22.7M params, so ~260 MB of it does not depend on m or the catalog.")
    return {"case": "memory", "config": vars(args), "machine": machine(), "runs": records}


# ---------------------------------------------------------------- main

DEFAULTS = {
    "goodbooks": {"msl": 256, "m": 512, "chunk": 64, "batch": 8, "reps": 3},
    "ml-reference": {"msl": 64, "m": 512, "chunk": 64, "batch": 32, "reps": 3},
    "gb-reference": {"msl": 256, "m": 512, "chunk": 64, "batch": 8, "reps": 3},
    "memory": {"msl": 128, "m": 512, "chunk": 64, "batch": 2, "reps": 1},
    "precision": {"msl": 64, "m": 256, "chunk": 64, "batch": 32, "reps": 2},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", required=True, choices=sorted(DEFAULTS))
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", help="prepared folder (default /tmp/gb or /tmp/bench_ml, prepared if missing)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU (default 2)")
    p.add_argument("--msl", type=int, help="max_seq_length")
    p.add_argument("--m", type=int, help="items per step")
    p.add_argument("--chunk", type=int, help="encode chunk size")
    p.add_argument("--batch", type=int, help="users per step")
    p.add_argument("--reps", type=int, help="timed repetitions after the warm-up")
    p.add_argument("--attention-dropout", type=float, default=None,
                   help="goodbooks: set the attention-probability dropout of the trained model (default: the model's)")
    p.add_argument("--activation-memory", type=float, default=0.0,
                   help="goodbooks, *-reference: GiB of pass-1 graphs beeray's step keeps (default 0: recompute all)")
    p.add_argument("--on", choices=("ml", "goodbooks", "amazon"), default="ml", help="precision: the data set (default ml)")
    p.add_argument("--ms", type=int, nargs="+", default=[256, 512, 1024], help="memory: values of m")
    p.add_argument("--catalogs", type=int, nargs="+", default=[1000, 10000],
                   help="memory: catalog sizes at m=512 (a random subset of Goodbooks; >= its size = all)")
    p.add_argument("--catalog", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for k, v in DEFAULTS[args.case].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    if args.child:
        print(json.dumps(memory_child(args)))
        return 0
    run = {"goodbooks": case_goodbooks, "ml-reference": case_reference, "gb-reference": case_reference,
           "memory": case_memory, "precision": case_precision}[args.case]
    doc = run(args)
    print(f"wrote {write(args.case, doc)}")
    if not torch.cuda.is_available():
        print("device: CPU only (no GPU in this session); with CUDA the same command uses the GPU (--device auto).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
