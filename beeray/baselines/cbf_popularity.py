"""CBF + popularity: the text encoder's CBF score plus lambda times the standardised predicted popularity.

The cheapest competitor a trained encoder must beat, and a sensible production default for an
untrained one. The CBF score relu(x Â Â_candᵀ) is a sum over the user's history, so it is divided
by the history's length (a per-user constant: it does not change the CBF ranking) to put every
user's scores on one scale before adding lambda x the candidates' z-scored predicted popularity
(beeray.baselines.text_popularity). lambda = 0 is plain CBF.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from beeray.baselines.base import Baseline, Context
from beeray.baselines.text_popularity import predicted_popularity
from beeray.evaluator import CBFScorer


class CBFPopularity(Baseline):
    name = "cbf+popularity"
    needs = "text"
    grid = {"lam": [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
            "alpha": [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0]}
    edges = {"lam": "0 is plain CBF (no popularity); at 10 the popularity term ranks nearly alone",
             "alpha": "ridge strength 0.01 (least squares) to 10^5 (every item predicted the mean popularity)"}
    defaults = {"lam": 0.1, "alpha": 10.0}
    summary = "CBF score / history length + lambda x z-scored text popularity"

    def fit(self, ctx: Context) -> "CBFPopularity":
        self.cbf = CBFScorer(ctx.item_embeddings())
        self.popularity = predicted_popularity(ctx, float(self.params["alpha"]))
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        cbf = self.cbf.scores(source, candidates)
        cbf /= np.maximum(np.diff(sp.csr_matrix(source).indptr), 1)[:, None]
        pop = self.popularity[candidates]
        z = (pop - pop.mean()) / (pop.std() or 1.0)
        return cbf + float(self.params["lam"]) * z[None, :]
