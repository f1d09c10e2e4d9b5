"""Generate docs/results.md: beeFormer-trained MiniLM against the paper's baselines, on the shared real data.

    .venv/bin/python experiments/results.py            # or: make results
    .venv/bin/python experiments/results.py --only ml  # one data set (amazon, goodbooks, ml)

Everything runs through beeray's own commands (`beeray prepare`, `beeray train`, `beeray compare`),
which the generated file quotes. Each finished step leaves its output under runs/results/, so a
re-run skips it (delete that folder to measure again). Sized for a 2-core CPU; see docs/results.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RUNS = REPO / "runs" / "results"
DATA = REPO / "data" / "results"
BEERAY = [sys.executable, "-m", "beeray.cli"]
MINILM = "all-MiniLM-L6-v2"
MPNET = "all-mpnet-base-v2"  # the paper's model, zero-shot (the `mpnet` extra carries it offline)
BOOTSTRAP = 1000

# beeFormer training on a 2-core CPU: MiniLM, the model's own dropout, lr 5e-5 (the paper's 1e-5 moves
# too little in the steps a CPU affords). Like every baseline: a validation run (train part only,
# validation after every epoch, the best epoch kept: `keep: best`) chooses the number of epochs, and the
# row's model is refitted on train + validation for that many epochs (`--full-train`). `users`: training
# users kept (a random subset; validation and test are untouched), None = all. `train`: the recipe;
# its `epochs` is the validation run's budget.
DATASETS = {
    # The rule (Goodbooks's): all 8,317 training users in steps of 48 (174 steps an epoch, >= 150) under
    # bf16 autocast (measured on these texts: benchmarks/README.md, precision --on amazon). A user has ~4
    # training interactions, so I_b is m = 512 items at any batch size and a step costs the same; one
    # epoch of 174 steps plus the validations fits beside the baselines in a 3-hour CPU session, so, as
    # Goodbooks, the row is the one-epoch validation run's kept model, trained on the train part (each
    # user's interactions before the validation and test ones).
    "amazon": {"title": "Amazon Industrial & Scientific, time split", "kind": "amazon-json",
               "input": SHARED / "amazon-scientific", "split": "time",
               "baselines": ["popularity", "itemknn", "ease", "als", "elsa", "sansa"],
               "train": {"epochs": 1, "batch_size": 48, "m": 512, "max_seq_length": 64, "encode_batch_size": 64,
                         "amp": "bf16"},
               "users": None, "refit": False},
    # The rule: all training users in steps of 16 (167 steps an epoch, >= 150) under bf16 autocast
    # (2.2x fp32 on this CPU: benchmarks/README.md, precision --on goodbooks). The positives (~42 a user
    # on the train part) fill I_b past m, so an epoch costs the same at any batch size: ~1.8 h at 128
    # tokens, which with the table's baselines (Heater alone ~45 min) passes a 3-hour CPU session, so
    # the descriptions (median 142 tokens) are cut at 64 tokens, as MovieLens's. One epoch leaves a
    # refit nothing to choose: the row is the validation run's kept model (train part; the validation
    # cold items are never trained on either).
    "goodbooks": {"title": "Goodbooks-10k (5% of users, the paper's LLM descriptions), item split",
                  "kind": "goodbooks", "input": SHARED / "goodbooks", "split": "item",
                  "baselines": ["text-popularity", "cbf+popularity", "heater"],
                  "train": {"epochs": 1, "batch_size": 16, "m": 512, "max_seq_length": 64,
                            "encode_batch_size": 64, "amp": "bf16"},
                  "users": None, "refit": False},
    # The rule: steps of 32 users (21 an epoch) under bf16 autocast, 1.9x as fast as fp32 on this CPU
    # (~10 s a step: benchmarks/README.md, precision), up to 6 epochs (126 steps, >= 60) with patience 2.
    "ml": {"title": "MovieLens latest-small, item split", "kind": "movielens", "input": SHARED / "ml-latest-small",
           "split": "item", "baselines": ["text-popularity", "cbf+popularity", "heater"],
           "train": {"epochs": 6, "patience": 2, "batch_size": 32, "m": 256, "max_seq_length": 64,
                     "encode_batch_size": 64, "amp": "bf16"},
           "users": None},
}


# The paper's Table 3 on the shared data: MiniLM trained on Goodbooks alone, on MovieLens alone and on
# both ("goodlens", in both batch compositions), one recipe for all, each run seeing each of its
# training users once (the goodlens runs take as many steps as the two single runs together). Every
# model is scored on the single-dataset folders' test cold items, which are the goodlens parts' own
# (docs/data.md), and zero-shot on Amazon Scientific.
GOODLENS = {
    "title": "goodlens: one model for Goodbooks and MovieLens (the paper's Table 3), item split",
    "parts": {"goodbooks": "goodbooks", "movielens": "ml"},  # goodlens component -> its DATASETS entry
    "users": {"goodbooks": 160, "movielens": 320},  # training users kept per component
    "train": {"epochs": 1, "batch_size": 32, "m": 256, "max_seq_length": 64, "encode_batch_size": 64,
              "amp": "bf16"},
    "compositions": ("joint", "per_dataset"),
}

# Flags of `beeray train` (anything else goes through --set key=value).
TRAIN_FLAGS = {"epochs", "batch_size", "m", "max_seq_length", "encode_batch_size"}


def run(cmd: list[str], log: Path) -> float:
    """Run a beeray command, its output to `log`; seconds of wall time. Fails loudly."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + shlex.join(["beeray", *cmd[3:]] if cmd[:3] == BEERAY else cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        # beeray's own errors are one line, the log's last (e.g. compare's leak guard): show it here
        last = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}; see {log}"
                         + (f"\n{last[0]}" if last else ""))
    return time.perf_counter() - t0


