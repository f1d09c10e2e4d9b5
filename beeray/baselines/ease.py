"""EASE (Steck 2019), as RecPack 0.3.6 fits it: a closed-form linear item-item autoencoder.

Written out rather than imported: RecPack pins numpy 1 (its EASE calls np.product, gone in numpy 2) and is
AGPL. The closed form is three lines; it follows RecPack's arithmetic step for step, float32 Gram matrix
and inverse included, so its scores are RecPack's (tests/test_metrics_oracle.py compares them).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from beeray.baselines.base import Baseline, Context, binary


def ease_weights(train: sp.csr_matrix, l2: float) -> np.ndarray:
    """B = I − P·diag(1/diag(P)) with P = (XᵀX + l2·I)⁻¹ and a zero diagonal (Steck 2019, eq. 21).

    X is the binary float32 interaction matrix and P is inverted in float32, as RecPack does; B is float64.
    """
    x = binary(train)
    gram = (x.T @ x).toarray() + l2 * np.identity(x.shape[1], dtype=np.float32)
    p = np.linalg.inv(gram)
    b = np.identity(x.shape[1]) - p * (1.0 / np.diag(p))[None, :]  # = P @ diag(1/diag(P)), without the product
    b[np.diag_indices(b.shape[0])] = 0.0
    return b


class EASE(Baseline):
    name = "ease"
    needs = "interactions"
    grid = {"l2": [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0]}
    edges = {"l2": "1 to 30,000: from almost no penalty to one that leaves little of the item-item weights"}
    defaults = {"l2": 300.0}
    summary = "EASE (RecPack's closed form), item-item weights with L2 penalty l2"

    def fit(self, ctx: Context) -> "EASE":
        self.weights = ease_weights(ctx.train, float(self.params["l2"]))
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        return np.asarray(binary(source) @ self.weights[:, candidates], dtype=np.float64)
