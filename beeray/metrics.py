"""beeray's metrics: their names, defined once for every layer, and how they are computed.

A bottom module (it imports only numpy): the config validates a search's metric against these names,
the evaluator computes them here, the reports and trackers print and log them.

The definitions are RecPack's (0.3.6), the ones the beeFormer paper reports, written out here because
RecPack pins numpy 1 and is AGPL; tests/test_metrics_oracle.py checks them against RecPack itself.

- recall@K is the *calibrated* recall (RecPack's CalibratedRecallK): hits in the top K divided by
  min(K, the user's number of targets), so a user with more targets than K can still reach 1. A plain
  recall (hits / targets) would read lower wherever users have more than K targets.
- ndcg@K (RecPack's NDCGK): binary gains, DCG = sum over hits at 1-based rank r of 1 / log2(r + 1),
  divided by the ideal DCG of min(K, targets) hits at the top.
"""

from __future__ import annotations

import numpy as np

# (name, kind, K) of every reported metric, in the order of every table
_SPEC: tuple[tuple[str, str, int], ...] = (("recall@20", "recall", 20), ("recall@50", "recall", 50),
                                           ("ndcg@100", "ndcg", 100))
METRICS: tuple[str, ...] = tuple(name for name, _, _ in _SPEC)
VAL_METRICS: tuple[str, ...] = tuple(f"val_{m}" for m in METRICS)  # what training reports per epoch
# What `keep: best` and `patience` in `beeray train` select epochs by (higher is better): NDCG@100 weighs
# the whole top 100, so it moves with small gains that the recalls' cut-offs can miss.
SELECTION_METRIC = "val_ndcg@100"
STRATA = ("head", "middle", "tail")  # thirds of the candidates' target interactions, most popular first
POPULARITY_METRICS: tuple[str, ...] = (*(f"recall@20_{s}" for s in STRATA), "recall@20_micro",
                                       "popularity_percentile@20")
LARGEST_K: int = max(k for _, _, k in _SPEC)  # nothing below this rank can change a result
DESCRIPTION = ("recall@K: calibrated recall (hits in the top K / min(K, targets), RecPack's CalibratedRecallK); "
               "ndcg@K: binary-gain NDCG with the ideal DCG over min(K, targets) (RecPack's NDCGK)")


def ranking_metrics(hits: np.ndarray, n_targets: np.ndarray) -> np.ndarray:
    """Per user, every metric of METRICS (users x len(METRICS), float64) from their ranked lists.

    hits: users x L booleans, True where the item at 0-based rank j is one of the user's targets
    (L may be shorter than a metric's K: a list cannot be longer than the candidates). n_targets: each
    user's number of distinct targets among the candidates; a user with none scores 0 everywhere, as in
    RecPack (which drops such users before averaging: the evaluator never passes them).
    """
    hits = np.asarray(hits, dtype=bool)
    n_targets = np.asarray(n_targets, dtype=np.int64)
    if hits.ndim != 2 or n_targets.shape != (hits.shape[0],):
        raise ValueError(f"hits must be users x ranks and n_targets one count per user, got {hits.shape} "
                         f"and {n_targets.shape}")
    discount = 1.0 / np.log2(np.arange(2, LARGEST_K + 2, dtype=np.float64))  # rank r (1-based): 1/log2(r+1)
    ideal = np.concatenate([[1.0], np.cumsum(discount)])  # ideal DCG of n hits; [0] = 1 keeps 0/1 = 0
    out = np.zeros((hits.shape[0], len(_SPEC)))
    for j, (_, kind, k) in enumerate(_SPEC):
        top = hits[:, :k]
        best = np.minimum(n_targets, k)
        if kind == "recall":
            out[:, j] = np.divide(top.sum(axis=1), best, out=np.zeros(len(best)), where=best > 0)
        else:
            out[:, j] = (top * discount[:top.shape[1]]).sum(axis=1) / ideal[best]
    return out
