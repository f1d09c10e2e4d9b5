"""`beeray embed`: a trained model's item embeddings for any catalog, through Ray Data.

The catalog (beeray/data/items.py: checked row by row) is cut into shards of `shard_size` items in
file order. Ray Data hands the shards to a pool of encoder actors (`map_batches` with a class:
each actor loads the model once; one actor per GPU, or per `cpus_per_worker` CPUs); each actor
encodes its shard and writes it as one Parquet file, atomically. On a GPU an actor encodes under
autocast (`precision`, auto = bf16 where the GPU has it natively), in large batches (512 texts by
default), and tokenizes with its `cpus_per_worker` CPUs (the fast tokenizer's thread pool), so that
the GPU is not left waiting for one CPU. Layout of OUT:

  embed.json                 what was embedded (model, catalog, shard size, dtype, each shard's
                             digest), rows, dimension, items/s
  _COMPLETE.json             written last, once every shard exists: the folder is finished (the
                             same marker as every finished beeray output, beeray.files.MARKER)
  shards/part-00000.parquet  item_id (string), embedding (fixed-size list of float32 or float16,
                             unit L2 norm in float32 whatever the compute precision: the vectors
                             the evaluator's CBF scoring uses)
  index.faiss                with --faiss: an inner-product index over all shards, rows in shard
                             order (cosine similarity, since the rows have unit norm)

Resumable: a shard file is written only when complete, and a re-run with the same model, catalog,
shard size, dtype and precision keeps every shard whose digest (its ids and texts) is unchanged, so a killed
run continues where it stopped and a catalog that grew re-encodes only the shards that changed. The
model is identified by its content (beeray.models.model_fingerprint, recorded in embed.json), not by
its path: a folder retrained in place is another model, and every shard is encoded again with it, so
OUT never holds two models' vectors. One run writes OUT at a time (beeray.files.run_lock).
On a cluster OUT must be storage that every node can write: object storage (s3://bucket/prefix, the
actors upload their shards there; _COMPLETE.json is written last, so a reader never takes a
half-written OUT), or a shared file system.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beeray import files
from beeray.data.items import ItemTexts
from beeray.errors import BeerayError

logger = logging.getLogger(__name__)

MANIFEST = "embed.json"
SHARDS = "shards"
INDEX = "index.faiss"
DTYPES = {"float32": np.float32, "float16": np.float16}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # beeray/precision.py; fp32 = no autocast
BATCH_SIZE = {"cpu": 64, "gpu": 512}  # default texts per encoder batch: a GPU needs large ones to be busy


def shard_name(k: int) -> str:
    return f"{SHARDS}/part-{k:05d}.parquet"


def shard_path(out: Path, k: int) -> Path:
    """Shard k of a local OUT."""
    return Path(out) / shard_name(k)


def shard_digest(ids, texts) -> str:
    h = hashlib.sha256()
    for i, t in zip(ids, texts):
        h.update(str(i).encode())
        h.update(b"\0")
        h.update(t.encode())
        h.update(b"\1")
    return h.hexdigest()[:16]


class ShardEncoder:
    """A Ray Data actor: loads the model once, then encodes and writes one shard per call."""

    def __init__(self, model: str, out: str, dtype: str, batch_size: int, trust_remote_code: bool,
                 precision: str = "auto", cpus: int = 1):
        import os

        import torch

        from beeray.models import load_model
        from beeray.precision import resolve

        # The fast tokenizer's thread pool is sized from the environment when it first runs: give it
        # the actor's CPUs (Ray sets none of this; the Makefile turns parallelism off for tests).
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if cpus > 1 else "false"
        os.environ["RAYON_NUM_THREADS"] = str(cpus)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(cpus)
        self.model = load_model(model, device=device, trust_remote_code=trust_remote_code)
        self.model.eval()
        self.precision = resolve(precision, device)
        self.out, self.dtype, self.batch_size = files.Folder(out), DTYPES[dtype], batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-norm float32 rows of `texts`, the model's forward under this actor's autocast."""
        from beeray.evaluator import encode_items
        from beeray.precision import autocast

        with autocast(self.model.device, self.precision):
            emb = encode_items(self.model, texts, batch_size=self.batch_size, show_progress=False)
        # Normalised again in float32: under autocast the model normalises in bf16/fp16 (norms off by ~1e-3).
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def __call__(self, batch: pa.Table) -> dict:
        shards, rows, seconds = [], [], []
        for k, ids, texts in zip(batch.column("shard").to_pylist(), batch.column("ids").to_pylist(),
                                 batch.column("texts").to_pylist()):
            t0 = time.perf_counter()
            emb = self.encode(texts).astype(self.dtype)
            flat = pa.array(emb.reshape(-1), type=pa.from_numpy_dtype(self.dtype))
            table = pa.table({"item_id": pa.array(ids, pa.string()),
                              "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])})
            self.out.write_with(shard_name(k), lambda tmp: pq.write_table(table, tmp))
            shards.append(k)
            rows.append(len(ids))
            seconds.append(time.perf_counter() - t0)
        return {"shard": np.asarray(shards), "rows": np.asarray(rows), "seconds": np.asarray(seconds)}


def plan(items: ItemTexts, shard_size: int) -> list[tuple[int, int, str]]:
    """(start, stop, digest) of each shard."""
    bounds = [(s, min(s + shard_size, len(items))) for s in range(0, len(items), shard_size)]
    return [(a, b, shard_digest(items.ids[a:b], items.texts[a:b])) for a, b in bounds]


def embed(model: str, items: ItemTexts, out: str | Path, *, shard_size: int = 100_000, workers: int = 2,
          dtype: str = "float32", batch_size: int | None = None, use_gpu: bool = False,
          cpus_per_worker: int | None = None, precision: str = "auto", build_index: bool = False,
          address: str | None = None, trust_remote_code: bool = False, log=None) -> dict:
    """Embed `items` with `model` into OUT (see the module doc); returns the manifest.

    `batch_size` defaults to 64 texts on CPUs and 512 with `use_gpu`; `cpus_per_worker` (CPUs per
    encoder actor, which also tokenize) to 1 on CPUs and 4 with `use_gpu`."""
    log = log or logger.info
    batch_size = batch_size or BATCH_SIZE["gpu" if use_gpu else "cpu"]
    cpus_per_worker = cpus_per_worker or (4 if use_gpu else 1)
    if shard_size <= 0 or workers <= 0 or batch_size <= 0 or cpus_per_worker <= 0:
        raise BeerayError("shard size, workers, batch size and CPUs per worker must be > 0")
    if dtype not in DTYPES:
        raise BeerayError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if precision not in PRECISIONS:
        raise BeerayError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    files.Folder(out).preflight()
    with files.run_lock(out, "embedding run"):  # one writer per OUT: two would mix their shards
        return _embed(model, items, files.Folder(out), shard_size=shard_size, workers=workers, dtype=dtype,
                      batch_size=batch_size, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker,
                      precision=precision, build_index=build_index, address=address,
                      trust_remote_code=trust_remote_code, log=log)


def reusable_shards(out: files.Folder, manifest: dict, shards: list[tuple[int, int, str]], log) -> set[int]:
    """The shards an earlier run of this command left in OUT that this one keeps: same shard size, dtype,
    precision and model (by content), same texts (by digest). Every other shard file is deleted, so OUT
    never holds two models' vectors; another shard size, dtype or precision is refused."""
    exists = out.exists(MANIFEST)
    before = json.loads(out.read_text(MANIFEST)) if exists else {**manifest, "shards": []}
    if exists:
        # A folder from before precision was recorded was encoded in float32.
        before.setdefault("precision", "fp32")
        changed = [k for k in ("shard_size", "dtype", "precision") if before.get(k) != manifest[k]]
        if changed:
            raise BeerayError(f"{out} holds embeddings made with another {', '.join(changed)} "
                              f"({', '.join(f'{k}={before.get(k)!r}' for k in changed)}): choose another --out")
        if before.get("model_fingerprint") != manifest["model_fingerprint"]:
            # Another model's vectors (or ones of unknown origin) must not stay beside this one's.
            log(f"{out} holds embeddings of another model ({before.get('model')}, "
                f"{before.get('model_fingerprint') or 'no fingerprint recorded'}; now {manifest['model_fingerprint']}): "
                "re-encoding every shard")
            before["shards"] = []
    done = {k for k, (_, _, d) in enumerate(shards)
            if k < len(before["shards"]) and before["shards"][k] == d and out.exists(shard_name(k))}
    for name in out.names(SHARDS):
        if name.startswith(".part-") and name.endswith(".tmp"):
            out.delete(f"{SHARDS}/{name}")  # a shard a killed run was writing (local disk)
        elif name.startswith("part-") and name.endswith(".parquet") and \
                int(name.removeprefix("part-").removesuffix(".parquet")) not in done:
            out.delete(f"{SHARDS}/{name}")  # a shard of other texts, of another model, or beyond the catalog's end
    return done


def _embed(model: str, items: ItemTexts, out: files.Folder, *, shard_size: int, workers: int, dtype: str,
           batch_size: int, use_gpu: bool, cpus_per_worker: int, precision: str, build_index: bool,
           address: str | None, trust_remote_code: bool, log) -> dict:
    import ray

    from beeray.models import model_fingerprint, resolve_model
    from beeray.cluster import init_ray

    shards = plan(items, shard_size)
    manifest = {"model": resolve_model(model), "model_fingerprint": model_fingerprint(model), "items": items.source,
                "rows": len(items), "shard_size": shard_size, "dtype": dtype, "precision": precision,
                "shards": [d for _, _, d in shards], "skipped_rows": len(items.skipped)}
    done = reusable_shards(out, manifest, shards, log)
    out.delete(files.MARKER)  # being written again: no longer complete until this run's marker
    write_manifest(out, manifest)
    pending = [k for k in range(len(shards)) if k not in done]
    log(f"embedding {len(items):,} items in {len(shards)} shards of {shard_size:,}: {len(done)} already done, "
        f"{len(pending)} to encode with {workers} encoder actor(s)")
    t0 = time.perf_counter()
    encoded = 0
    if pending:
        init_ray(address)
        # One block per shard, built here: no read or repartition task that would wait for a CPU the
        # encoder actors hold (2 actors x 1 CPU take a whole 2-core machine).
        blocks = [pa.table({"shard": pa.array([k], pa.int64()),
                            "ids": pa.array([list(items.ids[shards[k][0]:shards[k][1]])], pa.list_(pa.string())),
                            "texts": pa.array([items.texts[shards[k][0]:shards[k][1]]], pa.list_(pa.string()))})
                  for k in pending]
        resources = {"num_cpus": cpus_per_worker, **({"num_gpus": 1} if use_gpu else {})}
        results = ray.data.from_arrow(blocks).map_batches(
            ShardEncoder, batch_size=1, batch_format="pyarrow", concurrency=workers,
            fn_constructor_kwargs={"model": model, "out": str(out), "dtype": dtype, "batch_size": batch_size,
                                   "trust_remote_code": trust_remote_code, "precision": precision,
                                   "cpus": cpus_per_worker}, **resources)
        for row in results.iter_rows():
            encoded += int(row["rows"])
            rate = encoded / (time.perf_counter() - t0)
            log(f"shard {int(row['shard'])} written ({int(row['rows']):,} items, {row['seconds']:.1f} s); "
                f"{encoded:,}/{len(items):,} items this run, {rate:,.0f} items/s")
    seconds = time.perf_counter() - t0
    missing = [k for k in range(len(shards)) if not out.exists(shard_name(k))]
    if missing:
        raise BeerayError(f"{out}: shards {missing[:5]} were not written; re-run to finish them")
    with out.open(shard_name(0)) as fh:
        dim = pq.read_schema(fh).field("embedding").type.list_size
    manifest.update(dim=int(dim), encoded_this_run=encoded, seconds_this_run=round(seconds, 3),
                    items_per_s=round(encoded / seconds, 1) if encoded else None)
    if build_index:
        write_index(out, len(shards))
        manifest["index"] = INDEX
    write_manifest(out, manifest)
    out.mark_complete({"manifest": MANIFEST, "rows": manifest["rows"]})  # written last
    return manifest


def write_manifest(out: files.Folder, manifest: dict) -> None:
    out.write_text(MANIFEST, json.dumps(manifest, indent=2, default=float) + "\n")


def load_embeddings(out: str | Path, model: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, float32 embeddings) of a complete `beeray embed` folder (or URL), rows in shard order.
    `model`: refuse a folder whose vectors another model made (by content: beeray.models.model_fingerprint)."""
    out = files.Folder(out, "--embeddings")
    if not out.exists(MANIFEST):
        raise BeerayError(f"{out}: no {MANIFEST} (not a `beeray embed` output folder)")
    try:
        manifest = json.loads(out.read_text(MANIFEST))
    except ValueError as exc:
        raise BeerayError(f"{out}/{MANIFEST}: not valid JSON ({exc}); re-run `beeray embed`") from None
    if not out.is_complete():
        raise BeerayError(f"{out}: the embedding run did not finish; re-run `beeray embed` to complete it")
    if model is not None:
        from beeray.models import model_fingerprint

        want, have = model_fingerprint(model), manifest.get("model_fingerprint")
        if want != have:
            raise BeerayError(f"{out} holds embeddings of another model ({manifest.get('model')}, "
                              f"{have or 'no fingerprint recorded'}), not of {model} ({want}): re-run "
                              f"`beeray embed --model {model}`, or leave --model out")
    return _read_shards(out, len(manifest["shards"]))


def _read_shards(out: files.Folder | Path, n_shards: int) -> tuple[np.ndarray, np.ndarray]:
    out = out if isinstance(out, files.Folder) else files.Folder(out)
    ids, rows = [], []
    for k in range(n_shards):
        with out.open(shard_name(k)) as fh:
            try:
                table = pq.read_table(fh)
            except (pa.ArrowException, OSError) as exc:  # torn by something other than beeray
                raise BeerayError(f"{out}/{shard_name(k)}: not a readable Parquet file ({exc}); "
                                  "re-run `beeray embed` to rewrite it") from None
        ids.append(np.asarray(table.column("item_id").to_pylist(), dtype=object))
        col = table.column("embedding").combine_chunks()
        rows.append(col.values.to_numpy().reshape(len(col), col.type.list_size).astype(np.float32))
    return np.concatenate(ids), np.concatenate(rows)


def write_index(out: files.Folder, n_shards: int) -> None:
    """An exact inner-product FAISS index over the embeddings (cosine: the rows have unit norm)."""
    try:
        import faiss
    except ImportError:
        raise BeerayError("--faiss needs the faiss-cpu package: pip install 'beeray[faiss]'") from None
    _, emb = _read_shards(out, n_shards)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    out.write_with(INDEX, lambda tmp: faiss.write_index(index, str(tmp)))
