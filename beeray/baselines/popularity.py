"""Popularity: every user gets the candidates ranked by their number of training interactions."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from beeray.baselines.base import Baseline, Context


class Popularity(Baseline):
    name = "popularity"
    needs = "interactions"
    summary = "candidates ranked by training interactions, the same list for every user"

    def fit(self, ctx: Context) -> "Popularity":
        self.counts = ctx.train_counts.astype(np.float64)
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts[candidates], (source.shape[0], candidates.size)).copy()
