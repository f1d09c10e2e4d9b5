"""Randomised ranking cases for checking beeray's metrics against RecPack 0.3.6, the reference they follow.

`python -m tests.recpack_cases` (in the oracle environment: `make oracle`, RecPack on the path) records
RecPack's per-user values of every case into tests/data/recpack_cases.json, which the main suite checks
without RecPack (test_metrics_oracle.py); the oracle run recomputes them live.

A case is one split: users x candidates scores (ties, zeros and negatives), targets (one, several, more
than K, all candidates), candidates the user already has (excluded: never ranked; all of them for some
users, an empty list), users without targets (not scored), and fewer candidates than K.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from beeray.metrics import LARGEST_K, METRICS

RECORDED = Path(__file__).parent / "data" / "recpack_cases.json"


def generate(seed: int, n_cases: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n_cases):
        n_cand = int(rng.choice([3, 17, 60, 120, 260]))
        n_users = int(rng.integers(2, 25))
        if rng.random() < 0.5:  # coarse integer scores: many ties, zeros and negatives
            scores = rng.integers(-2, 4, size=(n_users, n_cand)).astype(np.float64)
        else:
            scores = np.round(rng.normal(size=(n_users, n_cand)), 3)
            scores[rng.random(scores.shape) < 0.3] = 0.0
        targets, excluded = [], []
        for u in range(n_users):
            kind = rng.integers(0, 6)
            n_t = {0: 0, 1: 1, 2: int(rng.integers(2, 10)), 3: min(n_cand, int(rng.integers(40, 200))),
                   4: n_cand, 5: int(rng.integers(1, n_cand + 1))}[int(kind)]
            n_t = min(n_t, n_cand)
            targets.append(sorted(rng.choice(n_cand, size=n_t, replace=False).tolist()))
            n_x = n_cand if rng.random() < 0.08 else int(rng.integers(0, max(1, n_cand // 4)))
            excluded.append(sorted(rng.choice(n_cand, size=n_x, replace=False).tolist()))
        cases.append({"scores": scores.tolist(), "targets": targets, "excluded": excluded})
    return cases


def reference_ranking(case: dict) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """(y_true, y_pred, users) as RecPack reads them: y_pred holds each user's top LARGEST_K as distinct
    positive values (best highest), ranked by score and then lower candidate, excluded candidates left out;
    users: the rows with a target."""
    scores = np.asarray(case["scores"])
    n_users, n_cand = scores.shape
    rows, cols, vals = [], [], []
    for u in range(n_users):
        allowed = np.setdiff1d(np.arange(n_cand), case["excluded"][u])
        order = allowed[np.lexsort((allowed, -scores[u, allowed]))][:LARGEST_K]
        rows += [u] * len(order)
        cols += order.tolist()
        vals += list(range(LARGEST_K + 1, LARGEST_K + 1 - len(order), -1))
    y_pred = sp.csr_matrix((vals, (rows, cols)), shape=(n_users, n_cand), dtype=np.float64)
    t_rows = [u for u, t in enumerate(case["targets"]) for _ in t]
    t_cols = [c for t in case["targets"] for c in t]
    y_true = sp.csr_matrix((np.ones(len(t_cols)), (t_rows, t_cols)), shape=(n_users, n_cand))
    users = np.flatnonzero(np.diff(y_true.indptr) > 0)
    return y_true, y_pred, users


def recpack_per_user(case: dict) -> dict[str, list[float]]:
    """RecPack's per-user value of every metric, for the users with a target (in row order)."""
    from recpack.metrics import NDCGK, CalibratedRecallK

    y_true, y_pred, users = reference_ranking(case)
    metrics = {"recall@20": CalibratedRecallK(20), "recall@50": CalibratedRecallK(50), "ndcg@100": NDCGK(100)}
    assert tuple(metrics) == METRICS
    out = {}
    for name, metric in metrics.items():
        metric.calculate(y_true, y_pred)
        res = metric.results
        value = dict(zip(res["user_id"].to_numpy(dtype=np.int64), res["score"].to_numpy(dtype=np.float64)))
        out[name] = [float(value[u]) for u in users]
    return out


class CaseScorer:
    """Scores of a case's users: each user's source holds one marker item past the candidates, which says
    which row of the case's scores is theirs, plus the candidates they already have (excluded)."""

    def __init__(self, scores: np.ndarray) -> None:
        self.table = scores

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        n_cand = self.table.shape[1]
        marker = [int(row.indices[row.indices >= n_cand][0]) - n_cand for row in sp.csr_matrix(source)]
        return self.table[marker][:, candidates]


def beeray_per_user(case: dict) -> dict[str, list[float]]:
    """score_split's per-user values of the case (ties to the lower candidate: ties_seed None)."""
    from beeray.data.prepared import EvalSplit, lists_to_csr
    from beeray.evaluator import score_split

    scores = np.asarray(case["scores"])
    n_users, n_cand = scores.shape
    source = lists_to_csr([x + [n_cand + u] for u, x in enumerate(case["excluded"])], n_cand + n_users)
    target = lists_to_csr(case["targets"], n_cand + n_users)
    split = EvalSplit("test", np.arange(n_users), source, target, np.arange(n_cand), 0)
    res = score_split(CaseScorer(scores), split, batch_users=5, bootstrap=0, keep_per_user=True, ties_seed=None)
    return {name: res["per_user"][name] for name in METRICS}


def record(path: Path = RECORDED, seed: int = 0, n_cases: int = 40) -> None:
    cases = generate(seed, n_cases)
    for case in cases:
        case["recpack"] = recpack_per_user(case)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"recpack": "0.3.6", "seed": seed, "cases": cases}, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    record()
