"""ALS matrix factorisation for implicit feedback (Hu, Koren, Volinsky 2008; the `implicit` package).

A user in a split is represented by their source history: their factors are solved from it
against the trained item factors (one least-squares solve per user), so users need not have been
in the training data.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from beeray.baselines.base import Baseline, Context


class ALS(Baseline):
    name = "als"
    needs = "interactions"
    grid = {"factors": [16, 32, 64, 128, 256, 512, 1024], "regularization": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0],
            "alpha": [0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0]}
    edges = {"factors": "over 1,024 factors a fit outgrows the 2-core CPU this page runs on",
             "regularization": "0.001 to 100: a factor of 10^5 around implicit's default 0.01",
             "alpha": "confidence 1 + alpha x from 0.3 (nearly unweighted) to 300"}
    defaults = {"factors": 64, "regularization": 0.01, "alpha": 1.0, "iterations": 15}
    summary = "implicit's AlternatingLeastSquares (confidence 1 + alpha x), user factors solved from the history"

    def fit(self, ctx: Context) -> "ALS":
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        # implicit's own threads do the work; BLAS threads on top of them only oversubscribe the cores.
        with threadpool_limits(1, "blas"):
            self.model = AlternatingLeastSquares(
                factors=int(self.params["factors"]), regularization=float(self.params["regularization"]),
                alpha=float(self.params["alpha"]), iterations=int(self.params["iterations"]), random_state=ctx.seed)
            self.model.fit(sp.csr_matrix(ctx.train, dtype=np.float32), show_progress=False)
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        source = sp.csr_matrix(source, dtype=np.float32)
        users = self.model.recalculate_user(np.arange(source.shape[0]), source)
        return np.asarray(users, dtype=np.float64) @ self.model.item_factors[candidates].astype(np.float64).T
