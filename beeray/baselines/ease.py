"""EASE (Steck 2019, RecPack's EASE): a closed-form linear item-item autoencoder, the strongest shallow model."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from beeray.baselines.base import Baseline, Context, dense_columns


class EASE(Baseline):
    name = "ease"
    needs = "interactions"
    grid = {"l2": [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0]}
    edges = {"l2": "1 to 30,000: from almost no penalty to one that leaves little of the item-item weights"}
    defaults = {"l2": 300.0}
    summary = "RecPack EASE, item-item weights in closed form with L2 penalty l2"

    def fit(self, ctx: Context) -> "EASE":
        from recpack.algorithms import EASE as RecPackEASE

        self.model = RecPackEASE(l2=float(self.params["l2"]))
        self.model.fit(ctx.train)
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        return dense_columns(self.model.predict(sp.csr_matrix(source)), candidates)