def training_users(src: Path, users: int, seed: int = 0):
    """`users` random training users of a prepared folder (indices into its users.parquet)."""
    import numpy as np
    import pandas as pd

    return np.random.default_rng(seed).choice(pd.read_parquet(src / "train.parquet")["user"], users, replace=False)


def trimmed(src: Path, dst: Path, users: int | None = None, seed: int = 0, keep=None) -> Path:
    """A copy of a prepared folder whose train files keep `users` random training users, or the users
    `keep` (indices), the same users in both (validation and test are untouched)."""
    import pandas as pd

    if (dst / "stats.json").exists():
        return dst
    keep = training_users(src, users, seed) if keep is None else keep
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("tokens"))
    for name in ("train.parquet", "train_full.parquet"):
        table = pd.read_parquet(src / name)
        table[table["user"].isin(keep)].reset_index(drop=True).to_parquet(tmp / name, index=False)
    os.replace(tmp, dst)
    return dst


def prepared(name: str, spec: dict) -> tuple[Path, list[str], float | None]:
    """The prepared folder of a data set (prepared now if missing): path, command, seconds (None: reused)."""
    data = DATA / name
    prep = [*BEERAY, "prepare", spec["kind"], "--input", str(spec["input"]), "--out", str(data),
            "--split", spec["split"]]
    seconds = None if (data / "stats.json").exists() else run(prep, RUNS / name / "prepare.log")
    return data, prep, seconds


def train_command(data: Path, out: Path, settings: dict, full: bool = True) -> list[str]:
    """`beeray train` as every beeFormer row of this page runs it: MiniLM, lr 5e-5; `full`: the refit on
    train + validation, else the validation run that chooses its epochs (train part, the best epoch kept)."""
    return [*BEERAY, "train", "--data", str(data), "--out", str(out), "--model", MINILM, "--lr", "5e-5",
            *(["--full-train"] if full else []), "--no-baseline", "--cpus-per-worker", "2",
            *[x for k, v in settings.items() for x in
              ((f"--{k.replace('_', '-')}", str(v)) if k in TRAIN_FLAGS else ("--set", f"{k}={v}"))]]


def trained(cmd: list[str], model: Path, log_dir: Path) -> float:
    """Run a training command unless its model exists; its wall time, summed over the sessions it took.
    The command continues an interrupted run (`--resume auto`): a long CPU run killed with its machine's
    session goes on from its last checkpoint when `make results` runs again."""
    seconds = log_dir / "train_seconds.json"
    if not (model / "metrics.json").exists():
        before = 0.0
        if seconds.exists() and (model / "ray").exists():
            # an interrupted segment counts until its log's last line
            done = json.loads(seconds.read_text())
            before = done["seconds"] + (Path(done["log"]).stat().st_mtime - done["since"] if "since" in done else 0.0)
        seconds.parent.mkdir(parents=True, exist_ok=True)
        log = log_dir / (f"train-{int(time.time())}.log" if (model / "ray").exists() else "train.log")
        seconds.write_text(json.dumps({"seconds": before, "since": time.time(), "log": str(log)}))
        seconds.write_text(json.dumps({"seconds": before + run([*cmd, "--resume", "auto"], log)}))
    return json.loads(seconds.read_text())["seconds"]


def dataset(name: str, spec: dict) -> dict:
    """Prepare, train beeFormer, compare everything; returns what the page needs."""
    import pandas as pd

    out = RUNS / name
    commands, timing = [], {}
    data, prep, seconds = prepared(name, spec)
    commands.append(prep)
    if seconds is not None:
        timing["prepare"] = seconds
    train_data = trimmed(data, DATA / f"{name}-train{spec['users']}", spec["users"]) if spec["users"] else data
    # The number of epochs, chosen on validation; then the refit on train + validation for that many.
    validated = out / "beeformer-val"
    train = train_command(train_data, validated, spec["train"], full=False)
    commands.append(train)
    timing["validation run"] = trained(train, validated, out / "validation-run")
    kept = json.loads((validated / "metrics.json").read_text())["kept"]
    model = out / "beeformer"
    if spec.get("refit", True):
        refit_settings = {k: v for k, v in spec["train"].items() if k != "patience"}  # no validation to stop on
        refit = train_command(train_data, model, {**refit_settings, "epochs": kept["epoch"]})
        commands.append(refit)
        timing["train"] = trained(refit, model, out)
    else:
        model = validated
    table = out / "compare.json"
    # Zero-shot MiniLM at its own 256 tokens and at the trained model's length (encoders compared at
    # equal length too), zero-shot MPNet (the paper's model); every other row is paired against the
    # beeFormer row on the same users.
    compare = [*BEERAY, "compare", "--data", str(data), "--split", "test", "--model", MINILM,
               "--model", str(minilm_at(spec["train"]["max_seq_length"])), "--model", MPNET,
               "--model", str(model / "model"), "--text-model", MINILM, "--bootstrap", str(BOOTSTRAP),
               *[x for b in spec["baselines"] for x in ("--baseline", b)], "--reference", str(model / "model"),
               "--out", str(table)]
    if "sansa" in spec["baselines"] and not sansa_installed():
        compare = [c for i, c in enumerate(compare) if not (c == "sansa" or (c == "--baseline" and compare[i + 1] == "sansa"))]
    commands.append(compare)
    if not table.exists():
        timing["compare"] = run(compare, out / "compare.log")
    stats = json.loads((data / "stats.json").read_text())
    train_stats = json.loads((model / "metrics.json").read_text())
    history = pd.read_csv(validated / "history.csv")
    return {"name": name, "spec": spec, "commands": commands, "timing": timing, "stats": stats,
            "compare": json.loads(table.read_text()), "train_config": train_stats["config"], "kept": kept,
            "validation_curve": history[history["kind"] == "epoch"][["epoch", "step", "val_ndcg@100"]].to_dict("records"),
            "refit_steps": (int(pd.read_csv(model / "history.csv").query("kind == 'step'")["step"].max())
                            if spec.get("refit", True) else None)}


