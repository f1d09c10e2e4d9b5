"""`beeray tune`: search hyperparameters (Optuna TPE + ASHA on Ray Tune), retrain the best, test it once."""

from __future__ import annotations

import argparse

from beeray.commands import path_arg


def register(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="search hyperparameters (Ray Tune + Optuna), then retrain and test the best",
        description="Run trials that each train on the training split and report validation metrics per epoch "
                    "(ASHA stops weak trials early), pick the best trial by its best epoch, retrain that "
                    "configuration on train + validation for that many epochs, and evaluate it once on the "
                    "test split. Writes OUT/tune_results.csv, best.json, trials.png, hyperparameters.png and "
                    "OUT/final/ (model, metrics.json).",
        epilog="config (YAML):\n"
               "  train:  TrainConfig keys, the fixed part (data, model, out, batch_size, num_workers, ...)\n"
               "  search:\n"
               "    space:  {lr: {type: loguniform, low: 1e-6, high: 1e-3}, m: {type: choice, values: [256, 512]},\n"
               "             epochs: {type: randint, low: 1, high: 4}}   # randint: high exclusive\n"
               "    num_samples: 8\n    max_concurrent_trials: 2\n    metric: val_ndcg@100\n    mode: max\n"
               "    seed: 0\n    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or: none\n\n"
               "examples:\n"
               "  beeray tune --config experiments/tune-shop-cpu.yaml\n"
               "  beeray tune --config experiments/tune-ml-small-cpu.yaml --out runs/tune-ml\n"
               "  beeray tune --config experiments/tune-ml-small-cpu.yaml --out runs/tune-ml --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="YAML with train: and search: sections (see experiments/tune-*)")
    p.add_argument("--out", type=path_arg("--out", urls=True),
                   help="output folder, or object storage (s3://bucket/prefix) (default: train.out of the config)")
    p.add_argument("--tracking-uri", help="MLflow store or server for the trials and the final run "
                                          "(default: sqlite:///<parent of OUT>/mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--resume", nargs="?", const=True, default=False, choices=["auto"], metavar="auto",
                   help="continue an interrupted search in OUT: finished trials are kept, the rest resume; "
                        "`--resume auto`: continue it if OUT holds one, else start it")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="do not evaluate the base model next to the final one")
    p.set_defaults(func=run)


def run(args) -> int:
    from beeray.artifacts import metrics_table, results_frame
    from beeray.api import tune_config_of
    from beeray.tuner import tune

    overrides = {"out": args.out, "tracking_uri": args.tracking_uri, "tracking": "none" if args.no_tracking else None}
    cfg = tune_config_of(args.config, {k: v for k, v in overrides.items() if v is not None})
    result = tune(cfg, resume=args.resume, baseline=args.baseline)
    metric = cfg.search.metric
    table = results_frame(result.rows, cfg)
    cols = ["trial_id", *[s.name for s in cfg.space], f"best_{metric}", "best_epoch", "epochs_run",
            "status", "time_s"]
    print()
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    failed = [r for r in result.rows if r.status == "ERROR"]
    for r in failed:
        print(f"failed trial {r.trial_id}: {r.error}")
    print(f"\nbest trial {result.best.trial_id}: {metric} {result.best.best:.4f} at epoch "
          f"{result.best.best_epoch} with {result.best.config}")
    rows = {f"{who} / {split}": res for who, per in result.final_metrics.items() for split, res in per.items()}
    print()
    print(metrics_table(rows))
    where = result.published or result.out
    print(f"\nresults: {where}/tune_results.csv, {where}/best.json, {where}/trials.png, "
          f"{where}/hyperparameters.png\nfinal model: {cfg.train.out}/final/model")
    return 0  # some trials failed but a best one exists: reported above and in best.json
