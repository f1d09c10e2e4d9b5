"""ELSA (Vančura et al., RecSys 2022), trained by the authors' package: free item embeddings, no encoder.

Training is `elsarec` 0.1.4 (github.com/recombee/ELSA, elsa/elsa.py; pinned in pyproject.toml):
item embeddings A (n_items x factors) start Xavier-uniform (line 31), the optimizer is NAdam (line
35; lr 0.1 by default, line 17), and `fit` (line 118) steps on each batch of user rows x with
NMSELoss (lines 455-461)

    mean over users and items of (normalize(x Â Âᵀ − x) − normalize(x))²,   Â: rows of A L2-normalised,

with no ReLU (forward, lines 204-207): the ReLU belongs to scoring. Before training, each user's row
is L1-normalised as in the beeFormer reference's ELSA (github.com/recombee/beeformer, models.py
lines 162-163, SparseKerasELSA.train_step, whose loss is the same mean NMSE: utils.py lines 10-13).
The loss is invariant to a positive scale of each row, so with or without it the objective is the
same. (The paper's MovieLens reproduction, branch reproduce_movielens of the ELSA repository, is
another model: a He-normal start, a ReLU in the trained forward and a cosine loss, elsa.py 9, 41, 71.)

Scoring is beeray's, exactly like a text encoder's embeddings: relu(x Â Âᵀ − x) (beeray.evaluator.
CBFScorer). It is the collaborative twin of the CBF path, and the CF space Heater maps texts into.

Cost: an epoch is ~3 x n_users x n_items x factors flops plus one NAdam step over A per batch: tens
of seconds for 10^4 users and 10^4 items at 256 factors on 2 CPU cores, so a fit of the authors' 5
epochs takes minutes.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from beeray.baselines.base import Baseline, Context
from beeray.evaluator import CBFScorer


class ELSA(Baseline):
    name = "elsa"
    needs = "interactions"
    # Ladders searched by coordinate ascent from `defaults`, which are the authors' usage example
    # (elsarec README lines 34-41: 256 factors, 5 epochs, batches of 128 users) with elsarec's lr 0.1
    # (elsa/elsa.py line 17). Epochs and batch size are not searched.
    grid = {"factors": [16, 32, 64, 128, 256, 512, 1024],
            "lr": [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]}
    edges: ClassVar[dict[str, str]] = {
        "factors": "1024 is past the paper's largest (800, MovieLens-20M) and the dearest epoch on 2 CPU cores",
        "lr": "1e-4 leaves the Xavier start undertrained in 5 epochs; past 0.1 NAdam's steps dwarf the weights",
    }
    defaults = {"factors": 256, "lr": 0.1, "epochs": 5, "batch_size": 128}
    summary = "the authors' ELSA (elsarec: NAdam on the NMSE of x Â Âᵀ − x), scored like CBF"

    def fit(self, ctx: Context) -> "ELSA":
        self.embeddings = train_elsa(ctx.train, int(self.params["factors"]), lr=float(self.params["lr"]),
                                     epochs=int(self.params["epochs"]), batch_size=int(self.params["batch_size"]),
                                     seed=ctx.seed)
        self.scorer = CBFScorer(self.embeddings)
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        return self.scorer.scores(source, candidates)


def training_rows(train: sp.csr_matrix) -> sp.csr_matrix:
    """The users' rows ELSA learns from: L1-normalised (beeformer models.py:162-163), empty rows dropped.

    An empty row adds nothing to the loss (its prediction and target are both zero): the authors'
    code would only count it in the mean's denominator, a scale NAdam's normalised steps all but ignore.
    """
    x = sp.csr_matrix(train, dtype=np.float32)
    x = x[np.diff(x.indptr) > 0]
    return sp.csr_matrix(sp.diags(1.0 / np.asarray(abs(x).sum(axis=1)).ravel()) @ x, dtype=np.float32)


def new_model(n_items: int, factors: int, *, lr: float, seed: int):
    """The authors' model on the CPU: Xavier-uniform A and NAdam(lr), its start drawn from `seed`.

    elsarec draws from torch's global generator; forking it keeps the caller's stream untouched.
    """
    from elsa import ELSA as AuthorsELSA  # elsarec's module

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AuthorsELSA(n_items, factors, device=torch.device("cpu"), lr=lr)


def train_elsa(train: sp.csr_matrix, factors: int, *, lr: float, epochs: int, batch_size: int,
               seed: int = 0) -> np.ndarray:
    """Item embeddings (n_items x factors, rows L2-normalised) of the authors' ELSA trained on `train`.

    Every item is a column of the authors' loss, so items without training interactions are trained
    too (away from the users' histories); deterministic for a seed on the CPU.
    """
    model = new_model(train.shape[1], factors, lr=lr, seed=seed)
    # The batches are shuffled each epoch, as the paper's runs do (reproduce_movielens utils.py
    # 366-368; elsarec's `fit` keeps the matrix's order by default), from the seeded generator.
    # elsarec builds each row as a torch sparse tensor from scipy's valid COO: invariant checks are
    # opted out explicitly (torch warns when they are off implicitly).
    with torch.random.fork_rng(devices=[]), torch.sparse.check_sparse_tensor_invariants(enable=False):
        torch.manual_seed(seed + 1)
        model.fit(training_rows(train), epochs=epochs, batch_size=batch_size, shuffle=True, verbose=False)
    return torch.nn.functional.normalize(model.get_items_embeddings(), dim=-1).numpy()