def minilm_at(tokens: int) -> Path:
    """A copy of MiniLM that encodes at `tokens` tokens (its max_seq_length), for zero-shot rows at a
    trained model's length."""
    from beeray.models import load_model, save_model

    path = RUNS / f"minilm-msl{tokens}"
    if not (path / "config.json").exists():
        model = load_model(MINILM, device="cpu")
        model.max_seq_length = tokens
        save_model(model, path)
    return path


def goodlens(spec: dict) -> dict:
    """Table 3: the single-dataset and goodlens models, each scored on both data sets and on Amazon."""
    import pandas as pd

    out = RUNS / "goodlens"
    commands, timing = [], {"train": {}}
    single = {part: prepared(name, DATASETS[name]) for part, name in spec["parts"].items()}
    commands += [cmd for _, cmd, _ in single.values()]
    amazon, amazon_prep, _ = prepared("amazon", DATASETS["amazon"])
    commands.append(amazon_prep)
    joint = DATA / "goodlens"
    prep = [*BEERAY, "prepare", "goodlens", *[x for part, name in spec["parts"].items()
                                              for x in ("--input", f"{part}={DATASETS[name]['input']}")],
            "--out", str(joint)]
    commands.append(prep)
    if not (joint / "stats.json").exists():
        run(prep, out / "prepare.log")
    # The same training users in the single runs and in the goodlens runs.
    joint_ids = pd.read_parquet(joint / "users.parquet", columns=["user_id"])["user_id"]
    keep_joint = []
    runs = {}
    for part, (data, _, _) in single.items():
        keep = training_users(data, spec["users"][part])
        ids = pd.read_parquet(data / "users.parquet", columns=["user_id"])["user_id"].to_numpy()[keep]
        keep_joint += joint_ids.index[joint_ids.isin([f"{part}:{i}" for i in ids])].tolist()
        runs[part] = trimmed(data, DATA / f"goodlens-{part}-train{len(keep)}", keep=keep)
    trimmed_joint = trimmed(joint, DATA / f"goodlens-train{len(keep_joint)}", keep=keep_joint)
    models = {}
    for name, data, extra in [*((part, path, {}) for part, path in runs.items()),
                              *((f"goodlens-{c}", trimmed_joint, {"batch_composition": c})
                                for c in spec["compositions"])]:
        model = out / name
        cmd = train_command(data, model, {**spec["train"], **extra})
        commands.append(cmd)
        timing["train"][name] = trained(cmd, model, out / name)
        models[name] = model / "model"
    zero_shot = {256: MINILM, spec["train"]["max_seq_length"]: str(minilm_at(spec["train"]["max_seq_length"]))}
    encoders = [*zero_shot.values(), *map(str, models.values())]
    references = [str(models[f"goodlens-{c}"]) for c in spec["compositions"]]
    tables = {}
    for key, folders in (("cold", [data for data, _, _ in single.values()]), ("amazon", [amazon])):
        table = out / f"compare-{key}.json"
        cmd = [*BEERAY, "compare", *[x for d in folders for x in ("--data", str(d))], "--split", "test",
               *[x for m in encoders for x in ("--model", m)],
               *[x for r in references for x in ("--reference", r)], "--bootstrap", str(BOOTSTRAP),
               "--out", str(table)]
        commands.append(cmd)
        if not table.exists():
            timing[f"compare-{key}"] = run(cmd, out / f"compare-{key}.log")
        tables[key] = json.loads(table.read_text())
    stats = {part: json.loads((data / "stats.json").read_text()) for part, (data, _, _) in single.items()}
    # Heater's row: the same folders, split and seed as the single-dataset sections' Heater (it cannot be
    # trained across catalogs), so their result is this row's; read from there rather than fitted twice.
    heater = {}
    for part, name in spec["parts"].items():
        table = RUNS / name / "compare.json"
        if table.exists():
            comp = json.loads(table.read_text())
            heater[part] = comp["results"].get("baseline:heater", {}).get(next(iter(comp["datasets"])))
    return {"name": "goodlens", "spec": spec, "commands": commands, "timing": timing, "stats": stats, "heater": heater,
            "joint_stats": json.loads((joint / "stats.json").read_text()), "models": {k: str(v) for k, v in models.items()},
            "zero_shot": {str(k): v for k, v in zero_shot.items()}, "tables": tables,
            "train_configs": {k: json.loads((Path(v).parent / "metrics.json").read_text())["config"]
                              for k, v in models.items()}}


