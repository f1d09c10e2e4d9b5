"""The exactness check of the two-pass step: its gradient against plain one-graph autograd.

Used by the tests and by benchmarks/gpu.py (which must run where pytest and the tests folder are
not). Gradients are read where the optimizer reads them, before any update, and compared as one
vector: the relative L2 error of the whole gradient.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from beeray.encoder import ChunkPlan, TokenizedCatalog, encode
from beeray.loss import nmse_loss
from beeray.precision import grad_scaler
from beeray.sampler import batch_targets, sample_item_set, step_rng
from beeray.step import StepResult, train_step

# fp16 loss scale of both sides of the check: a power of two, so unscaling is exact.
FP16_SCALE = 2.0**10


class GradientCapture(torch.optim.Optimizer):
    """An optimizer whose step() records each parameter's gradient and changes nothing.

    Gradients are read where the optimizer reads them, before any update: a parameter delta
    after an SGD step would lose small gradients to round-off in the weights.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.names = {id(p): n for n, p in model.named_parameters()}
        super().__init__([p for p in model.parameters() if p.requires_grad], {})
        self.grads: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):
        self.grads = {self.names[id(p)]: p.grad.detach().clone()
                      for g in self.param_groups for p in g["params"] if p.grad is not None}


class NoReplay:
    """Stands in for sentence-transformers' RandContext: pass 2 then draws fresh dropout masks (the
    reference implementation's defect), so the two-pass gradient must no longer equal autograd."""

    def __init__(self, *tensors):
        pass

    def __enter__(self):
        pass

    def __exit__(self, *exc):
        pass


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """||got - want|| / ||want|| over all parameters' gradients taken as one vector (float64)."""
    if got.keys() != want.keys():
        raise ValueError(f"different parameters have gradients: {sorted(set(got) ^ set(want))}")
    num = sum(float((got[k].double() - want[k].double()).pow(2).sum()) for k in want)
    den = sum(float(want[k].double().pow(2).sum()) for k in want)
    return (num / den) ** 0.5


def scaler_for(device, precision: str) -> torch.amp.GradScaler:
    """The GradScaler both sides use: fp16 at FP16_SCALE, never growing within a check."""
    if precision != "fp16":
        return grad_scaler(device, precision)
    return torch.amp.GradScaler(torch.device(device).type, init_scale=FP16_SCALE, growth_interval=2**30)


def autograd_grads(model, catalog: TokenizedCatalog, users, m, key, chunk_size, seed, device="cpu",
                   precision: str = "fp32") -> tuple[dict[str, torch.Tensor], float]:
    """Plain autograd through the encoder: the step's I_b and chunks, one graph, one backward
    (in fp16 the loss is scaled by FP16_SCALE and the gradients divided by it, as a GradScaler does)."""
    model = copy.deepcopy(model)
    model.train()
    device = torch.device(device)
    item_set = sample_item_set(np.unique(np.concatenate(users)), len(catalog), m, step_rng(*key))
    plan = ChunkPlan.build(catalog, item_set, chunk_size, device)
    on_device = catalog.on(device)
    torch.manual_seed(seed)
    emb = torch.empty((item_set.size, 0), device=device)
    for rows, width, index in zip(plan.rows, plan.widths, plan.index):
        e = encode(model, on_device.features(rows, width), precision)
        if emb.shape[1] == 0:
            emb = torch.empty((item_set.size, e.shape[1]), device=device)
        emb[index] = e
    loss = nmse_loss(torch.from_numpy(batch_targets(users, item_set)).to(device), emb)
    scale = FP16_SCALE if precision == "fp16" else 1.0
    (loss * scale).backward()
    grads = {n: p.grad.detach().clone() / scale for n, p in model.named_parameters() if p.grad is not None}
    return grads, loss.item()


def two_pass_grads(model, catalog: TokenizedCatalog, users, m, key, chunk_size, seed, device="cpu",
                   precision: str = "fp32", **step_kw) -> tuple[dict[str, torch.Tensor], StepResult]:
    """beeray's train_step on a copy of `model`; the gradients its optimizer step would apply."""
    model = copy.deepcopy(model)
    capture = GradientCapture(model)
    torch.manual_seed(seed)
    step_kw.setdefault("scaler", scaler_for(device, precision))
    res = train_step(model, capture, catalog, users, m=m, rng_key=key, chunk_size=chunk_size,
                     device=torch.device(device), precision=precision, **step_kw)
    return capture.grads, res
