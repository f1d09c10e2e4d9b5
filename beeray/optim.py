"""The optimizer and its learning-rate schedule (docs/method.md §2.5), both from TrainConfig.

`build_optimizer`: AdamW (beeray's default) or the reference's Nadam. `build_scheduler`: a
torch LambdaLR stepped once per optimizer step by the training loop, whose factor `LRSchedule`
gives: a linear warm-up over `warmup_steps`, then constant, or a linear or cosine decay that
reaches 0 after the run's last step. Its state goes into the checkpoint (TrainState.lr_schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from beeray.config import TrainConfig

# Keras 3's Nadam, which the reference compiles with its defaults (beta_1 0.9, beta_2 0.999,
# epsilon 1e-7): its momentum schedule is mu_t = beta_1 (1 - 0.5 * 0.96^t), which torch's NAdam
# computes as 0.96^(t * momentum_decay), so momentum_decay 1 (torch's default 4e-3 is Dozat's).
NADAM_KERAS = {"betas": (0.9, 0.999), "eps": 1e-7, "momentum_decay": 1.0}


def build_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "nadam":
        # Keras applies weight_decay decoupled (w -= lr * wd * w, as AdamW does), so torch's
        # decoupled form keeps `weight_decay` meaning the same under both optimizers.
        return torch.optim.NAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled_weight_decay=True,
                                 **NADAM_KERAS)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass
class LRSchedule:
    """The factor on `lr` for the step taken after `step` steps (LambdaLR's lr_lambda).

    A callable object rather than a function: LambdaLR.state_dict() then stores its fields (plain
    numbers and a string, JSON-safe) with the scheduler's own counters. `total`: the run's optimizer
    steps, the decay's horizon, given when it is built (Recipe.start_schedule counts them).
    """

    kind: str  # constant | linear | cosine
    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup  # step k (1-based) of the warm-up: lr * k / warmup_steps
        if self.kind == "constant":
            return 1.0
        span = self.total - self.warmup
        if span <= 0:
            return 1.0  # no step left to decay over
        done = min(step - self.warmup, span) / span  # 0 on the first decayed step, 1 after the last
        if self.kind == "linear":
            return 1.0 - done
        return 0.5 * (1.0 + math.cos(math.pi * done))


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Constant without warm-up multiplies lr by exactly 1.0 every step: the paper's training, bit
    for bit. Stepped after every train_step, also when fp16's GradScaler skipped the update (an
    overflow): torch's AMP notes accept that (the schedule counts steps taken, skipped or not), and
    it keeps the schedule a function of the step number, the same on every worker and on resume."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(cfg.schedule, cfg.warmup_steps, total_steps))
