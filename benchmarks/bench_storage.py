"""What `--out s3://...` costs: a training checkpoint written to object storage vs a local folder, and the
final upload and download of a model, on an S3 API on 127.0.0.1 (moto's server: benchmarks/local_s3.py).

A checkpoint is what beeray.checkpoint.save_checkpoint writes (the SentenceTransformer folder, the
optimizer's state, state.json) for all-MiniLM-L6-v2 with AdamW; beeray persists it itself
(beeray.checkpoint.persist, Ray Train's checkpoint_upload_fn: a local copy renamed into place, or an
upload with state.json last and retries), which is what is timed here, into a local storage folder (a
local `--out`) and to S3; beside it, what Ray Train 2.60's own copy (pyarrow.fs.copy_files,
single-threaded for S3 uploads, 64 MiB chunks) costs for the same folder. Each figure is the median of
--repeats, measured side by side in one run.

    .venv/bin/python benchmarks/bench_storage.py     # needs the test extra (moto[server]); writes results/storage.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import pyarrow.fs as pafs
    import torch

    from benchmarks.local_s3 import local_s3
    from beeray import files
    from beeray.checkpoint import TrainState, persist, save_checkpoint
    from beeray.models import load_model

    model = load_model(args.model, device="cpu")
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model(model.tokenize(["a warm-up text"]))["sentence_embedding"].sum().backward()
    optimizer.step()  # AdamW's two moments exist: the optimizer state a real checkpoint holds

    work = Path(tempfile.mkdtemp(prefix="beeray-bench-storage-"))
    with local_s3({"BEERAY_CACHE": str(work / "cache"), "BEERAY_STAGING": str(work / "staging")}) as bucket:
        url = f"{bucket('bench')}/run"
        s3, root = files.remote_fs(url)
        ckpt = work / "ckpt"

        def save():
            shutil.rmtree(ckpt, ignore_errors=True)
            ckpt.mkdir()
            save_checkpoint(ckpt, model, optimizer, TrainState())

        t_save = timed(save, args.repeats)
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        n = iter(range(10**6))
        (work / "local").mkdir()
        t_local = timed(lambda: persist(ckpt, str(work / "local" / f"checkpoint_{next(n)}")), args.repeats)
        t_s3 = timed(lambda: persist(ckpt, f"{root}/ray/train/checkpoint_{next(n)}", s3), args.repeats)
        t_ray_local = timed(lambda: pafs.copy_files(str(ckpt), str(work / "local" / f"checkpoint_{next(n)}")),
                            args.repeats)
        t_ray_s3 = timed(lambda: pafs.copy_files(str(ckpt), f"{root}/ray/train/checkpoint_{next(n)}",
                                                 destination_filesystem=s3, use_threads=False,
                                                 chunk_size=64 * 1024 * 1024), args.repeats)
        model_dir = ckpt / "model"
        model_bytes = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
        t_publish = timed(lambda: files.publish(model_dir, f"{url}/model"), args.repeats)

        def fetch():
            shutil.rmtree(work / "cache", ignore_errors=True)
            files.fetch_dir(f"{url}/model")

        t_fetch = timed(fetch, args.repeats)
    shutil.rmtree(work, ignore_errors=True)

    mb = size / 2**20
    print(f"{args.model}, AdamW: checkpoint {mb:.0f} MiB (model {model_bytes / 2**20:.0f} MiB), "
          f"median of {args.repeats}, S3 = moto on 127.0.0.1\n")
    print("| what | seconds | MiB/s | vs local |")
    print("|---|---:|---:|---:|")
    print(f"| save the checkpoint to a local temporary folder (every run does this) | {t_save:.2f} | "
          f"{mb / t_save:.0f} | |")
    print(f"| persist it to a local storage folder (local --out; beeray: copy + rename) | {t_local:.2f} | "
          f"{mb / t_local:.0f} | 1.00 |")
    print(f"| persist it to S3 (--out s3://...; beeray: upload, state.json last) | {t_s3:.2f} | {mb / t_s3:.0f} | "
          f"{t_s3 / t_local:.2f} |")
    print(f"| (Ray's own copy_files, local, for comparison) | {t_ray_local:.2f} | {mb / t_ray_local:.0f} | "
          f"{t_ray_local / t_local:.2f} |")
    print(f"| (Ray's own copy_files, S3, for comparison) | {t_ray_s3:.2f} | {mb / t_ray_s3:.0f} | "
          f"{t_ray_s3 / t_local:.2f} |")
    print(f"| publish the final model folder (SHA-256 + upload + marker) | {t_publish:.2f} | "
          f"{model_bytes / 2**20 / t_publish:.0f} | |")
    print(f"| fetch it on a node (download + check against the marker) | {t_fetch:.2f} | "
          f"{model_bytes / 2**20 / t_fetch:.0f} | |")
    for every in (10, 50):
        print(f"\nper optimizer step at checkpoint_every={every}: +{(t_s3 - t_local) / every:.3f} s over a local --out")
    out = Path(__file__).resolve().parent / "results" / "storage.json"
    files.write_json(out, {"model": args.model, "repeats": args.repeats, "checkpoint_mib": mb,
                           "model_mib": model_bytes / 2**20, "save_s": t_save, "persist_local_s": t_local,
                           "persist_s3_s": t_s3, "ray_copy_local_s": t_ray_local,
                           "ray_copy_s3_s": t_ray_s3, "publish_s": t_publish, "fetch_s": t_fetch})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
