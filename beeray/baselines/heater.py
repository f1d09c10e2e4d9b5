"""Heater (Zhu, Wang, Caverlee et al., SIGIR 2020) for cold-start items, fed with sentence embeddings.

Faithful to the authors' reference code (github.com/Zziwei/Heater--Cold-Start-Recommendation,
model.py and main_CiteULike.py, the item cold-start case), in torch:
- collaborative embeddings U, V pretrained on the warm items: ALS factors (the `implicit`
  package, as the beeFormer authors fed their Heater runs), standardised column-wise over
  non-zero rows and clipped (U to ±5, V to ±1); the content is a sentence encoder's item
  embeddings, standardised and clipped to ±5;
- the content → CF-space **mixture of experts**: n_experts one-layer tanh experts mixed by a tanh
  gate, v_c = tanh(Σ_k g_k(c) · expert_k(c));
- **randomized training**: in each batch of (user, item) pairs, half the pairs replace the item's CF
  vector by v_c, so the towers learn to score from content alone;
- towers per side: Dense + BatchNorm + tanh, then a linear embedding; score = their dot product;
- loss: mean squared error against 1 (interaction) / 0 (5 uniform negatives per positive from the
  warm items) + alpha · Σ_batch ‖v_c − V_i‖² + reg · Σ‖W‖²; SGD with momentum 0.9, lr 0.005 decayed by
  0.8 every 10 epochs.
At scoring time a user is the ALS factors solved from their source history (as the ALS baseline
does), a cold candidate takes the content branch, and the evaluator ranks the candidates exactly
as for a text encoder.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from beeray.baselines.als import ALS
from beeray.baselines.base import Baseline, Context


def _standardize(x: np.ndarray, clip: float, rows: np.ndarray | None = None):
    """Column-wise standardisation fitted on `rows` (default: the non-zero rows), then clipped; returns
    the transform so that new rows (users folded in at scoring time) get the same one."""
    rows = np.flatnonzero(np.abs(x).sum(axis=1) > 0) if rows is None else rows
    mean, std = x[rows].mean(axis=0), x[rows].std(axis=0) + 1e-8

    def transform(y: np.ndarray) -> np.ndarray:
        out = np.clip((y - mean) / std, -clip, clip)
        out[np.abs(y).sum(axis=1) == 0] = 0.0  # a zero row (no CF vector) stays zero
        return out.astype(np.float32)

    return transform


class HeaterNet(nn.Module):
    def __init__(self, content_dim: int, cf_dim: int, n_experts: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(content_dim, n_experts)
        self.experts = nn.ModuleList(nn.Linear(content_dim, cf_dim) for _ in range(n_experts))
        self.item_tower = nn.Sequential(nn.Linear(cf_dim, hidden), nn.BatchNorm1d(hidden, momentum=0.1), nn.Tanh())
        self.user_tower = nn.Sequential(nn.Linear(cf_dim, hidden), nn.BatchNorm1d(hidden, momentum=0.1), nn.Tanh())
        self.item_out = nn.Linear(hidden, hidden)
        self.user_out = nn.Linear(hidden, hidden)
        for m in self.modules():  # the reference initialises every dense layer this way
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-0.02, b=0.02)
                nn.init.zeros_(m.bias)

    def content(self, c: torch.Tensor) -> torch.Tensor:
        """The mixture of experts: content -> CF space."""
        gate = torch.tanh(self.gate(c))  # unnormalised, as in the reference
        experts = torch.stack([torch.tanh(e(c)) for e in self.experts], dim=1)  # B x K x d
        return torch.tanh(torch.einsum("bk,bkd->bd", gate, experts))

    def items(self, v: torch.Tensor) -> torch.Tensor:
        return self.item_out(self.item_tower(v))

    def users(self, u: torch.Tensor) -> torch.Tensor:
        return self.user_out(self.user_tower(u))

    def penalty(self) -> torch.Tensor:
        return sum(m.weight.pow(2).sum() + m.bias.pow(2).sum() for m in self.modules() if isinstance(m, nn.Linear))


class Heater(Baseline):
    name = "heater"
    needs = "text"
    grid = {"epochs": [10, 30]}
    defaults = {"epochs": 30, "factors": 200, "n_experts": 5, "dropout": 0.5, "negatives": 5, "lr": 0.005,
                "alpha": 1e-4, "reg": 1e-4, "batch_size": 1024, "als_regularization": 0.01, "als_iterations": 15}
    summary = "Heater: ALS on warm items + mixture-of-experts map from text embeddings, randomized training"

    def fit(self, ctx: Context) -> "Heater":
        p = self.params
        gen = torch.Generator().manual_seed(ctx.seed)
        rng = np.random.default_rng(ctx.seed)
        self.als = ALS(factors=int(p["factors"]), regularization=float(p["als_regularization"]), alpha=1.0,
                       iterations=int(p["als_iterations"])).fit(ctx)
        warm = np.flatnonzero(ctx.train_counts > 0)
        item_cf = np.zeros_like(self.als.model.item_factors)
        item_cf[warm] = self.als.model.item_factors[warm]
        self.user_transform = _standardize(self.als.model.user_factors, clip=5.0)
        v = torch.from_numpy(_standardize(item_cf, clip=1.0)(item_cf))
        u = torch.from_numpy(self.user_transform(self.als.model.user_factors))
        content = ctx.item_embeddings()
        self.content = torch.from_numpy(_standardize(content, clip=5.0, rows=warm)(content))
        self.net = HeaterNet(self.content.shape[1], v.shape[1], int(p["n_experts"]), int(p["factors"]))
        opt = torch.optim.SGD(self.net.parameters(), lr=float(p["lr"]), momentum=0.9)
        decay = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.8)
        train = sp.coo_matrix(ctx.train)
        pos_users, pos_items = train.row.astype(np.int64), train.col.astype(np.int64)
        neg = int(p["negatives"])
        self.net.train()
        for _ in range(int(p["epochs"])):
            # Every positive pair plus `neg` uniform negatives from the warm items (the reference draws
            # them with replacement and does not filter the user's positives).
            users = np.concatenate([pos_users, np.repeat(pos_users, neg)])
            items = np.concatenate([pos_items, rng.choice(warm, size=pos_items.size * neg)])
            target = np.concatenate([np.ones(pos_items.size), np.zeros(pos_items.size * neg)]).astype(np.float32)
            order = torch.randperm(users.size, generator=gen).numpy()
            for start in range(0, order.size, int(p["batch_size"])):
                idx = order[start:start + int(p["batch_size"])]
                if idx.size < 2:  # batch norm needs two rows
                    continue
                bu, bi = torch.from_numpy(users[idx]), torch.from_numpy(items[idx])
                vc = self.net.content(self.content[bi])
                drop = torch.zeros(idx.size, 1)
                drop[torch.randperm(idx.size, generator=gen)[: int(np.floor(float(p["dropout"]) * idx.size))]] = 1.0
                item_vec = v[bi] * (1 - drop) + vc * drop
                pred = (self.net.users(u[bu]) * self.net.items(item_vec)).sum(-1)
                loss = ((pred - torch.from_numpy(target[idx])) ** 2).mean() \
                    + float(p["alpha"]) * (vc - v[bi]).pow(2).sum() + float(p["reg"]) * self.net.penalty()
                opt.zero_grad()
                loss.backward()
                opt.step()
            decay.step()
        self.net.eval()
        with torch.no_grad():
            cold = torch.from_numpy((np.abs(item_cf).sum(axis=1) == 0)[:, None].astype(np.float32))
            vecs = []
            for start in range(0, v.shape[0], 8192):
                sl = slice(start, start + 8192)
                vecs.append(self.net.items(v[sl] * (1 - cold[sl]) + self.net.content(self.content[sl]) * cold[sl]))
            self.item_vectors = torch.cat(vecs).numpy().astype(np.float64)
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        factors = self.als.model.recalculate_user(np.arange(source.shape[0]), sp.csr_matrix(source, dtype=np.float32))
        with torch.no_grad():
            users = self.net.users(torch.from_numpy(self.user_transform(np.atleast_2d(factors)))).numpy()
        return users.astype(np.float64) @ self.item_vectors[candidates].T
