"""The popularity oracle: candidates ranked by how often they occur in the split's own targets.

It peeks at the answers, so it is a reading aid, never a method: it shows how far popularity alone
can go on this split, and every table prints it on a separate, labelled line. It is not in the
baseline registry, so it can be neither selected as a model nor used for tuning.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class PopularityOracle:
    """A scorer: each candidate's number of target interactions in the split (ties by item index)."""

    def __init__(self, target: sp.csr_matrix) -> None:
        binary = sp.csr_matrix(target, copy=True)
        binary.data[:] = 1.0
        self.counts = np.asarray(binary.sum(axis=0), dtype=np.float64).ravel()

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts[candidates], (source.shape[0], candidates.size)).copy()
