"""What every baseline is: a scorer (beeray.evaluate.Scorer) that first learns from a training context.

The evaluator does not know which scorer it holds: a baseline ranks the split's candidates from the
users' source histories exactly as the text encoder does (same users, same candidates, the user's
own items excluded, the same metrics and bootstrap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import scipy.sparse as sp

from beeray.data.prepared import PreparedData


@dataclass
class Context:
    """What a baseline may learn from when it is evaluated on `split`.

    For the validation split it sees `train.parquet`; for the test split `train_full.parquet`
    (train + validation: hyperparameters are chosen on validation first, as `beeray tune` does).
    Text baselines also get item embeddings from a sentence encoder (`item_embeddings()`, encoded
    once and shared by all of them).
    """

    data: PreparedData
    split: str  # the split the fitted baseline will score: "val" | "test"
    train: sp.csr_matrix  # users x items, binary float32
    item_embeddings: Callable[[], np.ndarray] = field(repr=False, default=None)  # n_items x d, rows L2-normalised
    seed: int = 0

    @property
    def train_counts(self) -> np.ndarray:
        """Training interactions per item (0 for items the training file never mentions)."""
        return np.asarray(self.train.sum(axis=0)).ravel()


class Baseline:
    """A baseline: `fit(context)` once, then `scores(source, candidates)` for batches of users.

    Subclasses set `name`, `needs` ("interactions": scores come from the candidates' training
    interactions, so it cannot rank cold items; "text": scores come from item texts) and `grid`,
    the small validation search of their hyperparameters (`defaults` outside the search).
    """

    name: ClassVar[str] = ""
    needs: ClassVar[str] = "interactions"
    grid: ClassVar[dict[str, list]] = {}
    defaults: ClassVar[dict[str, Any]] = {}
    summary: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        self.params = {**self.defaults, **params}

    def fit(self, ctx: Context) -> "Baseline":
        raise NotImplementedError

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def param_grid(cls) -> list[dict[str, Any]]:
        """Every combination of the grid's values (one empty dict when nothing is searched)."""
        combos: list[dict[str, Any]] = [{}]
        for key, values in cls.grid.items():
            combos = [{**c, key: v} for c in combos for v in values]
        return combos


def dense_columns(scores: sp.spmatrix, candidates: np.ndarray) -> np.ndarray:
    """The candidates' columns of a (sparse) users x items score matrix, dense float64."""
    return np.asarray(sp.csr_matrix(scores)[:, candidates].todense(), dtype=np.float64)


__all__ = ["Baseline", "Context", "dense_columns"]
