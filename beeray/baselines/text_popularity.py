"""Popularity read from text: how popular an item's text says it will be, the same list for every user.

A ridge regression from a sentence encoder's frozen item embeddings to log(1 + training
interactions) of the items that have any. Ridge because the target is one number per item, the
embeddings are a few hundred dense features, and one regularisation strength (chosen on the
validation split) is all there is to tune: closed form, a fraction of a second on 10^4 items.
A trained encoder must beat this to show that it learned more than "what a popular text looks like".
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from beeray.baselines.base import Baseline, Context


def predicted_popularity(ctx: Context, alpha: float) -> np.ndarray:
    """Ridge prediction of log(1 + training interactions) for every item, from its text embedding."""
    from sklearn.linear_model import Ridge

    emb = ctx.item_embeddings()
    counts = ctx.train_counts
    warm = counts > 0
    model = Ridge(alpha=alpha).fit(emb[warm], np.log1p(counts[warm]))
    return model.predict(emb).astype(np.float64)


class TextPopularity(Baseline):
    name = "text-popularity"
    needs = "text"
    grid = {"alpha": [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0]}
    edges = {"alpha": "ridge strength 0.01 (least squares) to 10^5 (every item predicted the mean popularity)"}
    defaults = {"alpha": 10.0}
    summary = "ridge from frozen text embeddings to log(1 + training interactions); one list for all users"

    def fit(self, ctx: Context) -> "TextPopularity":
        self.popularity = predicted_popularity(ctx, float(self.params["alpha"]))
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.popularity[candidates], (source.shape[0], candidates.size)).copy()
