"""`beeray train`: train a sentence Transformer with beeFormer on a prepared data set, on Ray."""

from __future__ import annotations

import argparse

from beeray.config import TrainConfig, parse_overrides, train_config
from beeray.errors import BeerayError
from beeray.commands import path_arg

# flag -> TrainConfig field; the flags users reach for most. Anything else: --set key=value.
_FLAGS = {
    "--data": ("data", path_arg("--data", urls=True), "prepared-data folder (from `beeray prepare`), or its s3:// URL"),
    "--model": ("model", str, "base model: hub name or local SentenceTransformer folder"),
    "--out": ("out", path_arg("--out", urls=True),
              "output folder, or object storage (s3://bucket/prefix): model/, metrics.json, history.csv/png, "
              "ray/ checkpoints"),
    "--lr": ("lr", float, "learning rate (paper: 1e-5)"),
    "--epochs": ("epochs", int, "passes over the training users"),
    "--optimizer": ("optimizer", str, "adamw (default) | nadam (the reference's Keras Nadam)"),
    "--schedule": ("schedule", str, "learning rate per step: constant (paper, default) | linear | cosine (decay to 0)"),
    "--warmup-steps": ("warmup_steps", int, "steps of linear warm-up from 0 to --lr (default 0)"),
    "--prompt": ("prompt", str, "text before every item text, saved as the model's prompt (e5: 'passage: ')"),
    "--keep": ("keep", str, "best (default: the epoch with the best validation NDCG@100) | last"),
    "--patience": ("patience", int, "stop after this many epochs without a better validation NDCG@100 (0: never)"),
    "--batch-size": ("batch_size", int, "users per global step"),
    "--m": ("m", int, "items per step: the batch's positives plus uniform negatives"),
    "--max-seq-length": ("max_seq_length", int, "tokens per item text"),
    "--encode-batch-size": ("encode_batch_size", int, "texts per encoder chunk"),
    "--activation-memory": ("activation_memory", float, "GiB per worker of pass-1 graphs kept (0: recompute all)"),
    "--seed": ("seed", int, "seed of shuffles, negatives and dropout"),
    "--parallel": ("parallel", str, "items (exact, default) | data"),
    "--num-workers": ("num_workers", int, "Ray Train workers"),
    "--cpus-per-worker": ("cpus_per_worker", int, "CPUs per worker (also torch threads on CPU)"),
    # str: the config checks it (a whole number of GPUs), with the same one-line message as in YAML
    "--gpus-per-worker": ("gpus_per_worker", str, "whole GPUs per worker (with --use-gpu; default 1)"),
    "--checkpoint-every": ("checkpoint_every", int, "steps between checkpoints (0: each epoch)"),
    "--max-failures": ("max_failures", int, "restarts from the last checkpoint after a worker dies"),
    "--address": ("address", str, "Ray cluster address (default: local Ray, or RAY_ADDRESS)"),
    "--amp": ("amp", str, "auto (bf16 on GPUs with native bf16, else fp32) | bf16 | fp16 | off"),
    "--save-dtype": ("save_dtype", str, "precision of the saved model: float32 (default) | float16 | bfloat16"),
    "--tracking-uri": ("tracking_uri", str, "MLflow store or server (default: sqlite:///<parent of --out>/mlflow.db)"),
    "--experiment": ("experiment", str, "MLflow experiment name (default: beeray)"),
}


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with beeFormer (Ray Train)",
        description="Train a sentence Transformer on the training users of a prepared data set with the "
                    "beeFormer two-pass step, on local Ray or a cluster. Values come from --config (YAML), "
                    "then from the flags below, then from --set.",
        epilog="examples:\n"
               "  beeray train --data data/shop --epochs 3 --out runs/shop\n"
               "  beeray train --config experiments/ml-small-cpu.yaml --data data/ml --out runs/ml\n"
               "  beeray train --config experiments/goodbooks.yaml --address auto --num-workers 4\n"
               "  beeray train --config experiments/ml-small-cpu.yaml --out runs/ml --resume\n"
               "  beeray train --config experiments/goodbooks.yaml --out /data/runs/gb --resume auto   # resubmittable\n"
               "  beeray train --config experiments/goodbooks.yaml --address auto --out s3://bucket/runs/gb --resume auto\n\n"
               "object storage (s3://, gs://, ...): credentials, region and endpoint come from the environment\n"
               "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL); checkpoints go\n"
               "there during the run, the rest at the end, with OUT/_COMPLETE.json written last.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML file with TrainConfig keys (see experiments/)")
    for flag, (_, tp, help_) in _FLAGS.items():
        p.add_argument(flag, type=tp, help=help_)
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker")
    p.add_argument("--full-train", action="store_true", default=None,
                   help="also train on the validation cold items (the final model)")
    p.add_argument("--no-eval", dest="eval_every_epoch", action="store_false", default=None,
                   help="skip validation after each epoch")
    p.add_argument("--no-tracking", dest="tracking", action="store_const", const="none", default=None,
                   help="do not log the run to MLflow")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other config key")
    p.add_argument("--resume", nargs="?", const=True, default=False, choices=["auto"], metavar="auto",
                   help="continue the run in --out from its newest checkpoint (one must exist); "
                        "`--resume auto`: continue it if --out holds one, else start it (for jobs that may be "
                        "submitted again, e.g. a retried KubeRay RayJob). Either way a run started with "
                        "another config is refused, naming the keys that differ")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="do not evaluate the base model for comparison")
    p.set_defaults(func=run)


def config_from_args(args) -> TrainConfig:
    overrides = {field: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, (field, _, _) in _FLAGS.items()}
    overrides.update(use_gpu=args.use_gpu, full_train=args.full_train, eval_every_epoch=args.eval_every_epoch,
                     tracking=args.tracking)
    origins = {field: flag for flag, (field, _, _) in _FLAGS.items()}
    origins.update(use_gpu="--use-gpu", full_train="--full-train", eval_every_epoch="--no-eval",
                   tracking="--no-tracking")
    sets = parse_overrides(args.set)
    overrides.update(sets)
    origins.update({key: f"--set {key}" for key in sets})
    return train_config(args.config, overrides, origins)


def run(args) -> int:
    from beeray.artifacts import metrics_table
    from beeray.trainer import train

    cfg = config_from_args(args)
    if not cfg.data:
        raise BeerayError("no data: pass --data DIR (made by `beeray prepare`) or set `data:` in --config")
    result = train(cfg, resume=args.resume, baseline=args.baseline)
    rows = {f"{who} / {split}": res for who, per in result.metrics.items() for split, res in per.items()}
    print()
    print(metrics_table(rows))
    where = result.published or result.out
    print(f"\nmodel: {where}/model\nmetrics: {where}/metrics.json\n"
          f"history: {where}/history.csv, {where}/history.png")
    return 0
