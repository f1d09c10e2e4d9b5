"""EASE (Steck 2019, RecPack's EASE): a closed-form linear item-item autoencoder, the strongest shallow model."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from beeray.baselines.base import Baseline, Context, dense_columns


class EASE(Baseline):
    name = "ease"
    needs = "interactions"
    grid = {"l2": [10.0, 100.0, 500.0, 2000.0]}
    defaults = {"l2": 500.0}
    summary = "RecPack EASE, item-item weights in closed form with L2 penalty l2"

    def fit(self, ctx: Context) -> "EASE":
        from recpack.algorithms import EASE as RecPackEASE

        self.model = RecPackEASE(l2=float(self.params["l2"]))
        self.model.fit(ctx.train)
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        return dense_columns(self.model.predict(sp.csr_matrix(source)), candidates)
