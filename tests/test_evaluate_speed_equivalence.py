"""The evaluator's fast paths give exactly what the straightforward computation gives.

top_k_rows ranks long rows (a time split ranks the whole catalog) from group maxima instead of
partitioning whole rows, and the source mask finds x[:, candidates] by a position lookup instead
of scipy's column indexing. Both must reproduce the plain definitions bit for bit, ties included.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import beeray.evaluator as ev
from beeray.data.prepared import EvalSplit as Split
from beeray.evaluator import CBFScorer, candidate_positions, in_candidates, score_split, top_k_rows
from tests.test_evaluate import brute_force


def sorted_order(scores: np.ndarray, k: int) -> np.ndarray:
    """The definition: each row sorted by score descending, then by the lower column; first k."""
    k = min(k, scores.shape[1])
    return np.array([np.lexsort((np.arange(len(row)), -row))[:k] for row in scores],
                    dtype=np.int64).reshape(len(scores), k)


def tie_heavy(rng, n, m, kind):
    if kind == "normal":
        s = rng.normal(size=(n, m))
    elif kind == "few values":  # ties everywhere, also across the k-th place
        s = rng.integers(0, 4, size=(n, m)).astype(np.float64)
    elif kind == "relu":  # many exact zeros, as relu leaves them
        s = np.maximum(rng.normal(size=(n, m)) - 1.0, 0.0)
    elif kind == "rounded":
        s = np.round(rng.normal(size=(n, m)), 1)
    else:  # "constant": one tied value and a few above it; the grouped search cannot narrow these
        s = np.full((n, m), 1.5)
        s[:, rng.integers(0, m, 3)] = 2.0
    s[rng.random((n, m)) < 0.1] = -np.inf  # masked source items
    return s


@pytest.mark.parametrize("kind", ["normal", "few values", "relu", "rounded", "constant"])
def test_top_k_rows_equals_the_sorted_order(kind):
    rng = np.random.default_rng(len(kind))
    for m, k in [(1, 5), (7, 3), (50, 10), (333, 20), (1000, 100), (2500, 100)]:
        scores = tie_heavy(rng, 6, m, kind)
        want = sorted_order(scores, k)
        # groups=None is the automatic choice; the others force the grouped search on short rows,
        # with and without a remainder of columns past the last full round of groups
        for groups in (None, k, k + 1, 3 * k + 2, max(1, m // 3), m, m + 7):
            np.testing.assert_array_equal(top_k_rows(scores, k, groups=groups), want, err_msg=f"{m} {k} {groups}")
        np.testing.assert_array_equal(top_k_rows(np.asfortranarray(scores), k), want)


def test_top_k_rows_automatic_choice_is_grouped_on_long_rows(monkeypatch):
    rng = np.random.default_rng(7)
    scores = tie_heavy(rng, 5, 20_000, "rounded")  # rounded normals: ties across the 100th place
    ranked = []
    real = ev._top_k_dense
    monkeypatch.setattr(ev, "_top_k_dense", lambda s, k: ranked.append(len(s)) or real(s, k))
    np.testing.assert_array_equal(top_k_rows(scores, 100), sorted_order(scores, 100))
    assert ev._n_groups(20_000, 100) > 0 and not ranked  # no row fell back to the dense selection
    srt = np.sort(scores, axis=1)[:, ::-1]
    assert (srt[:, 99] == srt[:, 100]).all()  # every row has a tie straddling ranks 100 and 101


def test_in_candidates_equals_scipy_column_indexing():
    rng = np.random.default_rng(3)
    x = sp.random(30, 200, density=0.1, format="csr", random_state=4, dtype=np.float64)
    x.data[::7] = 0.0  # explicit zeros: the mask must skip them as .nonzero() does
    cand = rng.permutation(200)[:120]  # unsorted candidates
    pos = candidate_positions(cand, 200)
    r, c, v = in_candidates(x, cand, pos)
    own = x[:, cand].tocoo()
    assert sorted(zip(r, c, v)) == sorted(zip(own.row, own.col, own.data))
    r_nz, c_nz = x[:, cand].nonzero()
    assert sorted(zip(r[v != 0], c[v != 0])) == sorted(zip(r_nz, c_nz))
    assert candidate_positions(np.array([3, 5, 3]), 10) is None  # a repeated candidate: scipy's path
    r2, c2, v2 = in_candidates(x, np.array([3, 5, 3]))
    own2 = x[:, [3, 5, 3]].tocoo()
    assert sorted(zip(r2, c2, v2)) == sorted(zip(own2.row, own2.col, own2.data))


def many_candidate_split(n_users=40, n_items=12_000, seed=11):
    """A time split over 12,000 items (all candidates), histories that overlap the candidates, and
    item embeddings with many exact duplicates (so scores tie, also around rank 100)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_items // 3, 8))
    emb = base[rng.integers(0, len(base), n_items)]  # each vector about 3 times: exact ties
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    src = rng.random((n_users, n_items)) < 0.004
    tgt = rng.random((n_users, n_items)) < 0.004
    tgt[:, :200] |= rng.random((n_users, 200)) < 0.2  # some targets that the top 100 can reach
    src[0] = False  # a user without history
    split = Split("test", np.arange(n_users), sp.csr_matrix(src, dtype=np.float32),
                  sp.csr_matrix(tgt, dtype=np.float32), np.arange(n_items), 0)
    return emb.astype(np.float32), split


