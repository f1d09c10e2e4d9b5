"""The beeFormer step on a CUDA machine: exactness, host syncs, speed against the reference step, quality.

Needs only torch, transformers, sentence-transformers, numpy, scipy, pandas and pyarrow: no Ray or
Optuna (the quality run is scored here, by beeray's own metrics), no pytest, no network. Give it a prepared folder (`beeray prepare goodbooks ...`) and a
model folder (all-MiniLM-L6-v2; fp16 folders load as float32). Everything runs in this one process.
benchmarks/gpu_carry.sh assembles both (under 64 MiB) and prints the one command line to run.

  python benchmarks/gpu.py --data DIR --model DIR --out gpu.json            # --quick: <= 6 min on an H200
  python benchmarks/gpu.py --full --data DIR --model DIR --out gpu.json     # the full tables (~10 min on an H100)
  python benchmarks/gpu.py --cpu --data DIR --model DIR --out x.json   # the same code, tiny sizes (make test)

Parts (both modes run all of them; --parts picks some):
  exact    two-pass gradient vs one-graph autograd with dropout on, fp32, bf16 and fp16 (loss-scaled),
           read before the optimizer step; autograd against itself (the noise floor); the control
           without RNG replay, which must fail.
  nccl     the items-mode step with every collective run through a one-rank NCCL group (Comm with
           active=True): a CPU tensor anywhere in a collective fails here, as on a multi-GPU run.
  sync     pass 1 and pass 2 of one step under torch.cuda.set_sync_debug_mode("error"): any host
           synchronisation in beeray's chunk loops raises. The model's own forward and backward
           (transformers' mask check, torch's embedding backward) run under "warn" and are counted
           separately: they are the model's, the same in the reference step.
  speed    per model (MiniLM; MPNet shapes = all-mpnet-base-v2's config with random weights) and
           precision (--quick: bf16; --full: fp32 and bf16): no-grad encode texts/s, beeray step
           seconds with the pass 1 / pass 2 / rest split, step / encode, peak GPU memory, the step
           with kept graphs under an activation budget, and the paper's reference step on the same
           I_b (benchmarks/reference_step.py). Both sides tokenize the training catalog once, before
           any timing. Best of --reps repetitions, interleaved.
  quality  MiniLM trained in this process on the training catalog (warm items only) with beeray's
           Recipe (--quick: about 60 steps; --full: 20 epochs), then base and trained item
           embeddings, scored with beeray's evaluator on the validation and test cold items.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")  # tokenizing uses every core (never timed)

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import beeray.encoder as encoder_mod  # noqa: E402
from bench_step import PhaseTimer, table  # noqa: E402
from reference_step import reference_encode_no_grad, reference_train_step, tokenize_catalog  # noqa: E402

from beeray.config import TrainConfig  # noqa: E402
from beeray.data.prepared import PreparedData  # noqa: E402
from beeray.distributed import Comm  # noqa: E402
from beeray.encoder import ChunkPlan, TokenizedCatalog, encode  # noqa: E402
from beeray.evaluator import encode_items  # noqa: E402
from beeray.testing.gradcheck import NoReplay, autograd_grads, relative_error, two_pass_grads  # noqa: E402
from beeray.models import load_model  # noqa: E402
from beeray.precision import grad_scaler, native_bf16, resolve  # noqa: E402
from beeray.sampler import sample_item_set, step_rng  # noqa: E402
from beeray.step import train_step  # noqa: E402

SEED = 42
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-3, "fp16": 2e-3}  # relative L2 error of the whole gradient
NO_REPLAY_MIN = 1e-2  # the control must differ by at least this much
PARTS = ("exact", "nccl", "sync", "speed", "quality")

# Sizes: the paper's settings on a GPU; a few texts on the CPU (the same code paths). --quick fits
# one 15-minute lease with its 1-2 minute start and room to run it again: exactness and syncs at
# small sizes, one bf16 speed row per model with one timed repetition, and a ~60-step quality run
# (the Goodbooks subset's 2,669 training users are 11 steps of 256: 6 epochs = 66 steps).
# activation_gb: the kept-graph budget of the second timed step (GPU: half the device, set at run time).
GPU = {
    "quick": {"exact": dict(users=16, m=512, chunk=64), "precisions": ("bf16",),
              "speed": dict(users=1024, m=10_000, chunk=200, big_chunk=1024),
              "quality": dict(batch=256, epochs=6, lr=5e-5, m=10_000, chunk=200), "msl": 384, "reps": 1},
    "full": {"exact": dict(users=16, m=512, chunk=64), "precisions": ("fp32", "bf16"),
             "speed": dict(users=1024, m=10_000, chunk=200, big_chunk=1024),
             "quality": dict(batch=256, epochs=20, lr=5e-5, m=10_000, chunk=200), "msl": 384, "reps": 2},
}
_CPU = {"exact": dict(users=6, m=24, chunk=8), "speed": dict(users=16, m=64, chunk=16, big_chunk=64, activation_gb=0.05),
        "quality": dict(batch=64, epochs=1, lr=1e-3, m=96, chunk=48), "msl": 32, "reps": 1}
CPU = {"quick": {**_CPU, "precisions": ("bf16",)}, "full": {**_CPU, "precisions": ("fp32", "bf16")}}
MPNET = dict(vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
             intermediate_size=3072, max_position_embeddings=514, relative_attention_num_buckets=32)
MPNET_TINY = dict(MPNET, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine(device: torch.device) -> dict:
    import sentence_transformers
    import transformers

    info = {"date": dt.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__, "cpus": os.cpu_count(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["native_bf16"] = native_bf16(device)
    info["amp_auto"] = resolve("auto", device)  # what the recipes' `amp: auto` trains in here
    return info


def catalog_and_users(data: PreparedData, model, msl: int):
    """The training catalog (warm items) tokenized once, and every training user as catalog rows."""
    items = data.train_items()
    catalog = TokenizedCatalog.build(model, data.train_texts(items), msl, items=items)
    table = pq.read_table(data.train_path(), columns=["user", "items"])
    user_items = [catalog.rows(np.asarray(x, dtype=np.int64)) for x in table.column("items").to_pylist()]
    return catalog, table.column("user").to_numpy().astype(np.int64), user_items


def pick_users(user_items, n: int, seed: int = SEED):
    rng = np.random.default_rng(seed)
    return [user_items[i] for i in rng.choice(len(user_items), size=min(n, len(user_items)), replace=False)]


def mpnet_shapes(tokenizer, root: Path, tiny: bool):
    """A SentenceTransformer with all-mpnet-base-v2's architecture and random weights (speed only).

    It uses MiniLM's WordPiece tokenizer (MPNet's own is a WordPiece vocabulary of the same
    size), so its texts have almost the same token counts as with the real model.
    """
    from sentence_transformers import SentenceTransformer
    from transformers import MPNetConfig, MPNetModel

    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling, Transformer

    torch.manual_seed(SEED)
    cfg = MPNetConfig(**(MPNET_TINY if tiny else MPNET), pad_token_id=tokenizer.pad_token_id,
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    hf = root / "mpnet-shapes"
    MPNetModel(cfg).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    word = Transformer(str(hf))
    return SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), pooling_mode="mean")],
                               device="cpu")


# ---------------------------------------------------------------- exactness

def exactness(model, catalog, user_items, sizes: dict, device: torch.device) -> list[dict]:
    users = pick_users(user_items, sizes["users"], seed=7)
    args = (catalog, users, sizes["m"], (SEED, 0, 1), sizes["chunk"], 11)
    rows = []
    for precision in ("fp32", "bf16", "fp16"):
        t0 = time.perf_counter()
        ref, loss = autograd_grads(model, *args, device=device, precision=precision)
        ref_again, _ = autograd_grads(model, *args, device=device, precision=precision)
        got, res = two_pass_grads(model, *args, device=device, precision=precision)
        kept, _ = two_pass_grads(model, *args, device=device, precision=precision, activation_memory=float("inf"))
        saved = encoder_mod.RandContext
        encoder_mod.RandContext = NoReplay
        try:
            no_replay, _ = two_pass_grads(model, *args, device=device, precision=precision)
        finally:
            encoder_mod.RandContext = saved
        row = {"precision": precision, "users": len(users), "items": res.items, "chunk": sizes["chunk"],
               "rel_error": relative_error(got, ref), "autograd_vs_itself": relative_error(ref_again, ref),
               "kept_graphs_rel_error": relative_error(kept, ref),
               "no_replay_rel_error": relative_error(no_replay, ref), "tolerance": TOLERANCE[precision],
               "loss_two_pass": res.loss, "loss_autograd": loss, "seconds": time.perf_counter() - t0}
        row["ok"] = (max(row["rel_error"], row["kept_graphs_rel_error"]) < row["tolerance"]
                     and row["no_replay_rel_error"] > NO_REPLAY_MIN)
        rows.append(row)
        log(f"exact {precision}: two-pass vs autograd {row['rel_error']:.2e}, with every graph kept "
            f"{row['kept_graphs_rel_error']:.2e} (tolerance {row['tolerance']:.0e}), "
            f"autograd vs itself {row['autograd_vs_itself']:.2e}, without replay {row['no_replay_rel_error']:.3f}")
    return rows


def nccl(model, catalog, user_items, sizes: dict, device: torch.device, tmp: Path) -> dict:
    """The items-mode step with every collective through a real one-rank process group."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    users = pick_users(user_items, sizes["users"], seed=8)
    args = (catalog, users, sizes["m"], (SEED, 0, 2), sizes["chunk"], 13)
    want, _ = two_pass_grads(model, *args, device=device)
    dist.init_process_group(backend, init_method=f"file://{tmp / 'pg-store'}", rank=0, world_size=1)
    try:
        comm = Comm(device, active=True)
        got, res = two_pass_grads(model, *args, device=device, comm=comm)
        try:  # what the old code did: a CPU tensor in a collective
            dist.all_reduce(torch.zeros(1))
            cpu_tensor = "accepted"
        except Exception as exc:  # NCCL: no backend for CPU tensors
            cpu_tensor = f"refused ({type(exc).__name__})"
    finally:
        dist.destroy_process_group()
    out = {"backend": backend, "rel_error_vs_no_group": relative_error(got, want), "loss": res.loss,
           "cpu_tensor_in_collective": cpu_tensor}
    out["ok"] = out["rel_error_vs_no_group"] < TOLERANCE["fp32"]
    log(f"{backend}: items-mode step through the group, vs no group {out['rel_error_vs_no_group']:.2e}; "
        f"a CPU tensor in a collective: {cpu_tensor}")
    return out