def sansa_installed() -> bool:
    from beeray.baselines.sansa import installed

    return installed()


# ---------------------------------------------------------------- the page

METRICS = ("recall@20", "recall@50", "ndcg@100")


def cell(res: dict, m: str) -> str:
    return f"{res[m]:.4f} ± {res['stderr'][m]:.4f}"


def label(row: str, model_dir: str) -> str:
    if row == MINILM:
        return "MiniLM zero-shot (CBF), 256 tokens"
    if "/minilm-msl" in row:
        return f"MiniLM zero-shot (CBF), {row.rsplit('msl', 1)[1]} tokens"
    if row.endswith("/model"):
        return "**beeFormer-trained MiniLM** (CBF)"
    if row == MPNET:
        return "MPNet zero-shot (CBF, all-mpnet-base-v2), 384 tokens"
    return row.removeprefix("baseline:")


def chosen(row: str, res: dict) -> str:
    """The hyperparameters validation chose for a baseline row, an edge of its ladder marked."""
    from beeray.baselines import BASELINES

    cls = BASELINES.get(row.removeprefix("baseline:"))
    if cls is None:
        return ""
    edges = res.get("edges", {})
    # what the search chose (its ladders) and what training chose on validation (heater's best epoch)
    keys = [*cls.grid, *[k for k in edges if k not in cls.grid]]
    if any(s.get("trained") for s in res.get("search", [])):
        keys += [k for k in ("epochs",) if k not in keys]
    bits = [f"{k}={res['params'][k]}" + (f" (**edge: {edges[k]}**)" if k in edges else "")
            for k in keys if k in res.get("params", {})]
    return f" ({', '.join(bits)})" if bits else ""


def paired_verdicts(comp: dict, lab: str, reference: str, rows: dict) -> list[str]:
    """The reference row minus each other row, per user on the same users (compare stores row − reference)."""
    paired = comp["paired"]["by_reference"][reference][lab]
    flip = {"better": "worse", "worse": "better", "no clear difference": "no clear difference"}
    lines = []
    for name in rows:
        if name == reference:
            continue
        bits = []
        for m, shown in (("recall@20", "Recall@20"), ("ndcg@100", "NDCG@100")):
            d = paired[name][m]
            bits.append(f"{shown} {-d['diff']:+.4f} ± {d['stderr']:.4f} ({flip[d['verdict']]}, p_holm {d['p_holm']:.2g})")
        lines.append(f"- against {label(name, reference)}: " + "; ".join(bits) + ".")
    return lines


def standing(comp: dict, lab: str, reference: str, rows: dict) -> str:
    """The paired verdicts in one line: which rows the beeFormer row beats, ties and loses to, on Recall@20
    and NDCG@100 together (a row where the two metrics disagree is listed with both)."""
    paired = comp["paired"]["by_reference"][reference][lab]
    flip = {"better": "better", "worse": "worse", "no clear difference": "tie"}
    groups: dict[str, list[str]] = {"better": [], "tie": [], "worse": [], "mixed": []}
    for name in rows:
        if name == reference:
            continue
        # compare stores row − reference, so the reference's verdict is the opposite of the stored one
        verdicts = [{"better": "worse", "worse": "better"}.get(paired[name][m]["verdict"], "no clear difference")
                    for m in ("recall@20", "ndcg@100")]
        shown = label(name, reference).replace("**", "")
        if verdicts[0] == verdicts[1]:
            groups[flip[verdicts[0]]].append(shown)
        else:
            groups["mixed"].append(f"{shown} (Recall@20 {flip[verdicts[0]]}, NDCG@100 {flip[verdicts[1]]})")
    words = {"better": "better than", "tie": "no clear difference from", "worse": "worse than",
             "mixed": "split by metric against"}
    parts = [f"{words[k]} {', '.join(v)}" for k, v in groups.items() if v]
    return "**Where the beeFormer row stands** (both metrics, paired): " + "; ".join(parts) + "."


