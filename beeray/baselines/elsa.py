"""ELSA (Vančura et al., RecSys 2022): beeFormer's decoder with free item embeddings instead of an encoder.

The embeddings A are trained with beeray's own NMSE loss (beeray/loss.py) on the training
interactions, and scored exactly like a text encoder's embeddings: relu(x Â Âᵀ − x). It is the
collaborative twin of the CBF path, and the CF space Heater maps texts into.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from beeray.baselines.base import Baseline, Context
from beeray.evaluate import CBFScorer
from beeray.loss import nmse_loss


class ELSA(Baseline):
    name = "elsa"
    needs = "interactions"
    grid = {"factors": [64, 256], "lr": [0.01, 0.1]}
    defaults = {"factors": 256, "lr": 0.1, "epochs": 20, "batch_size": 1024}
    summary = "item embeddings trained with the NMSE loss of beeFormer (no text), scored like CBF"

    def fit(self, ctx: Context) -> "ELSA":
        self.embeddings = train_elsa(ctx.train, int(self.params["factors"]), lr=float(self.params["lr"]),
                                     epochs=int(self.params["epochs"]), batch_size=int(self.params["batch_size"]),
                                     seed=ctx.seed)
        self.scorer = CBFScorer(self.embeddings)
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        return self.scorer.scores(source, candidates)


def train_elsa(train: sp.csr_matrix, factors: int, *, lr: float, epochs: int, batch_size: int,
               seed: int = 0) -> np.ndarray:
    """Item embeddings (n_items x factors, rows L2-normalised) that minimise the NMSE loss on `train`.

    Each step takes a batch of users over every item that has a training interaction (items
    without any keep their random start: no signal reaches them). Adam, as the authors use.
    """
    gen = torch.Generator().manual_seed(seed)
    n_items = train.shape[1]
    active = np.flatnonzero(np.asarray(train.sum(axis=0)).ravel() > 0)
    x_all = sp.csr_matrix(train[:, active], dtype=np.float32)
    x_all = x_all[np.diff(x_all.indptr) > 0]
    emb = torch.nn.Parameter(torch.randn(active.size, factors, generator=gen) / factors ** 0.5)
    opt = torch.optim.Adam([emb], lr=lr)
    for _ in range(epochs):
        order = torch.randperm(x_all.shape[0], generator=gen).numpy()
        for start in range(0, order.size, batch_size):
            x = torch.from_numpy(x_all[order[start:start + batch_size]].toarray())
            loss = nmse_loss(x, emb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = np.zeros((n_items, factors), dtype=np.float32)
    out[active] = torch.nn.functional.normalize(emb.detach(), dim=-1).numpy()
    return out