# ---------------------------------------------------------------- host syncs

def sync_check(model, catalog, user_items, sizes: dict, device: torch.device, precision: str) -> dict:
    """Pass 1 and pass 2 of one step's chunk loops with host syncs an error in beeray's code.

    The model's forward and backward (transformers' and torch's code) run under "warn": what they
    synchronise is counted and listed, not beeray's to remove (the reference step runs the same
    model). Half the chunks keep their pass-1 graph, so both pass-2 paths run.
    """
    if device.type != "cuda":
        return {"skipped": "torch.cuda.set_sync_debug_mode exists on CUDA only", "ok": True}
    users = pick_users(user_items, sizes["users"], seed=9)
    item_set = sample_item_set(np.unique(np.concatenate(users)), len(catalog), sizes["m"], step_rng(SEED, 0, 3))
    on_device = catalog.on(device)
    plan = ChunkPlan.build(catalog, item_set, sizes["chunk"], device)
    grad = torch.randn((item_set.size, encoder_mod.embedding_dim(model)), device=device)
    model.train()
    model_syncs: list[str] = []
    real_encode, real_backward = encoder_mod.encode, torch.Tensor.backward

    @contextmanager
    def model_code():
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            torch.cuda.set_sync_debug_mode("error")
        model_syncs.extend(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                           if "synchroniz" in str(w.message))

    def encode_as_model_code(*a, **k):
        with model_code():
            return real_encode(*a, **k)

    def backward_as_model_code(self, *a, **k):
        with model_code():
            return real_backward(self, *a, **k)

    out = {"precision": precision, "items": int(item_set.size), "chunks": len(plan), "kept_chunks": len(plan) // 2}
    encoder_mod.encode, torch.Tensor.backward = encode_as_model_code, backward_as_model_code
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, replay = encoder_mod.encode_pass1(model, on_device, plan, precision, keep=len(plan) // 2)
        encoder_mod.backward_pass2(model, on_device, plan, replay, grad, precision)
        out["beeray_error"] = None
    except RuntimeError as exc:
        out["beeray_error"] = str(exc).strip().splitlines()[0][:300]
    finally:
        torch.cuda.set_sync_debug_mode("default")
        encoder_mod.encode, torch.Tensor.backward = real_encode, real_backward
        model.zero_grad(set_to_none=True)
    out["model_syncs"] = len(model_syncs)
    out["model_sync_sites"] = sorted(set(model_syncs))[:10]
    out["ok"] = out["beeray_error"] is None
    log(f"sync: beeray's chunk loops over {out['chunks']} chunks "
        f"{'ran without a host sync' if out['ok'] else 'SYNCED: ' + out['beeray_error']}; "
        f"the model's own code synced {out['model_syncs']} times at {', '.join(out['model_sync_sites']) or '-'}")
    return out


# ---------------------------------------------------------------- speed

def encode_seconds(model, catalog, item_set, chunk, device, precision) -> float:
    """Seconds to encode I_b once: eval mode (inference), no grad, length-grouped chunks built on the device."""
    on_device = catalog.on(device)
    plan = ChunkPlan.build(catalog, item_set, chunk, device)
    model.eval()
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for rows, width in zip(plan.rows, plan.widths):
            encode(model, on_device.features(rows, width), precision)
    sync(device)
    return time.perf_counter() - t0


def speed(name: str, model, catalog, texts: list[str], user_items, sizes: dict, device, precision: str,
          reps: int) -> dict:
    """One model at one precision; `texts`: the catalog's texts, for the reference's own tokenization."""
    batch = pick_users(user_items, sizes["users"])
    key = (SEED, 0, 0)
    item_set = sample_item_set(np.unique(np.concatenate(batch)), len(catalog), sizes["m"], step_rng(*key))
    row = {"model": name, "precision": precision, "users": len(batch), "items": int(item_set.size),
           "chunk": sizes["chunk"], "mean_tokens": float(catalog.lengths[item_set].mean())}
    model = model.to(device)
    ref_model = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ref_optimizer = torch.optim.NAdam(ref_model.parameters(), lr=1e-5)  # the reference's Keras Nadam
    ref_catalog = tokenize_catalog(ref_model, texts, model.max_seq_length, device)
    row["reference_width"] = ref_catalog.width
    small = item_set[: sizes["chunk"]]
    # Warm-up: kernels, allocator and autotuning out of the timings (one chunk each).
    scaler = grad_scaler(device, precision)
    train_step(model, optimizer, catalog, [batch[0]], m=sizes["chunk"], rng_key=(SEED, 9, 9),
               chunk_size=sizes["chunk"], device=device, precision=precision, scaler=scaler)
    encode_seconds(model, catalog, small, sizes["chunk"], device, precision)
    reference_train_step(ref_model, ref_optimizer, ref_catalog, [batch[0]], np.union1d(batch[0], small),
                         sbert_batch_size=sizes["chunk"], device=device, precision=precision)
    timings: dict[str, list[float]] = {k: [] for k in ("encode", "encode_big", "step", "pass1", "pass2", "optimizer",
                                                       "reference", "reference_encode", "step_kept")}
    kept_bytes = sizes.get("activation_gb", 0.0) * 2**30
    row["activation_gb"] = sizes.get("activation_gb", 0.0)
    phases = PhaseTimer(device)
    for rep in range(reps):
        order = ["bee", "ref"] if rep % 2 == 0 else ["ref", "bee"]
        for side in order:
            if side == "bee":
                timings["encode"].append(encode_seconds(model, catalog, item_set, sizes["chunk"], device, precision))
                timings["encode_big"].append(encode_seconds(model, catalog, item_set, sizes["big_chunk"], device,
                                                            precision))
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    base_mem = torch.cuda.memory_allocated()
                sync(device)
                t0 = time.perf_counter()
                with phases.active(optimizer):
                    train_step(model, optimizer, catalog, batch, m=sizes["m"], rng_key=key, chunk_size=sizes["chunk"],
                               device=device, precision=precision, scaler=scaler)
                sync(device)
                timings["step"].append(time.perf_counter() - t0)
                for k in ("pass1", "pass2", "optimizer"):
                    timings[k].append(phases.times.get(k, 0.0))
                if device.type == "cuda":
                    row["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
                    row["step_extra_gb"] = (torch.cuda.max_memory_allocated() - base_mem) / 2**30
                if kept_bytes:
                    # The same step with the pass-1 graphs of the shortest chunks kept within the budget.
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    sync(device)
                    t0 = time.perf_counter()
                    train_step(model, optimizer, catalog, batch, m=sizes["m"], rng_key=key, chunk_size=sizes["chunk"],
                               device=device, precision=precision, scaler=scaler, activation_memory=kept_bytes)
                    sync(device)
                    timings["step_kept"].append(time.perf_counter() - t0)
                    if device.type == "cuda":
                        row["peak_kept_gb"] = torch.cuda.max_memory_allocated() / 2**30
            else:
                try:
                    ref_rows = np.asarray(item_set)
                    ref_model.eval()
                    sync(device)
                    t0 = time.perf_counter()
                    reference_encode_no_grad(ref_model, ref_catalog, ref_rows, sizes["chunk"], precision)
                    sync(device)
                    timings["reference_encode"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    reference_train_step(ref_model, ref_optimizer, ref_catalog, batch, item_set,
                                         sbert_batch_size=sizes["chunk"], device=device, precision=precision)
                    sync(device)
                    timings["reference"].append(time.perf_counter() - t0)
                except torch.cuda.OutOfMemoryError:
                    row["reference_error"] = "out of memory"
                    ref_optimizer.zero_grad(set_to_none=True)
                    torch.cuda.empty_cache()
        log(f"  {name} {precision} rep {rep}: step {timings['step'][-1]:.2f}s, encode {timings['encode'][-1]:.2f}s"
            + (f", reference {timings['reference'][-1]:.2f}s" if timings["reference"] else ""))
    best = {k: min(v) for k, v in timings.items() if v}
    row.update({f"{k}_s": v for k, v in best.items()})
    row["encode_texts_per_s"] = item_set.size / best["encode"]
    row["encode_big_texts_per_s"] = item_set.size / best["encode_big"]
    row["step_over_encode"] = best["step"] / best["encode"]
    if "step_kept" in best:
        row["kept_step_over_encode"] = best["step_kept"] / best["encode"]
    row["pass1_encodes"] = best["pass1"] / best["encode"]
    row["pass2_encodes"] = best["pass2"] / best["encode"]
    row["other_s"] = best["step"] - best["pass1"] - best["pass2"] - best["optimizer"]
    if "reference" in best:
        row["speedup"] = best["reference"] / best["step"]
    del ref_model, ref_optimizer, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def speed_part(args, sizes, data, minilm, device, tmp: Path) -> list[dict]:
    rows = []
    texts = data.train_texts(data.train_items())
    mpnet = mpnet_shapes(minilm.tokenizer, tmp, tiny=args.cpu)
    for name, base in (("all-MiniLM-L6-v2", minilm), ("mpnet-shapes", mpnet)):
        base.max_seq_length = sizes["msl"]
        catalog, _, user_items = catalog_and_users(data, base, sizes["msl"])
        for precision in sizes["precisions"]:
            model = copy.deepcopy(base)
            try:
                rows.append(speed(name, model, catalog, texts, user_items, sizes["speed"], device, precision,
                                  sizes["reps"]))
            except torch.cuda.OutOfMemoryError:
                rows.append({"model": name, "precision": precision, "error": "out of memory",
                             "chunk": sizes["speed"]["chunk"]})
                log(f"  {name} {precision}: out of memory")
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- quality

def quality(args, sizes, data, device, out: Path) -> dict:
    from beeray.train_loop import Recipe

    q = sizes["quality"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data=str(data.root), out=tmp, model=args.model, lr=q["lr"], epochs=q["epochs"],
                          batch_size=q["batch"], m=q["m"], max_seq_length=sizes["msl"], encode_batch_size=q["chunk"],
                          seed=SEED, amp="auto", eval_every_epoch=False, evaluate_test=False).validate()
        t0 = time.perf_counter()
        recipe = Recipe.setup(cfg, 0, 1, device)
        setup_s = time.perf_counter() - t0
    table = pq.read_table(data.train_path(), columns=["user", "items"])
    users = table.column("user").to_numpy().astype(np.int64)
    user_items = [np.asarray(x, dtype=np.int64) for x in table.column("items").to_pylist()]
    history = []
    t0 = time.perf_counter()
    recipe.start_schedule(users, user_items)  # what Recipe.run does first
    for epoch in range(cfg.epochs):
        row = recipe.train_epoch(epoch, users, user_items, lambda metrics, checkpoint: None)
        recipe.end_epoch(row, lambda metrics, checkpoint: None)
        history.append(row)
        log(f"quality epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.5f}, {row['seconds']:.1f}s")
    train_s = time.perf_counter() - t0
    result = {"config": {k: getattr(cfg, k) for k in ("lr", "epochs", "batch_size", "m", "max_seq_length",
                                                       "encode_batch_size", "amp", "seed")},
              "precision": recipe.precision, "catalog_items": len(recipe.catalog), "steps": recipe.state.global_step,
              "setup_s": setup_s, "train_s": train_s, "history": history}
    base = load_model(args.model, device=str(device))
    result["loaded_dtype"] = str(next(base.parameters()).dtype)
    embeddings = {}
    for who, model in (("base", base), ("trained", recipe.model)):
        model.max_seq_length = sizes["msl"]
        model.eval()
        embeddings[who] = encode_items(model, data.texts, batch_size=256, show_progress=False)
    from beeray.evaluator import CBFScorer, score_split

    result["metrics"] = {who: {split: score_split(CBFScorer(emb), data.eval_split(split)) for split in ("val", "test")}
                         for who, emb in embeddings.items()}
    return result


# ---------------------------------------------------------------- report

def summary(doc: dict) -> str:
    out = [f"machine: {doc['machine'].get('gpu', doc['machine']['device'])}, torch {doc['machine']['torch']}"]
    for row in doc.get("exact", []):
        out.append(f"exact {row['precision']}: rel error {row['rel_error']:.2e}, graphs kept "
                   f"{row['kept_graphs_rel_error']:.2e} (tolerance {row['tolerance']:.0e}; "
                   f"autograd vs itself {row['autograd_vs_itself']:.2e}); without RNG replay "
                   f"{row['no_replay_rel_error']:.3f}  {'OK' if row['ok'] else 'FAILED'}")
    if "nccl" in doc:
        n = doc["nccl"]
        out.append(f"{n['backend']} one-rank group: rel error {n['rel_error_vs_no_group']:.2e}, CPU tensor "
                   f"{n['cpu_tensor_in_collective']}  {'OK' if n['ok'] else 'FAILED'}")
    if "sync" in doc:
        y = doc["sync"]
        if "skipped" in y:
            out.append(f"sync: skipped ({y['skipped']})")
        else:
            out.append(f"sync: beeray's chunk loops ({y['chunks']} chunks, {y['kept_chunks']} kept, {y['precision']}): "
                       f"{'no host sync' if y['ok'] else y['beeray_error']}; the model's own code: "
                       f"{y['model_syncs']} syncs ({', '.join(y['model_sync_sites']) or '-'})  "
                       f"{'OK' if y['ok'] else 'FAILED'}")
    if doc.get("speed"):
        cols = ["model", "precision", "items", "encode_texts_per_s", "encode_big_texts_per_s", "step_s",
                "step_over_encode", "pass1_encodes", "pass2_encodes", "other_s", "reference_s", "speedup", "peak_gb",
                "kept_step_over_encode", "peak_kept_gb"]
        out.append(table(cols, [[r.get(c, r.get("error", "")) if c not in ("model", "precision") else r[c]
                                 for c in cols] for r in doc["speed"]]))
    if "quality" in doc:
        q = doc["quality"]
        out.append(f"quality: {q['steps']} steps on {q['catalog_items']} warm items in {q['train_s']:.0f}s "
                   f"({q['precision']}), loaded as {q['loaded_dtype']}")
        for who, per in q.get("metrics", {}).items():
            for split, res in per.items():
                out.append(f"  {who:8s} {split:5s} recall@20 {res['recall@20']:.4f} ± {res['stderr']['recall@20']:.4f}"
                           f"  recall@50 {res['recall@50']:.4f}  ndcg@100 {res['ndcg@100']:.4f}  users {res['users']}")
    return "\n".join(out)


def write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def run(args) -> dict:
    device = torch.device("cpu" if args.cpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu.py: no CUDA device here (use --cpu for the CPU mode)")
    mode = "full" if args.full else "quick"
    sizes = (CPU if args.cpu else GPU)[mode]
    if args.reps:
        sizes = {**sizes, "reps": args.reps}
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        budget = args.activation_memory if args.activation_memory is not None else total / 2
        sizes = {**sizes, "speed": {**sizes["speed"], "activation_gb": budget}}
    if args.cpu:
        torch.set_num_threads(2)
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"gpu.py: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    t_start = time.perf_counter()
    doc: dict = {"machine": machine(device), "mode": mode, "parts": parts, "sizes": sizes, "data": str(args.data),
                 "model": str(args.model)}
    out = Path(args.out)
    data = PreparedData.load(args.data)
    minilm = load_model(args.model, device=str(device))
    minilm.max_seq_length = sizes["msl"]
    catalog, _, user_items = catalog_and_users(data, minilm, sizes["msl"])
    doc["catalog"] = {"items": len(catalog), "mean_tokens": float(catalog.lengths.mean()),
                      "max_tokens": int(catalog.lengths.max())}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "exact" in parts:
            doc["exact"] = exactness(minilm, catalog, user_items, sizes["exact"], device)
            write(out, doc)
        if "nccl" in parts:
            doc["nccl"] = nccl(minilm, catalog, user_items, sizes["exact"], device, tmp)
            write(out, doc)
        if "sync" in parts:
            doc["sync"] = sync_check(minilm, catalog, user_items, sizes["exact"], device, sizes["precisions"][-1])
            write(out, doc)
        if "speed" in parts:
            doc["speed"] = speed_part(args, sizes, data, minilm, device, tmp)
            write(out, doc)
        if "quality" in parts:
            del minilm
            doc["quality"] = quality(args, sizes, data, device, out)
            write(out, doc)
    doc["seconds"] = time.perf_counter() - t_start
    write(out, doc)
    return doc


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared folder (beeray prepare goodbooks ...)")
    p.add_argument("--model", required=True, help="SentenceTransformer folder (MiniLM; fp16 is fine)")
    p.add_argument("--out", required=True, help="JSON file for the results (written after each part)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the default: fits one 15-minute GPU lease")
    mode.add_argument("--full", action="store_true", help="fp32 and bf16 speed rows, 2 reps, 20-epoch quality run")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--reps", type=int, default=0, help="timed repetitions (default: 1 with --quick, 2 with --full)")
    p.add_argument("--activation-memory", type=float, default=None,
                   help="GiB of kept pass-1 graphs for the second timed step (default: half the GPU)")
    p.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU: the code path check for make test")
    doc = run(p.parse_args(argv))
    print(summary(doc))
    if "seconds" in doc:
        print(f"gpu.py {doc['mode']}: {doc['seconds']:.0f} s from the data load to the end")
    checks = doc.get("exact", []) + [doc[k] for k in ("nccl", "sync") if k in doc]
    return 0 if all(r["ok"] for r in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
