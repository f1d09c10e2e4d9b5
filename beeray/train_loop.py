"""The Ray Train worker loop: data shard -> steps -> per-epoch validation -> checkpoints.

Runs once per worker inside a `TorchTrainer` (beeray/trainer.py starts it). With one worker
it is the single-process trainer; with W it runs the distributed step of method.md §3.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time

import numpy as np
import ray.train
import ray.train.torch
import torch

from beeray.checkpoint import TrainState, load_checkpoint, save_checkpoint
from beeray.config import TrainConfig, from_dict, to_dict
from beeray.data.prepared import PreparedData
from beeray.distributed import Comm
from beeray.encoder import TokenizedCatalog
from beeray.models import load_model, set_attention_dropout
from beeray.sampler import step_rng
from beeray.step import train_step

PAD_USER = -1  # rows added so the dataset splits evenly across workers; they hold no user


def use_amp(setting: str, device: torch.device) -> bool:
    if setting == "off":
        return False
    if setting == "bf16":
        return True
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


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


def train_loop_per_worker(config: dict) -> None:
    cfg: TrainConfig = from_dict(TrainConfig, config, "train config")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cfg.cpus_per_worker)
    amp = use_amp(cfg.amp, device)
    comm = Comm()

    data = PreparedData.load(cfg.data)
    model = load_model(cfg.model, device=str(device), trust_remote_code=cfg.trust_remote_code)
    model.max_seq_length = cfg.max_seq_length
    if cfg.attention_dropout is not None:
        set_attention_dropout(model, cfg.attention_dropout)
    catalog = TokenizedCatalog.build(model, data.texts, cfg.max_seq_length, show_progress=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    state = TrainState(config=to_dict(cfg))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_checkpoint(ckpt_dir, model, optimizer)
        state.config = to_dict(cfg)

    shard = ray.train.get_dataset_shard("train")
    local_batch = math.ceil(cfg.batch_size / world) if cfg.parallel == "items" else cfg.batch_size

    def report(metrics: dict, with_checkpoint: bool) -> None:
        if with_checkpoint and rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, model, optimizer, state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)

    for epoch in range(state.epoch, cfg.epochs):
        users, user_items = read_shard(shard)
        # Equal split => the same row count, hence the same number of steps, on every worker.
        order = step_rng(cfg.seed, epoch, rank, world).permutation(users.size)
        n_steps = math.ceil(users.size / local_batch)
        first = state.step_in_epoch if epoch == state.epoch else 0
        if first == 0:
            state.epoch_losses = []
        n_items, t0 = 0, time.perf_counter()
        progress = Progress(f"epoch {epoch + 1}/{cfg.epochs}", n_steps, enabled=rank == 0)
        for step in range(first, n_steps):
            rows = order[step * local_batch:(step + 1) * local_batch]
            batch = [user_items[i] for i in rows if users[i] != PAD_USER]
            key = (cfg.seed, epoch, step) if cfg.parallel == "items" else (cfg.seed, epoch, step, rank)
            # Dropout draws depend only on (seed, epoch, step, rank): a resumed run replays them.
            torch.manual_seed(int(step_rng(cfg.seed, epoch, step, rank, 1).integers(2**62)))
            res = train_step(model, optimizer, catalog, batch, m=cfg.m, rng_key=key,
                             chunk_size=cfg.encode_batch_size, device=device, amp=amp,
                             mode=cfg.parallel, comm=comm)
            state.epoch_losses.append(res.loss)
            n_items += res.items
            state.global_step += 1
            if rank == 0 and checkpoint is None and state.global_step == cfg.crash_at_step:
                raise RuntimeError(f"crash_at_step: injected worker crash at step {state.global_step}")
            state.step_in_epoch = step + 1
            progress.update(step + 1, f"loss {res.loss:.5f}  |I_b| {res.items}  "
                                      f"items/s {n_items / (time.perf_counter() - t0):.0f}")
            if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0 and step + 1 < n_steps:
                report({"epoch": epoch, "step": state.global_step, "loss": res.loss}, with_checkpoint=True)

        seconds = time.perf_counter() - t0
        mean_loss = float(np.mean(state.epoch_losses)) if state.epoch_losses else None
        row = {"epoch": epoch + 1, "step": state.global_step, "loss": mean_loss,
               "items_per_s": n_items / seconds if seconds > 0 else None, "seconds": seconds}
        if cfg.eval_every_epoch and rank == 0:
            from beeray.evaluate import evaluate

            model.eval()
            metrics = evaluate(model, data, "val", show_progress=False, bootstrap=0)
            row.update({f"val_{k}": metrics[k] for k in ("recall@20", "recall@50", "ndcg@100")})
            log(f"epoch {epoch + 1}: loss {row['loss']:.5f}  val recall@20 {row['val_recall@20']:.4f}  "
                f"ndcg@100 {row['val_ndcg@100']:.4f}")
        state.history.append(row)
        state.epoch, state.step_in_epoch = epoch + 1, 0
        report(row, with_checkpoint=True)


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
