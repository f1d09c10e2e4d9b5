"""What every baseline is: a scorer (beeray.evaluator.Scorer) that first learns from a training context.

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
    # Only while fitting for the validation search: scores a (partly trained) baseline on the validation
    # split (NDCG@100). A baseline trained in epochs (heater) uses it to keep its best epoch, as its
    # authors do; everything else ignores it.
    validate: Callable[["Baseline"], float] | None = field(repr=False, default=None)

    @property
    def train_counts(self) -> np.ndarray:
        """Training interactions per item (0 for items the training file never mentions)."""
        return np.asarray(self.train.sum(axis=0)).ravel()


@dataclass(frozen=True)
class Fitted:
    """What a fit chose beyond the settings it was given: what the test refit and the results take."""

    params: dict[str, Any]  # every setting of the fitted model: the given ones and any the fit chose
    edges: dict[str, str] = field(default_factory=dict)  # choices on an end of what the fit could choose
    record: dict[str, Any] = field(default_factory=dict)  # how it chose (heater: best epoch, its curve)


class Baseline:
    """A baseline: `fit(context)` once, then `scores(source, candidates)` for batches of users, and
    `fitted()` for what fitting chose (most baselines choose nothing: their params as given).

    Subclasses set `name`, `needs` ("interactions": scores come from the candidates' training
    interactions, so it cannot rank cold items; "text": scores come from item texts), `grid`, one
    ladder per searched hyperparameter (its values in order, searched on validation by
    `beeray.baselines.search`, starting from `defaults`), and `edges`: per hyperparameter, why its
    ladder ends where it does (shown when the choice lands on an end).
    """

    name: ClassVar[str] = ""
    needs: ClassVar[str] = "interactions"
    grid: ClassVar[dict[str, list]] = {}
    edges: ClassVar[dict[str, str]] = {}
    defaults: ClassVar[dict[str, Any]] = {}
    summary: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        self.params = {**self.defaults, **params}

    def fit(self, ctx: Context) -> "Baseline":
        raise NotImplementedError

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fitted(self) -> Fitted:
        """The settings a refit takes to train this model again, and what fitting chose on its own
        (a baseline trained in epochs keeps its best validation epoch: heater)."""
        return Fitted(params=dict(self.params))

    @classmethod
    def start(cls) -> dict[str, Any]:
        """Where the search starts: each ladder at its default (the ladder's middle when it has none)."""
        return {k: cls.defaults[k] if cls.defaults.get(k) in v else v[len(v) // 2] for k, v in cls.grid.items()}


def dense_columns(scores: sp.spmatrix, candidates: np.ndarray) -> np.ndarray:
    """The candidates' columns of a (sparse) users x items score matrix, dense float64."""
    return np.asarray(sp.csr_matrix(scores)[:, candidates].todense(), dtype=np.float64)


__all__ = ["Baseline", "Context", "Fitted", "dense_columns"]


def binary(x: sp.spmatrix) -> sp.csr_matrix:
    """x as a binary csr matrix of its dtype (float32 for ctx.train): every stored nonzero becomes 1."""
    out = sp.csr_matrix(x, copy=True)
    out.eliminate_zeros()
    out.data = np.ones_like(out.data)
    return out
