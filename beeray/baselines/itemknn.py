"""Item KNN (RecPack's ItemKNN): a user's score for an item sums its cosine similarity to the user's items."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from beeray.baselines.base import Baseline, Context, dense_columns


class ItemKNN(Baseline):
    name = "itemknn"
    needs = "interactions"
    grid = {"K": [25, 50, 100, 200, 400, 800, 1600, 3200]}
    edges = {"K": "25 to 3,200 neighbours: below, too few to reach every candidate; above, close to every warm item"}
    defaults = {"K": 200, "similarity": "cosine", "normalize_sim": False}
    summary = "RecPack ItemKNN, cosine similarity of item columns, K neighbours per item"

    def fit(self, ctx: Context) -> "ItemKNN":
        from recpack.algorithms import ItemKNN as RecPackItemKNN

        self.model = RecPackItemKNN(K=int(self.params["K"]), similarity=self.params["similarity"],
                                    normalize_sim=bool(self.params["normalize_sim"]))
        self.model.fit(ctx.train)
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        return dense_columns(self.model.predict(sp.csr_matrix(source)), candidates)
