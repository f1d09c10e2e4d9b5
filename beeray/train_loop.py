"""The Ray Train worker loop: data shard -> steps -> per-epoch validation -> checkpoints.

`train_loop_per_worker` runs once per worker inside a `TorchTrainer` (beeray/trainer.py starts
it). It is a few named steps over a `Recipe` that holds one worker's state: `Recipe.setup` (model,
optimizer, the tokenized training catalog, a restored checkpoint), `validate_base` (epoch 0: the
base model's validation metrics), `train_epoch` (the steps of one epoch, with mid-epoch
checkpoints), `end_epoch` (validation, history, the best epoch so far, the epoch's checkpoint), and
`run`, which strings them together until cfg.epochs or an early stop (`patience`). With one worker
it is the single-process trainer; with W it runs the distributed step of docs/method.md §3.

Every report carries the same keys with the same meaning: `epoch` = epochs completed (0 before
the first), `step` = optimizer steps taken, `epoch_end` = whether this report closes an epoch,
the step loss or the epoch's mean loss, and the newest validation metrics (Ray Tune's scheduler
reads `epoch` and the metric from every report).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from beeray.checkpoint import TrainState, load_best, load_checkpoint, weights_copy
from beeray.config import TrainConfig, to_dict
from beeray.data.prepared import PreparedData
from beeray.distributed import Comm
from beeray.encoder import TokenizedCatalog
from beeray.evaluator import evaluate
from beeray.metrics import METRICS, SELECTION_METRIC, VAL_METRICS
from beeray.models import load_model, set_attention_dropout, set_max_seq_length
from beeray.optim import build_optimizer, build_scheduler
from beeray.precision import describe, grad_scaler, resolve
from beeray.sampler import PAD_USER, composed_parts, dataset_batches, joint_steps, step_rng, worker_steps
from beeray.step import train_step

# report(metrics, checkpoint): hands a report to Ray Train; `checkpoint` asks rank 0 to attach one.
Report = Callable[[dict, bool], None]


def read_shard(shard) -> tuple[np.ndarray, list[np.ndarray]]:
    """All of this worker's rows for one epoch (user ids + item lists; a few MB even at Amazon scale).

    Reading the whole shard first tells every worker its step count before the first collective.
    """
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    for batch in shard.iter_batches(batch_size=4096, batch_format="numpy"):
        users.append(batch["user"].astype(np.int64))
        items.extend(np.asarray(x, dtype=np.int64) for x in batch["items"])
    return (np.concatenate(users) if users else np.zeros(0, np.int64)), items


def user_parts(data: PreparedData, user_items: list[np.ndarray]) -> np.ndarray:
    """The dataset (index into data.parts) of each training user: that of its items (users never span
    datasets); -1 for a row without items (never planned: it would add nothing to a step)."""
    first = np.fromiter((items[0] if len(items) else -1 for items in user_items), dtype=np.int64,
                        count=len(user_items))
    return np.where(first >= 0, data.item_parts[np.maximum(first, 0)], -1)


@dataclass
class Recipe:
    """One worker's training: its model, optimizer, tokenized training catalog and progress."""

    cfg: TrainConfig
    data: PreparedData
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    catalog: TokenizedCatalog
    state: TrainState
    comm: Comm
    precision: str  # fp32 | bf16 | fp16, resolved from cfg.amp for this worker's device
    scaler: torch.amp.GradScaler  # fp16 loss scaling; disabled (a pass-through) otherwise
    restored: bool  # resumed from a checkpoint (the fault drill only fires in a fresh run)
    # lr per optimizer step (cfg.schedule), stepped after each; built by start_schedule once the run's
    # steps are known (its horizon), before anything is checkpointed
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    # per_dataset composition: catalog rows of each dataset (negatives of its steps); None = joint
    pools: list[np.ndarray] | None = None
    # rank 0: a CPU copy of the best validated epoch's weights (state.best_epoch), saved in checkpoints
    best: dict | None = None
    crash_at_step: int = 0  # the fault drill (CRASH_AT_STEP); 0 = never

    @classmethod
    def setup(cls, cfg: TrainConfig, rank: int, world: int, device: torch.device,
              checkpoint_dir: str | None = None) -> "Recipe":
        """Load the model, tokenize the training catalog, restore a checkpoint if there is one."""
        if device.type == "cpu":
            torch.set_num_threads(cfg.cpus_per_worker)
        data = PreparedData.load(cfg.data)
        model = load_model(cfg.model, device=str(device), trust_remote_code=cfg.trust_remote_code,
                           prompt=cfg.prompt)
        set_max_seq_length(model, cfg.max_seq_length)
        if cfg.attention_dropout is not None:
            set_attention_dropout(model, cfg.attention_dropout)
        # The training catalog: the items of the file this run trains on, and nothing else. Cold
        # items (validation and, always, test) are never tokenized, encoded or drawn as negatives.
        # Tokenized once per (data, tokenizer, max_seq_length), normally by the driver before the
        # workers start: a worker, a restarted worker or a later run maps it from the prepared folder.
        catalog = TokenizedCatalog.cached(model, data, cfg.max_seq_length, full=cfg.full_train)
        parts = composed_parts(cfg, data)
        pools = [np.flatnonzero(data.item_parts[catalog.items] == p) for p in range(len(parts))] if parts else None
        optimizer = build_optimizer(cfg, model.parameters())
        precision = resolve(cfg.amp, device)
        scaler = grad_scaler(device, precision)
        state, best = TrainState(config=to_dict(cfg)), None
        if checkpoint_dir is not None:
            state = load_checkpoint(checkpoint_dir, model, optimizer)
            state.config = to_dict(cfg)
            best = load_best(checkpoint_dir, state, model) if rank == 0 else None
            if state.scaler:
                scaler.load_state_dict(state.scaler)  # fp16: continue with the loss scale reached
        if rank == 0:
            log(describe(cfg.amp, precision, device))
        return cls(cfg=cfg, data=data, rank=rank, world=world, device=device, model=model, optimizer=optimizer,
                   catalog=catalog, state=state, comm=Comm(device), precision=precision, scaler=scaler,
                   restored=checkpoint_dir is not None, pools=pools, best=best)

    @property
    def local_batch(self) -> int:
        """Users per step on this worker: a share of the global batch in items mode."""
        return math.ceil(self.cfg.batch_size / self.world) if self.cfg.parallel == "items" else self.cfg.batch_size

    def validation(self) -> dict:
        """Validation metrics of the model as it is now (rank 0 only; no bootstrap: a training curve)."""
        self.model.eval()
        res = evaluate(self.model, self.data, "val", show_progress=False, bootstrap=0)
        return {f"val_{m}": res[m] for m in METRICS}

    def latest_validation(self) -> dict:
        for row in reversed(self.state.history):
            if VAL_METRICS[0] in row:
                return {k: row[k] for k in VAL_METRICS}
        return {}

    def validate_base(self, report: Report) -> None:
        """Epoch 0: the base model's validation metrics, the first point of the training curve."""
        row = {"epoch": 0, "step": 0, "loss": None, "items_per_s": None, "seconds": None}
        if self.rank == 0:
            row.update(self.validation())
            log(f"epoch 0 (base model): val recall@20 {row['val_recall@20']:.4f}  ndcg@100 {row['val_ndcg@100']:.4f}")
        self.state.history.append(row)
        report({**row, "epoch_end": True}, False)

    def epoch_steps(self, epoch: int, users: np.ndarray, user_items: list[np.ndarray]) -> list[tuple]:
        """This worker's (dataset or None, rows of its table) per step of the epoch; the same count on
        every worker, and the same list again when a run resumes mid-epoch (docs/method.md §3.4).

        joint: `users` is this worker's shard (equal split, padding rows included): its rows in a
        seeded order. per_dataset: `users` is the whole table, read by every worker, which all compute
        the same plan from (seed, epoch) and take their part of each step (no collective needed).
        """
        cfg = self.cfg
        if self.pools is None:
            return [(None, rows) for rows in joint_steps(users.size, self.local_batch, cfg.seed, epoch,
                                                         self.rank, self.world)]
        given = {str(k): float(v) for k, v in cfg.dataset_weights.items()}
        weights = [given.get(name, 1.0) for name in self.data.parts]
        by_user = np.argsort(users, kind="stable")  # the same plan in whatever order the table arrives
        parts = user_parts(self.data, [user_items[i] for i in by_user])
        batches = dataset_batches(parts, len(self.pools), cfg.batch_size, cfg.seed, epoch, weights)
        return [(part, by_user[rows]) for part, rows in worker_steps(batches, self.rank, self.world, cfg.parallel)]

    def start_schedule(self, users: np.ndarray, user_items: list[np.ndarray]) -> None:
        """The learning-rate schedule, built with its horizon (the run's optimizer steps) and, in a
        restored run, continued at the step reached."""
        restored_lrs = [group["lr"] for group in self.optimizer.param_groups]  # a checkpoint's, if restored
        self.scheduler = build_scheduler(self.cfg, self.optimizer, self.total_steps(users, user_items))
        if self.state.lr_schedule:
            self.scheduler.load_state_dict(self.state.lr_schedule)
            # building set the step-0 rate; the step reached has the checkpoint's (what the next step uses)
            for group, lr in zip(self.optimizer.param_groups, restored_lrs):
                group["lr"] = lr

    def total_steps(self, users: np.ndarray, user_items: list[np.ndarray]) -> int:
        """The run's optimizer steps over cfg.epochs, counted as train_epoch counts them (epoch_steps,
        either composition): the horizon of a decaying learning-rate schedule."""
        return sum(len(self.epoch_steps(e, users, user_items)) for e in range(self.cfg.epochs))

    def train_epoch(self, epoch: int, users: np.ndarray, user_items: list[np.ndarray], report: Report) -> dict:
        """The steps of one epoch over this worker's rows (`epoch_steps`); returns its row."""
        cfg, state = self.cfg, self.state
        rows = [self.catalog.rows(items) for items in user_items]  # prepared-data items -> catalog rows
        steps = self.epoch_steps(epoch, users, user_items)
        n_steps = len(steps)
        first = state.step_in_epoch if epoch == state.epoch else 0
        if first == 0:
            state.epoch_losses = []
        n_items, t0 = 0, time.perf_counter()
        progress = Progress(f"epoch {epoch + 1}/{cfg.epochs}", n_steps, enabled=self.rank == 0)
        for step in range(first, n_steps):
            part, picked = steps[step]
            batch = [rows[i] for i in picked if users[i] != PAD_USER]
            key = (cfg.seed, epoch, step) if cfg.parallel == "items" else (cfg.seed, epoch, step, self.rank)
            # Dropout draws depend only on (seed, epoch, step, rank): a resumed run replays them.
            torch.manual_seed(int(step_rng(cfg.seed, epoch, step, self.rank, 1).integers(2**62)))
            lr = self.optimizer.param_groups[0]["lr"]  # this step's, set by the scheduler's last step()
            res = train_step(self.model, self.optimizer, self.catalog, batch, m=cfg.m, rng_key=key,
                             chunk_size=cfg.encode_batch_size, device=self.device, precision=self.precision,
                             mode=cfg.parallel, comm=self.comm, activation_memory=cfg.activation_memory * 2**30,
                             scaler=self.scaler, pool=None if part is None else self.pools[part])
            self.scheduler.step()  # once per optimizer step (see beeray.optim.build_scheduler)
            state.epoch_losses.append(res.loss)
            n_items += res.items
            state.global_step += 1
            if self.rank == 0 and not self.restored and state.global_step == self.crash_at_step:
                raise RuntimeError(f"{CRASH_AT_STEP}: injected worker crash at step {state.global_step}")
            state.step_in_epoch = step + 1
            state.steps.append({"step": state.global_step, "epoch": epoch + (step + 1) / n_steps, "loss": res.loss,
                                "items": res.items, "lr": lr})
            progress.update(step + 1, f"loss {res.loss:.5f}  |I_b| {res.items}  "
                                      f"items/s {n_items / (time.perf_counter() - t0):.0f}")
            if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0 and step + 1 < n_steps:
                report({"epoch": epoch, "step": state.global_step, "epoch_end": False, "loss": res.loss,
                        **self.latest_validation()}, True)
        seconds = time.perf_counter() - t0
        return {"epoch": epoch + 1, "step": state.global_step,
                "loss": float(np.mean(state.epoch_losses)) if state.epoch_losses else None,
                "items_per_s": n_items / seconds if seconds > 0 else None, "seconds": seconds}

    def save(self, folder: str) -> None:
        """Write this worker's checkpoint (model, optimizer, TrainState with the GradScaler's and the
        learning-rate scheduler's state) to `folder`: what ray_report attaches and Recipe.setup restores."""
        from beeray.checkpoint import save_checkpoint

        self.state.scaler = self.scaler.state_dict()
        if self.scheduler is not None:
            self.state.lr_schedule = self.scheduler.state_dict()
        save_checkpoint(folder, self.model, self.optimizer, self.state, best=self.best)

    def run(self, read_epoch: Callable[[], tuple[np.ndarray, list[np.ndarray]]], report: Report) -> None:
        """The epochs still to run (all of them, or the rest of a restored run), until cfg.epochs or an
        early stop; `read_epoch()`: this worker's (users, their items) for the next epoch."""
        first = read_epoch() if self.state.epoch < self.cfg.epochs else (np.zeros(0, np.int64), [])
        self.start_schedule(*first)
        if self.cfg.eval_every_epoch and not self.state.history:
            self.validate_base(report)
        start = self.state.epoch
        for epoch in range(start, self.cfg.epochs):
            if self.stop_early():
                return
            users, user_items = first if epoch == start else read_epoch()  # the shard, read once an epoch
            row = self.train_epoch(epoch, users, user_items, report)
            self.end_epoch(row, report)

    def end_epoch(self, row: dict, report: Report) -> None:
        """Validate (rank 0), record the epoch in the history, track the best epoch and checkpoint."""
        if self.cfg.eval_every_epoch and self.rank == 0:
            row.update(self.validation())
            log(f"epoch {row['epoch']}: loss {row['loss']:.5f}  val recall@20 {row['val_recall@20']:.4f}  "
                f"ndcg@100 {row['val_ndcg@100']:.4f}")
        self.state.history.append(row)
        self.state.epoch, self.state.step_in_epoch = row["epoch"], 0
        if self.cfg.validates:
            self.track_best(row)
        report({**row, "epoch_end": True}, True)

    def track_best(self, row: dict) -> None:
        """`keep: best` and `patience`: every rank learns rank 0's validation score (stopping is
        collective), and rank 0 copies the weights of a new best epoch before training changes them."""
        mine = row[SELECTION_METRIC] if self.rank == 0 else 0.0
        score = float(self.comm.all_reduce_(torch.tensor([mine], dtype=torch.float64, device=self.device)).item())
        state = self.state
        if state.best_epoch and score <= state.best_score:  # ties keep the earlier (fewer steps) epoch
            return
        state.best_epoch, state.best_score = row["epoch"], score
        if self.rank == 0:
            self.best = weights_copy(self.model)

    def stop_early(self) -> bool:
        """Whether `patience` validated epochs have passed without a better one (checked before each
        epoch, so a restored run that had stopped stays stopped)."""
        state, patience = self.state, self.cfg.patience
        if not (patience and self.cfg.validates and state.best_epoch and state.epoch - state.best_epoch >= patience):
            return False
        if self.rank == 0:
            log(f"early stop after epoch {state.epoch}: no better val ndcg@100 in {patience} epoch(s) since "
                f"epoch {state.best_epoch} ({state.best_score:.4f})")
        return True