def section(r: dict) -> list[str]:
    from beeray.baselines import BASELINES

    spec, comp = r["spec"], r["compare"]
    lab = next(iter(comp["datasets"]))
    rows = {name: per[lab] for name, per in comp["results"].items()}
    oracle = comp["oracle"][lab]
    trained = next(k for k in rows if k.endswith("/model"))
    s = r["stats"]
    split = s["split"]
    lines = [f"## {spec['title']}", "",
             f"{s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions after preprocessing; "
             f"test: {split['test']['users']:,} users"
             + (f", {split['test_items']:,} cold candidate items" if spec["split"] == "item" else ", all items are candidates")
             + ". Seconds per row: encoding + scoring for encoders, validation search + refit + scoring for "
               "baselines; the training run of the beeFormer row is listed below the table.", ""]
    if "split_digest" in oracle:  # absent from a compare run before splits had digests
        lines += [f"Scored on the split with digest `sha256:{oracle['split_digest']}` (docs/splits/).", ""]
    lines += ["| model | Recall@20 | Recall@50 | NDCG@100 | R@20 head | R@20 middle | R@20 tail | top-20 popularity %ile | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    edge_notes = {}
    for name, res in rows.items():
        pop = res.get("popularity", {})
        secs = res.get("seconds", (res.get("fit_s") or 0) + (res.get("score_s") or 0))
        cls = BASELINES.get(name.removeprefix("baseline:"))
        for k in res.get("edges", {}):
            edge_notes[f"{name.removeprefix('baseline:')} {k}"] = (cls.edges.get(k) if cls else None) or "no reason given"
        lines.append(f"| {label(name, trained)}{chosen(name, res)} | " + " | ".join(cell(res, m) for m in METRICS) + " | "
                     + " | ".join(_fmt(pop.get(k)) for k in ("recall@20_head", "recall@20_middle", "recall@20_tail"))
                     + f" | {_fmt(pop.get('popularity_percentile@20'), 1)} | {secs:.0f} |")
    if "sansa" in spec["baselines"] and not any(k == "baseline:sansa" for k in rows):
        lines.append("| sansa | not installed (needs SuiteSparse: `make sansa`, see README) | | | | | | | |")
    pop = oracle["popularity"]
    lines.append("| *popularity oracle (peeks at the test targets; a reading aid, not a model)* | "
                 + " | ".join(cell(oracle, m) for m in METRICS) + " | "
                 + " | ".join(_fmt(pop.get(k)) for k in ("recall@20_head", "recall@20_middle", "recall@20_tail"))
                 + f" | {_fmt(pop.get('popularity_percentile@20'), 1)} | |")
    lines += ["", *beeformer_recipe(r), ""]
    if edge_notes:
        lines += ["Choices on an end of their ladder (the search would have gone further; why the ladder stops "
                  "there): " + "; ".join(f"{k}: {why}" for k, why in edge_notes.items()) + ".", ""]
    else:
        lines += ["Every baseline's choice is interior: both neighbours on each ladder were tried and scored no "
                  "better on validation.", ""]
    alpha = comp["paired"]["alpha"]
    lines += ["The beeFormer row minus each other row, per user on the same users: the mean per-user difference "
              f"± its paired bootstrap stderr (the same resampled users for both rows); verdict at Holm-adjusted "
              f"p < {alpha} over the table's comparisons (every row, three metrics):", "",
              *paired_verdicts(comp, lab, trained, rows), "", standing(comp, lab, trained, rows), ""]
    base = rows.get(MINILM)
    if base is not None:
        gains = {t: rows[trained]["popularity"][f"recall@20_{t}"] - base["popularity"][f"recall@20_{t}"]
                 for t in ("head", "middle", "tail")}
        pct = rows[trained]["popularity"]["popularity_percentile@20"] - base["popularity"]["popularity_percentile@20"]
        lines += [f"Where training's gain over zero-shot MiniLM comes from (Recall@20 by popularity third): head "
                  f"{gains['head']:+.3f}, middle {gains['middle']:+.3f}, tail {gains['tail']:+.3f}; the top 20 moves "
                  f"{pct:+.1f} popularity percentile points.", ""]
    return lines


def beeformer_recipe(r: dict) -> list[str]:
    """How the beeFormer row was trained: the validation run that chose the epochs, then the refit."""
    spec, tc, s = r["spec"], r["train_config"], r["stats"]
    users = spec["users"] or "all"
    if "kept" not in r:  # a section generated before epochs were chosen on validation
        steps = math.ceil((users if isinstance(users, int) else s["split"]["train_full_users"]) / tc["batch_size"])
        return [f"beeFormer row: `beeray train` on {users} training users (train + validation), {tc['epochs']} epoch "
                f"= {steps} steps of {tc['batch_size']} users, m {tc['m']}, max_seq_length {tc['max_seq_length']}, "
                f"lr {tc['lr']:g}, optimizer {tc.get('optimizer', 'adamw')}, {r['timing']['train'] / 60:.1f} minutes "
                "on the 2-core CPU (evaluation included)."]
    kept, curve = r["kept"], r["validation_curve"]
    amp = tc.get("amp", "auto")
    runs = kept["epochs_run"]
    unseen = (f"it has not trained on the validation part's {s['split']['val']['target_interactions']:,} "
              "interactions, which the refitted baselines have" if s["split"].get("kind") == "time" else
              "the validation cold items are held out of its training as the test ones are")
    shown = ", ".join(f"epoch {int(c['epoch'])} (step {int(c['step'])}) {c['val_ndcg@100']:.4f}" for c in curve)
    return [f"beeFormer row: MiniLM trained with `beeray train` on {users} training users, {tc['batch_size']} users a "
            f"step, m {tc['m']}, max_seq_length {tc['max_seq_length']}, lr {tc['lr']:g}, optimizer "
            f"{tc.get('optimizer', 'adamw')}, amp {amp}{' (fp32 on a CPU)' if amp == 'auto' else ''}. The number of epochs is "
            f"chosen on validation, as every baseline's: a validation run of {runs} epoch{'s' * (runs != 1)} on the train part "
            f"({curve[-1]['step']} steps, {r['timing']['validation run'] / 60:.1f} minutes) scored validation NDCG@100 "
            f"after each ({shown}; epoch 0 is the base model) and kept epoch {kept['epoch']}"
            + (" (stopped early by patience)" if kept.get("stopped_early") else "")
            + (f"; the row's model is then refitted on train + validation for {kept['epoch']} epoch(s) = "
               f"{r['refit_steps']} optimizer steps ({r['timing']['train'] / 60:.1f} minutes, the test evaluation "
               "included)" if r["refit_steps"] is not None else
               "; the row is that run's kept model, trained on the train part only (one epoch is all the CPU "
               f"budget allows, which leaves a refit no number of epochs to choose; {unseen})")
            + ". Wall time on the shared 2-core CPU."]


def goodlens_section(r: dict) -> list[str]:
    spec, models, cold, amazon = r["spec"], r["models"], r["tables"]["cold"], r["tables"]["amazon"]
    parts = list(spec["parts"])  # goodbooks, movielens: also the compare labels (stats.json's dataset)
    shown = {"goodbooks": "Goodbooks", "movielens": "MovieLens"}
    amazon_label = next(iter(amazon["datasets"]))
    tokens = spec["train"]["max_seq_length"]
    names = {MINILM: "MiniLM zero-shot, 256 tokens", r["zero_shot"][str(tokens)]: f"MiniLM zero-shot, {tokens} tokens",
             **{models[p]: f"**trained on {shown[p]}**" for p in parts},
             **{models[f"goodlens-{c}"]: f"**trained on goodlens, {c.replace('_', '-')} batches**"
                for c in spec["compositions"]}}
    tc = next(iter(r["train_configs"].values()))
    users = {p: spec["users"][p] for p in parts}
    users.update({f"goodlens-{c}": sum(spec["users"].values()) for c in spec["compositions"]})
    trained_on = {models[k]: f"{n} users, {math.ceil(n / tc['batch_size'])} steps" for k, n in users.items()}
    stats = r["stats"]
    lines = [f"## {spec['title']}", "",
             "MiniLM trained with one recipe on Goodbooks alone, on MovieLens alone and on both in one catalog "
             "(`beeray prepare goodlens`), each run seeing each of its training users once, so a goodlens run "
             "takes as many steps as the two single runs together; then every model scored on the same test "
             "cold items and users: " + "; ".join(
                 f"{shown[p]}: {stats[p]['split']['test']['users']:,} test users, "
                 f"{stats[p]['split']['test_items']:,} cold candidate items of {stats[p]['items']:,}" for p in parts)
             + ". These are exactly the cold items of each part of the goodlens folder (each part draws its own, "
             "as its single-dataset split does), so no model here was scored on an item it trained on; the leak "
             "guard checked every pairing. All models are also scored zero-shot on Amazon Scientific (time split, "
             "every item a candidate).", "",
             "| model | trained on | " + " | ".join(f"{shown[p]} {m}" for p in parts for m in ("R@20", "NDCG@100"))
             + " | Amazon R@20 | Amazon NDCG@100 |",
             "|---|---|" + "---|" * (2 * len(parts) + 2)]
    digests = [(shown[p], cold["oracle"][p].get("split_digest")) for p in parts]
    digests.append(("Amazon", amazon["oracle"][amazon_label].get("split_digest")))
    if all(d for _, d in digests):  # absent from a compare run before splits had digests
        lines[-2:-2] = ["Scored on the splits with digests " + ", ".join(f"{n} `sha256:{d}`" for n, d in digests)
                        + " (docs/splits/).", ""]

    def cells(res: dict | None) -> list[str]:
        return [cell(res, m) if res else "-" for m in ("recall@20", "ndcg@100")]

    for row, per in cold["results"].items():
        lines.append(f"| {names.get(row, row)} | {trained_on.get(row, '-')} | "
                     + " | ".join(c for p in parts for c in cells(per[p])) + " | "
                     + " | ".join(cells(amazon["results"].get(row, {}).get(amazon_label))) + " |")
    heater = r.get("heater") or {}
    if heater:
        how = "; ".join(f"{shown[p]}: {chosen('baseline:heater', heater[p])[2:-1]}" for p in parts if heater.get(p))
        how += "".join(f"; {shown[p]}: not yet rerun" for p in parts if not heater.get(p))
        lines.append(f"| heater ({how}; text model MiniLM zero-shot, 256 tokens; the single-dataset sections' row) | - | "
                     + " | ".join(c for p in parts for c in cells(heater.get(p))) + " | - | - |")
    lines.append("| *popularity oracle (peeks at the test targets)* | - | "
                 + " | ".join(c for p in parts for c in cells(cold["oracle"][p])) + " | "
                 + " | ".join(cells(amazon["oracle"][amazon_label])) + " |")
    lines += ["", f"Training (each row): `beeray train` on train + validation, {tc['epochs']} epoch"
              f"{'s' * (tc['epochs'] != 1)}, batches of {tc['batch_size']} users, m {tc['m']}, max_seq_length "
              f"{tc['max_seq_length']}, lr {tc['lr']:g}, amp {tc.get('amp', 'auto')}; "
              + ", ".join(f"{names[models[k]].strip('*')} {r['timing']['train'][k] / 60:.1f} min"
                          for k in models) + " on the 2-core CPU (each with its final evaluation). Heater is "
              "fitted on each data set's own interactions (it cannot be trained across catalogs).", ""]
    # Paired: goodlens minus the in-domain model, on the same users (compare stored in-domain minus goodlens).
    paired = cold["paired"]["by_reference"]
    verdict_of = {"better": "worse", "worse": "better", "no clear difference": "no clear difference"}
    lines += ["goodlens against the model trained on the data set alone, per user on the same users (the mean "
              "per-user difference ± its paired bootstrap stderr; verdict at Holm-adjusted p < "
              f"{cold['paired']['alpha']} over each table's comparisons):", ""]
    helps = {}
    for c in spec["compositions"]:
        ref = str(models[f"goodlens-{c}"])
        for p in parts:
            d = paired[ref][p][str(models[p])]
            bits = []
            for m, metric in (("recall@20", "Recall@20"), ("ndcg@100", "NDCG@100")):
                verdict = verdict_of[d[m]["verdict"]]
                helps.setdefault((c, p), []).append(verdict)
                bits.append(f"{metric} {-d[m]['diff']:+.4f} ± {d[m]['stderr']:.4f} ({verdict}, p_holm {d[m]['p_holm']:.2g})")
            lines.append(f"- {c.replace('_', '-')} goodlens − {shown[p]}-only, on {shown[p]}: "
                         + "; ".join(bits) + ".")
    summary = []
    for (c, p), verdicts in helps.items():
        word = ("helps" if set(verdicts) == {"better"} else "hurts" if set(verdicts) == {"worse"}
                else "makes no clear difference" if set(verdicts) == {"no clear difference"} else "is mixed")
        summary.append(f"{c.replace('_', '-')} goodlens {word} on {shown[p]}")
    lines += ["", "**Does goodlens help at this size?** " + "; ".join(summary) + ". At a few optimizer steps on a "
              "CPU this measures whether adding the other domain's users costs the in-domain model anything, not "
              "the paper's claim, which is about 10 epochs of the full data sets. The paper's Table 3 (MPNet, the "
              "full Goodbooks-10k and MovieLens-20M): Goodbooks R@20 0.2710 vs 0.2505 alone, MovieLens-20M 0.4630 "
              "vs 0.4291 alone.", "",
              "A GPU run of `experiments/goodlens.yaml` (all-mpnet-base-v2, 10 epochs of 1,024-user steps, m 10,000, "
              "384 tokens) on the full data sets (about 53,000 Goodbooks-10k and 138,000 MovieLens-20M users before "
              "preprocessing) takes about 188 steps an epoch, 1,880 steps in all; at issue 15's measured MPNet bf16 step "
              "on one H100 (6.07 s at |I_b| 7,913, about 7.7 s at 10,000) that is about 4 hours on one H100 and "
              "about 1 hour on the recipe's 4 GPU workers, plus the two single-dataset runs (5 epochs each) for "
              "the comparison (benchmarks/README.md, projection).", ""]
    return lines


def _fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


ORDER = (*DATASETS, "goodlens")


def marked(kind: str, name: str, lines: list[str]) -> list[str]:
    """A block of the page that one data set's run writes, between markers: a later `--only` run of
    another data set keeps it as it is when its runs are not on this machine."""
    return [f"<!-- {kind} {name} -->", *lines, f"<!-- /{kind} {name} -->", ""]


def kept_blocks(text: str) -> dict[tuple[str, str], list[str]]:
    """The marked blocks of an existing page, by (kind, name), markers included."""
    import re

    return {(m["kind"], m["name"]): [*m.group(0).splitlines(), ""]
            for m in re.finditer(r"<!-- (?P<kind>\w+) (?P<name>[\w-]+) -->\n.*?\n<!-- /(?P=kind) (?P=name) -->",
                                 text, flags=re.S)}


def page(results: dict[str, dict], old: str = "") -> str:
    from beeray.baselines import BASELINES

    today = dt.date.today().isoformat()
    kept = kept_blocks(old)
    out = ["# Results: beeFormer against the paper's baselines, on this project's splits", "",
           "Generated by `make results` (`experiments/results.py`) on the development machine: 2 CPU cores, no "
           "GPU; each section gives the date it was generated (`--only NAME` regenerates one). Every row goes "
           "through the same evaluator "
           "(`beeray/evaluator.py`): same users, same candidates, the user's own items excluded, "
           "calibrated Recall@K (hits / min(K, targets)) and NDCG@K as RecPack defines them (CalibratedRecallK, "
           f"NDCGK; computed by beeray.metrics and tested against RecPack 0.3.6), {BOOTSTRAP} bootstrap resamples of users for the stderr, ties "
           "broken by one seeded random order of the candidates (the same for every row). "
           "Baselines choose their hyperparameters on the validation split by NDCG@100 (a climb along the "
           "ladders below, see there), then are refitted on train + validation for the test split; the "
           "beeFormer row's number of epochs is chosen on validation too (how, under each table). R@20 head / middle / tail: of the test targets on the most / middle / least "
           "popular third of the candidates (each third holds a third of the targets), the share found in the "
           "users' top 20; top-20 popularity %ile: how popular the recommended items are among the candidates "
           "(100 = the most popular). Each encoder is evaluated at its own max_seq_length: a trained model at "
           "the length it was trained with, zero-shot MiniLM both at its own 256 tokens and at the trained "
           "model's length, so that the comparison at equal length is there too.", "",
           "## How to read these tables", "",
           "In the three single-data-set sections (Amazon, Goodbooks, MovieLens) beeFormer is trained as the "
           "baselines are: on all training users, with the number of epochs chosen on validation. A validation "
           "run on the train part is scored on validation after every epoch (`keep: best`, `patience`); where "
           "the CPU affords several epochs (MovieLens), the row's model is then refitted on train + validation "
           "for the epochs kept. Where it affords one (Goodbooks and Amazon, each at least 150 optimizer steps: "
           "one epoch leaves a refit nothing to choose), the row is the validation run's kept model, trained on "
           "the train part only: fewer interactions than the refitted baselines saw, a handicap of the row, "
           "not an advantage. The recipe (users per step, m, max_seq_length, lr, precision), the validation "
           "curve, the steps and the wall time are under each table; the step times behind each recipe are "
           "in benchmarks/README.md (precision). The recipe is one for the whole page, MiniLM at lr 5e-5 (not "
           "the paper's MPNet at 1e-5: a CPU affords a few hundred steps, not thousands); the MPNet zero-shot "
           "row shows where the paper's model starts. The paper trains 5 epochs of 1,024 users with m = "
           "10,000 on GPUs; on one H100 the same code lifted MiniLM on the Goodbooks subset to test Recall@20 "
           "0.36-0.40 in 220 steps (issue 15). The goodlens section is still a sample (5 to 15 steps of 32 "
           "users a run): the same rule would take four runs of the Goodbooks run's size, about six hours of "
           "this CPU, so read it as whether mixing two domains costs the in-domain model anything at a few "
           "steps, not as the method's result. The baselines are trained as their authors train them (ELSA "
           "by the authors' `elsarec`, Heater on its authors' schedule with the best epoch kept, SANSA by its "
           "authors' package) and choose their hyperparameters on validation until the choice is interior "
           "or an end of a ladder the table marks. Below each table, every row is compared with the beeFormer "
           "row per user on the same users (paired bootstrap, Holm-adjusted over the table), and a line sums "
           "it up: that, not the overlap of the ± columns, says where a difference is real, and it says where "
           "beeFormer wins, ties or loses. Each section names its split by the split's SHA-256 digest "
           "(docs/splits/ lists the cold items; `beeray prepare --split-items` rebuilds them); a section "
           "generated before digests existed was scored on the split docs/splits/README.md names, which the "
           "same `beeray prepare` command still produces value for value (tests/test_prepared_digests.py). A "
           "section dated before 2026-12-02 was generated under the earlier protocol (ties to the lower item "
           "index, two- to "
           "four-value grids, beeray's own ELSA loss, Heater at 10 or 30 epochs, unpaired comparisons). "
           "Seconds and minutes are wall time on two cores that other jobs often shared, so read them as "
           "upper bounds.", "",
           "## Baselines and their validation search", "",
           "Each searched hyperparameter has a ladder of values (`grid` in its module under "
           "`beeray/baselines/`). The search (`beeray.baselines.search`) starts at the defaults and climbs "
           "one hyperparameter at a time: the next value up while validation NDCG@100 improves, else "
           "downwards, in passes until nothing changes. A choice is then either interior (both its neighbours "
           "were tried and scored no better) or on an end of its ladder, which the tables mark as an edge "
           "with the reason the ladder stops there. Heater's epochs are chosen while it trains: validation "
           "is scored as it goes and the best epoch is kept, as its authors do.", "",
           "| baseline | what it is | searched on validation (ladders; defaults first) |", "|---|---|---|"]
    for name, cls in BASELINES.items():
        grid = ", ".join(f"{k} ∈ {v} (from {cls.defaults.get(k, v[len(v) // 2])})" for k, v in cls.grid.items())
        out.append(f"| {name} | {cls.summary} | {grid or 'nothing'} |")
    out.append("")
    for name in ORDER:
        if name in results:
            r = results[name]
            lines = goodlens_section(r) if name == "goodlens" else section(r)
            out += marked("section", name, [lines[0], "", f"*Generated {today}.*", *lines[1:]])
        elif ("section", name) in kept:
            out += kept[("section", name)]
    out += ["## Commands", "", "Each data set, in the order `experiments/results.py` runs them "
            "(`runs/results/minilm-msl64` is all-MiniLM-L6-v2 saved with max_seq_length 64: "
            "`beeray.models.load_model`, set `max_seq_length`, `save_model`; the script writes it):", ""]
    for name in ORDER:
        if name in results:
            r = results[name]
            lines = [f"{r['spec']['title']}:", "", "```bash"]
            lines += [shlex.join(["beeray", *c[3:]]).replace(str(REPO) + "/", "").replace(str(REPO.parent) + "/", "../")
                      for c in r["commands"]]
            out += marked("commands", name, [*lines, "```"])
        elif ("commands", name) in kept:
            out += kept[("commands", name)]
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(ORDER), help=f"comma-separated: {', '.join(ORDER)}")
    p.add_argument("--out", default=str(REPO / "docs" / "results.md"))
    args = p.parse_args(argv)
    names = args.only.split(",")
    unknown = sorted(set(names) - set(ORDER))
    if unknown:
        raise SystemExit(f"results.py: unknown data set(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")

    def result(name: str) -> dict:
        return goodlens(GOODLENS) if name == "goodlens" else dataset(name, DATASETS[name])

    results = {n: result(n) for n in names}
    # Sections not asked for: regenerated from their runs where those are on this machine, else kept as
    # the page has them (a marked block per data set), so --only refreshes one without dropping the others.
    finished = {"goodlens": RUNS / "goodlens" / "compare-amazon.json",
                **{n: RUNS / n / "compare.json" for n in DATASETS}}
    results.update({n: result(n) for n in ORDER if n not in results and finished[n].exists()})
    from beeray.files import write_text

    out = Path(args.out)
    write_text(out, page(results, out.read_text() if out.exists() else ""))  # never left half-written
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
