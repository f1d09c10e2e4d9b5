"""Item KNN, as RecPack 0.3.6 fits it: a user's score for an item sums its cosine similarity to the user's items.

Written out rather than imported (RecPack pins numpy 1 and is AGPL). implicit's CosineRecommender is not
the same model: it keeps each item's similarity to itself and normalises differently. The similarity is
scikit-learn's cosine_similarity of the binary item columns, self-similarity removed, each item's K most
similar kept, as in RecPack (tests/test_metrics_oracle.py compares the scores).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from beeray.baselines.base import Baseline, Context, binary


def top_k_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row's k largest stored values (ties: the lower column), the rest dropped.

    RecPack picks among values tied at the k-th place by np.argpartition's order; this rule is fixed.
    """
    m = sp.csr_matrix(m)
    m.eliminate_zeros()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, rows))  # by row, then value descending, then lower column
    rank = np.arange(m.nnz) - np.repeat(m.indptr[:-1], np.diff(m.indptr))  # place within the row
    keep = order[rank < k]
    return sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)


def item_cosine_knn(train: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """items x items: row i holds item i's k most cosine-similar other items."""
    from sklearn.metrics.pairwise import cosine_similarity

    sim = sp.csr_matrix(cosine_similarity(binary(train).T, dense_output=False))
    sim = sim - sp.diags(sim.diagonal(), format="csr")  # no self-similarity (setdiag would insert entries)
    return top_k_per_row(sim, k)


class ItemKNN(Baseline):
    name = "itemknn"
    needs = "interactions"
    grid = {"K": [25, 50, 100, 200, 400, 800, 1600, 3200]}
    edges = {"K": "25 to 3,200 neighbours: below, too few to reach every candidate; above, close to every warm item"}
    defaults = {"K": 200}
    summary = "ItemKNN (RecPack's), cosine similarity of item columns, K neighbours per item"

    def fit(self, ctx: Context) -> "ItemKNN":
        self.similarity = sp.csc_matrix(item_cosine_knn(ctx.train, int(self.params["K"])))
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        return np.asarray((binary(source) @ self.similarity[:, candidates]).toarray(), dtype=np.float64)
