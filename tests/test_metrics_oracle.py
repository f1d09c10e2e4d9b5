"""beeray's metrics and its RecPack-derived baselines against RecPack 0.3.6 itself.

The main suite checks the recorded cases (tests/data/recpack_cases.json, RecPack's own per-user values)
without RecPack. The tests marked `oracle` run where RecPack is importable: `make test` runs them in a
second pytest with RecPack 0.3.6 put on the path by `pip install --no-deps --target .oracle` (its metrics
and algorithms import under numpy 2; the main environment never has it).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.sparse as sp

from beeray.metrics import METRICS, ranking_metrics
from tests.recpack_cases import RECORDED, beeray_per_user, generate, recpack_per_user

TOL = 1e-12  # the metrics are sums of at most 100 terms in [0, 1]: float64 rounding is ~1e-16


def _close(ours: dict, ref: dict) -> None:
    for name in METRICS:
        assert len(ours[name]) == len(ref[name]), name
        np.testing.assert_allclose(ours[name], ref[name], rtol=0, atol=TOL, err_msg=name)


def test_recorded_recpack_cases():
    recorded = json.loads(RECORDED.read_text())
    assert recorded["recpack"] == "0.3.6" and len(recorded["cases"]) >= 40
    users = 0
    for case in recorded["cases"]:
        _close(beeray_per_user(case), case["recpack"])
        users += len(case["recpack"]["recall@20"])
    assert users > 300


def test_recorded_cases_cover_the_edges():
    """The cases hold what the issue names: ties, zero and negative scores, more targets than K, single
    targets, fewer candidates than K, users whose every candidate is excluded, users without a target."""
    cases = json.loads(RECORDED.read_text())["cases"]
    scores = [np.asarray(c["scores"]) for c in cases]
    n_t = np.concatenate([[len(t) for t in c["targets"]] for c in cases])
    assert any((s == 0).any() and (s < 0).any() for s in scores)
    assert any(len(np.unique(s[0])) < s.shape[1] for s in scores)  # ties
    assert (n_t > 100).any() and (n_t == 1).any() and (n_t == 0).any()
    assert any(s.shape[1] < 20 for s in scores) and any(s.shape[1] > 100 for s in scores)
    assert any(len(x) == s.shape[1] for c, s in zip(cases, scores) for x in c["excluded"])


def test_calibrated_recall_and_ndcg_by_hand():
    # user 0: 3 targets, hits at ranks 1 and 3; user 1: 30 targets, 20 hits in the top 20
    hits = np.zeros((2, 100), dtype=bool)
    hits[0, [0, 2]] = True
    hits[1, :20] = True
    out = ranking_metrics(hits, np.array([3, 30]))
    disc = 1 / np.log2(np.arange(2, 102))
    assert out[0].tolist() == pytest.approx([2 / 3, 2 / 3, (disc[0] + disc[2]) / disc[:3].sum()], abs=1e-15)
    # calibrated: 20 hits of 30 targets is recall@20 = 1 (a plain recall would say 2/3)
    assert out[1].tolist() == pytest.approx([1.0, 20 / 30, disc[:20].sum() / disc[:30].sum()], abs=1e-15)


# ---------------------------------------------------------------- live RecPack (make test's oracle run)

@pytest.fixture(scope="module")
def recpack():
    if os.environ.get("BEERAY_ORACLE") == "1":  # the oracle run: RecPack must be there
        import recpack
        return recpack
    return pytest.importorskip("recpack", reason="RecPack 0.3.6 is only on the oracle run's path (make test)")


@pytest.mark.oracle
def test_live_recpack_metrics(recpack):
    for case in generate(seed=1, n_cases=120):
        _close(beeray_per_user(case), recpack_per_user(case))


@pytest.mark.oracle
def test_recorded_file_is_recpacks(recpack):
    for case in json.loads(RECORDED.read_text())["cases"]:
        _close(recpack_per_user(case), case["recpack"])


def _interactions(seed: int, users: int = 300, items: int = 80, density: float = 0.08) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    pop = rng.pareto(1.5, items) + 0.2  # popular and rare items, as real catalogs have
    x = rng.random((users, items)) < density * pop / pop.mean()
    x[:, -3:] = False  # items nobody has (cold): zero columns
    return sp.csr_matrix(x.astype(np.float32))


@pytest.mark.oracle
@pytest.mark.parametrize("l2", [1.0, 100.0, 3000.0])
def test_ease_scores_are_recpacks(recpack, l2):
    from recpack.algorithms import EASE as RecPackEASE

    from beeray.baselines.ease import ease_weights

    train, source = _interactions(0), _interactions(1, users=50)
    ref = RecPackEASE(l2=l2).fit(train).predict(sp.csr_matrix(source, dtype=np.float64)).toarray()
    ours = source.astype(np.float64) @ ease_weights(train, l2)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.oracle
@pytest.mark.parametrize("k", [5, 30, 200])
def test_itemknn_similarity_is_recpacks(recpack, k):
    """Equal wherever RecPack's choice is not a tie at the k-th place (there its argpartition picks)."""
    from recpack.algorithms import ItemKNN as RecPackItemKNN

    from beeray.baselines.itemknn import item_cosine_knn

    train = _interactions(2)
    ref = RecPackItemKNN(K=k).fit(train).similarity_matrix_.toarray()
    ours = item_cosine_knn(train, k).toarray()
    from sklearn.metrics.pairwise import cosine_similarity

    sim = cosine_similarity(train.T.astype(bool).astype(np.float32))
    np.fill_diagonal(sim, 0)
    kth = -np.sort(-sim, axis=1)[:, min(k, sim.shape[1]) - 1]
    untied = np.array([(row == t).sum() == 1 or t == 0 for row, t in zip(sim, kth)])
    assert untied.mean() > 0.5
    np.testing.assert_allclose(ours[untied], ref[untied], rtol=1e-6, atol=1e-7)
    # tied rows keep the same number of neighbours with the same values
    np.testing.assert_allclose(np.sort(ours[~untied], axis=1), np.sort(ref[~untied], axis=1), rtol=1e-6, atol=1e-7)