STORAGE_KEY = "_checkpoint_storage"  # (experiment path, filesystem) beside the TrainConfig, from trainer.fit
# The fault drill of the tests and benchmarks (not a setting): with BEERAY_CRASH_AT_STEP=N in the
# driver's environment, rank 0 raises at global step N unless the run was restored from a checkpoint,
# which shows that max_failures and --resume recover. The driver hands it over beside the config.
CRASH_AT_STEP = "BEERAY_CRASH_AT_STEP"


def train_loop_per_worker(config: dict) -> None:
    """What each Ray Train worker runs (config: a TrainConfig as a dict; with STORAGE_KEY, where Ray
    keeps the run, so that checkpoints are persisted whole: beeray.checkpoint.persist)."""
    import ray.train
    import ray.train.torch

    from beeray.config import from_dict

    config = dict(config)
    storage = config.pop(STORAGE_KEY, None)
    crash_at_step = int(config.pop(CRASH_AT_STEP, 0))
    cfg: TrainConfig = from_dict(TrainConfig, config, "train config")
    ctx = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            recipe = Recipe.setup(cfg, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(),
                                  ckpt_dir)
    else:
        recipe = Recipe.setup(cfg, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    recipe.crash_at_step = crash_at_step
    report = ray_report(recipe, storage)
    shard = ray.train.get_dataset_shard("train")
    recipe.run(lambda: read_shard(shard), report)


def ray_report(recipe: Recipe, storage: tuple | None = None) -> Report:
    """Reports through Ray Train; rank 0 attaches the checkpoint (model, optimizer, state) when asked,
    persisted whole or not at all, with retries while an object store is away (`storage`: the run's
    (experiment path, filesystem); None: Ray's own copy)."""
    import tempfile

    import ray.train

    from beeray.checkpoint import ray_upload

    upload = ray_upload(*storage, log=log) if storage else None

    def report(metrics: dict, with_checkpoint: bool) -> None:
        if with_checkpoint and recipe.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                recipe.save(tmp)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_upload_fn=upload)
        else:
            ray.train.report(metrics)

    return report


def log(message: str) -> None:
    # Straight to the process's stdout: Ray Train's patched print() would both tee and log each
    # line, and the driver would show it twice.
    print(message, file=sys.__stdout__, flush=True)


class Progress:
    """Step progress as plain log lines (every few seconds and at the end of an epoch).

    Worker output reaches the user through Ray's log forwarding, `ray job logs` and files,
    where carriage-return progress bars turn into noise; one line per update stays readable.
    """

    def __init__(self, desc: str, total: int, enabled: bool, every_s: float = 10.0) -> None:
        self.desc, self.total, self.enabled, self.every_s = desc, total, enabled, every_s
        self.last = time.perf_counter()

    def update(self, done: int, text: str) -> None:
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.every_s or done == self.total):
            log(f"{self.desc}  step {done}/{self.total}  {text}")
            self.last = now