@pytest.mark.parametrize("exclude_source", [True, False])
def test_many_candidates_match_brute_force_and_the_dense_ranking(monkeypatch, exclude_source):
    emb, split = many_candidate_split()
    dense_rows = []
    real = ev._top_k_dense
    monkeypatch.setattr(ev, "_top_k_dense", lambda s, k: dense_rows.append(len(s)) or real(s, k))
    monkeypatch.setattr(ev, "MAX_BLOCK", 12_000 * 6)  # several scoring batches of 6 users
    res = score_split(CBFScorer(emb), split, batch_users=16, bootstrap=50, exclude_source=exclude_source)
    assert sum(dense_rows) < res["users"] // 2  # most rows took the grouped search

    ref, excluded = brute_force(emb.astype(np.float64), split.source, split.target, None,
                                exclude_source=exclude_source)
    assert res["users"] == len(ref) and res["excluded_users"] == excluded == 1
    for j, name in enumerate(["recall@20", "recall@50", "ndcg@100"]):
        assert res[name] == pytest.approx(ref[:, j].mean(), abs=1e-12), name
    assert res["ndcg@100"] > 0 and res["recall@50"] > 0

    # ties at rank 100 exist, so the tie rule is what decides the top 100 there
    x = split.source.toarray().astype(np.float64)
    s = np.maximum(x @ emb.astype(np.float64) @ emb.T.astype(np.float64) - x, 0.0)
    if exclude_source:
        s[x > 0] = -np.inf
    srt = np.sort(s, axis=1)[:, ::-1]
    assert (srt[:, 99] == srt[:, 100]).sum() >= 5

    # the whole result (per-user values through the bootstrap, popularity columns) equals what the
    # dense ranking gives on the same score blocks, with RecPack called on other batches of users
    monkeypatch.setattr(ev, "_n_groups", lambda n_cols, k: 0)
    assert score_split(CBFScorer(emb), split, batch_users=1024, bootstrap=50, exclude_source=exclude_source) == res


def test_explicit_zero_in_a_history_is_no_interaction():
    """A stored 0 in a source row is no interaction: it is not masked (as x[:, cand].nonzero() had it)."""
    from tests.test_evaluate import TIME_EMB, TIME_TARGET, make_split

    plain = make_split([[0], [0]], TIME_TARGET, 33, None)
    source = sp.csr_matrix((np.array([1.0, 1.0, 0.0], dtype=np.float32), np.array([0, 0, 5]), np.array([0, 1, 3])),
                           shape=(2, 33))
    stored_zero = Split("test", plain.user, source, plain.target, plain.candidates, 0)
    assert score_split(CBFScorer(TIME_EMB), stored_zero, bootstrap=10) == score_split(CBFScorer(TIME_EMB), plain,
                                                                                       bootstrap=10)
