"""SANSA: installed by `make sansa` (and so by `make test` and CI), EASE when nothing is sparsified, and it learns.

No test here skips: `make test` and `make test-fast` install sansa first, so a missing or broken install
is a failure to see, not a skip to miss.
"""

from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from beeray.baselines import evaluate_baseline
from beeray.baselines.base import Context
from beeray.baselines.sansa import MISSING, SANSA, installed
from beeray.data.prepare import PrepareOptions, prepare_synthetic
from beeray.data.prepared import PreparedData
from beeray.evaluator import score_split


def test_sansa_is_installed():
    assert installed(), MISSING


def dense_interactions(n_users=300, n_items=40, p=0.2, seed=0) -> np.ndarray:
    """Every item bought by about 60 users, every pair of items by about 12: a well-conditioned Gram matrix."""
    return (np.random.default_rng(seed).random((n_users, n_items)) < p).astype(np.float32)


def ease_scores(X: np.ndarray, l2: float) -> np.ndarray:
    """EASE in closed form (Steck 2019), in float64: B = I - P diag(1/diag(P)), P = (X^T X + l2 I)^-1."""
    P = np.linalg.inv(X.T.astype(np.float64) @ X + l2 * np.eye(X.shape[1]))
    return X @ (np.eye(X.shape[1]) - P / np.diag(P))


def fit(X: np.ndarray, **params) -> SANSA:
    return SANSA(**params).fit(Context(data=None, split="val", train=sp.csr_matrix(X)))


def test_sansa_at_full_density_is_ease():
    # weight_matrix_density=1 keeps every entry of the Cholesky factor and of its inverse, so SANSA's
    # weights are EASE's exact inverse, -P diag(1/diag(P)): EASE's B with -1 instead of 0 on the diagonal.
    # Its scores are EASE's minus the user's own items, which the evaluator never ranks. sansa computes in
    # float32 (its approximate inverse refines to a residual near 1e-7); measured 4e-6 here against scores
    # up to 0.7, so 1e-4 allows for other BLAS and CHOLMOD builds while a real approximation fails it
    # (density 0.5 drops 20 of the factor's 820 entries and misses by 7e-3; 0.2 misses by 0.38).
    X = dense_interactions()
    items = np.arange(X.shape[1])
    for l2 in (10.0, 100.0):
        got = fit(X, l2=l2, weight_matrix_density=1.0).scores(sp.csr_matrix(X), items)
        want = ease_scores(X, l2) - X
        assert np.abs(got - want).max() < 1e-4, (l2, np.abs(got - want).max())
        # and so the ranking of every unseen item is EASE's
        unseen = X == 0
        for u in range(0, X.shape[0], 37):
            assert np.array_equal(np.argsort(-got[u][unseen[u]], kind="stable")[:5],
                                  np.argsort(-want[u][unseen[u]], kind="stable")[:5])


def test_sansa_density_sparsifies():
    # The density reaches sansa: at 1 its factor's inverse is a whole triangle of k(k+1)/2 entries, at 0.2
    # it keeps 0.2 k^2 of them, and its scores only approximate EASE's.
    X = dense_interactions()
    full, sparse = (fit(X, l2=10.0, weight_matrix_density=d) for d in (1.0, 0.2))
    k = X.shape[1]
    assert full.model.weights[0].nnz == k * (k + 1) // 2 and sparse.model.weights[0].nnz <= 0.2 * k * k
    items = np.arange(X.shape[1])
    miss = np.abs(sparse.scores(sp.csr_matrix(X), items) - (ease_scores(X, 10.0) - X)).max()
    assert miss > 1e-2, miss


def test_fit_leaves_the_garbage_collector_as_it_was():
    # fit freezes the process's objects while sansa runs its gc.collect() calls, and thaws them after
    assert gc.get_freeze_count() == 0
    fit(dense_interactions(), l2=10.0)
    assert gc.get_freeze_count() == 0


def test_importing_sansa_leaves_logging_alone():
    # sansa's import calls logging.basicConfig(level=INFO); beeray puts the root logger back. A fresh
    # interpreter, because the import (and its basicConfig) happens once per process.
    code = ("import logging; from beeray.baselines.sansa import installed; assert installed(); "
            "root = logging.getLogger(); print(len(root.handlers), root.level)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", str(__import__("logging").WARNING)], out.stdout + out.stderr


def test_sansa_ladder():
    assert SANSA.start() == {"l2": SANSA.defaults["l2"]} and set(SANSA.edges) == set(SANSA.grid)
    ladder = SANSA.grid["l2"]
    assert ladder == sorted(ladder) and SANSA.defaults["l2"] in ladder


@pytest.fixture(scope="module")
def shop_time(tmp_path_factory):
    """The synthetic shop on a time split (as in test_baselines.py): bundles, learnable from interactions."""
    out = tmp_path_factory.mktemp("shop_time") / "prepared"
    prepare_synthetic(out, options=PrepareOptions(split="time"))
    return PreparedData.load(out)


def test_sansa_learns_the_shop(shop_time):
    # Through the whole baseline path (validation search over l2 at the default density, refit, evaluator),
    # with test_baselines.py's bar for the collaborative baselines.
    class Random:
        def scores(self, source, candidates):
            return np.random.default_rng(0).random((source.shape[0], candidates.size))

    res = evaluate_baseline("sansa", shop_time, "test", log=lambda m: None, bootstrap=50)
    random_ndcg = score_split(Random(), shop_time.eval_split("test"), bootstrap=0)["ndcg@100"]
    popularity = evaluate_baseline("popularity", shop_time, "test", log=lambda m: None, bootstrap=50)["ndcg@100"]
    assert res["ndcg@100"] > 2 * random_ndcg and res["ndcg@100"] > popularity + 0.05, (res["ndcg@100"], popularity)
    assert res["params"]["weight_matrix_density"] == SANSA.defaults["weight_matrix_density"]
    assert len(res["search"]) > 1
