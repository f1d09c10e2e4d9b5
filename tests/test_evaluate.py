"""CBF evaluation: hand-computed cases, a brute-force reference, bootstrap, and a real encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from beeray.data.prepared import EvalSplit as Split
from beeray.data.prepared import PreparedData
from beeray.evaluator import CBFScorer, bootstrap_stderr, cbf_scores, evaluate, needed_items, score_split, top_k_rows

LOG2_3 = np.log2(3.0)


def make_split(source_rows, target_rows, n_items, candidates, excluded=0) -> Split:
    def csr(rows):
        m = sp.lil_matrix((len(rows), n_items), dtype=np.float32)
        for u, items in enumerate(rows):
            for i in items:
                m[u, i] = 1.0
        return m.tocsr()

    cand = np.arange(n_items) if candidates is None else np.asarray(candidates)  # None: a time split
    return Split("test", np.arange(len(source_rows)), csr(source_rows), csr(target_rows), cand, excluded)


# ---------------------------------------------------------------- hand-computed cases

# Item split: items 0, 1 are warm (sources), 2, 3, 4 are the cold candidates.
HAND_EMB = np.array([
    [1.0, 0.0],    # 0
    [0.0, 1.0],    # 1
    [0.6, 0.8],    # 2
    [0.8, 0.6],    # 3
    [-0.6, 0.8],   # 4
])
HAND_CAND = [2, 3, 4]
HAND_SOURCE = [[0], [0, 1], [1], [], [0]]
HAND_TARGET = [[2], [3, 4], [3], [2], [1]]
# User A = row 0: x Â = (1, 0); scores over (2, 3, 4) = (0.6, 0.8, relu(-0.6) = 0) -> ranking 3, 2, 4.
#   target {2} at rank 2: recall@20 = recall@50 = 1/min(K, 1) = 1, NDCG = (1/log2 3) / 1 = 0.6309.
# User B = row 1: x Â = (1, 1); scores = (1.4, 1.4, 0.2): the tie 2/3 goes to the lower index -> 2, 3, 4.
#   target {3, 4} at ranks 2, 3: recall = 2/2 = 1, DCG = 1/log2 3 + 1/log2 4, IDCG = 1 + 1/log2 3 -> 0.6934.
# User C = row 2: x Â = (0, 1); scores = (0.8, 0.6, 0.8): tie 2/4 -> 2, 4, 3. target {3} at rank 3:
#   recall = 1, NDCG = 1/log2 4 = 0.5.
# Row 3 has no source, row 4 has no target among the candidates: both excluded (plus 2 from the split).
HAND_NDCG = [1 / LOG2_3, (1 / LOG2_3 + 0.5) / (1 + 1 / LOG2_3), 0.5]


def test_hand_case_scores_and_ranking():
    split = make_split(HAND_SOURCE, HAND_TARGET, 5, HAND_CAND)
    scores = cbf_scores(HAND_EMB, split.source[:3], np.array(HAND_CAND))
    np.testing.assert_allclose(scores, [[0.6, 0.8, 0.0], [1.4, 1.4, 0.2], [0.8, 0.6, 0.8]], atol=1e-12)
    ranked = np.array(HAND_CAND)[top_k_rows(scores, 100)]
    np.testing.assert_array_equal(ranked, [[3, 2, 4], [2, 3, 4], [2, 4, 3]])


def test_hand_case_metrics():
    split = make_split(HAND_SOURCE, HAND_TARGET, 5, HAND_CAND, excluded=2)
    res = score_split(CBFScorer(HAND_EMB), split, batch_users=2, bootstrap=50, ties_seed=None)  # ties by index, as worked out
    assert res["users"] == 3
    assert res["excluded_users"] == 4
    assert res["recall@20"] == pytest.approx(1.0, abs=1e-12)
    assert res["recall@50"] == pytest.approx(1.0, abs=1e-12)
    assert res["ndcg@100"] == pytest.approx(np.mean(HAND_NDCG), abs=1e-12)
    assert res["stderr"]["recall@20"] < 1e-12  # every user has recall 1
    assert res["stderr"]["ndcg@100"] > 0


# Time split over 33 items, all of them candidates: item 0 = (1, 0); items 1..30 are identical
# "fillers" = (1, 0); item 31 = (0.6, 0.8); item 32 = (0, 1).
TIME_EMB = np.array([[1.0, 0.0]] * 31 + [[0.6, 0.8], [0.0, 1.0]])
# User A: source {0}, target {5, 31, 32}. x Â = (1, 0); item 0 is its own source -> -inf; fillers
#   score 1 (tied, ranked by index: item k at rank k), item 31 scores 0.6 (rank 31), item 32 scores 0 (rank 32).
#   recall@20 = 1 hit / min(20, 3) = 1/3; recall@50 = 3/3 = 1;
#   NDCG = (1/log2 6 + 1/log2 32 + 1/log2 33) / (1 + 1/log2 3 + 1/log2 4).
# User B: source {0, 5}, target {32}. x Â = (2, 0); items 0 and 5 are masked (unmasked, item 5 would
#   score relu(2 - 1) = 1 and rank 31); the 29 other fillers score 2 (ranks 1..29), item 31 1.2 (rank 30),
#   item 32 0 (rank 31): recall@20 = 0, recall@50 = 1, NDCG = 1/log2 32 = 0.2.
# Without the mask (exclude_source=False) the source items come back: for A item 0 scores relu(1 - 1) = 0
#   and ties with item 32, winning on index -> item 32 drops to rank 33: NDCG_A' = (1/log2 6 + 1/log2 32
#   + 1/log2 34) / IDCG; for B items 0 and 5 score relu(2 - 1) = 1 and take ranks 31, 32 -> NDCG_B' = 1/log2 34.
TIME_SOURCE = [[0], [0, 5]]
TIME_TARGET = [[5, 31, 32], [32]]
TIME_A_NDCG = (1 / np.log2(6) + 1 / np.log2(32) + 1 / np.log2(33)) / (1 + 1 / LOG2_3 + 0.5)


def test_hand_time_split_recall_and_masking():
    split = make_split(TIME_SOURCE, TIME_TARGET, 33, None)
    res = score_split(CBFScorer(TIME_EMB), split, bootstrap=10, ties_seed=None)  # ties by index, as worked out
    assert res["users"] == 2 and res["excluded_users"] == 0
    assert res["recall@20"] == pytest.approx((1 / 3 + 0) / 2, abs=1e-12)
    assert res["recall@50"] == pytest.approx(1.0, abs=1e-12)
    assert res["ndcg@100"] == pytest.approx((TIME_A_NDCG + 0.2) / 2, abs=1e-12)

    unmasked = score_split(CBFScorer(TIME_EMB), split, bootstrap=10, exclude_source=False, ties_seed=None)
    a_unmasked = (1 / np.log2(6) + 1 / np.log2(32) + 1 / np.log2(34)) / (1 + 1 / LOG2_3 + 0.5)
    assert unmasked["ndcg@100"] == pytest.approx((a_unmasked + 1 / np.log2(34)) / 2, abs=1e-12)


def test_needed_items():
    split = make_split(HAND_SOURCE, HAND_TARGET, 6, HAND_CAND)
    np.testing.assert_array_equal(needed_items(split), [0, 1, 2, 3, 4])  # item 5 is never read
    np.testing.assert_array_equal(needed_items(make_split([[1]], [[0]], 4, None)), [0, 1, 2, 3])


def test_top_k_rows_deterministic_ties():
    scores = np.array([[0.0, 1.0, 0.0, 1.0, 0.5, 0.0], [3.0, 3.0, 3.0, 3.0, 3.0, 3.0]])
    np.testing.assert_array_equal(top_k_rows(scores, 4), [[1, 3, 4, 0], [0, 1, 2, 3]])
    np.testing.assert_array_equal(top_k_rows(scores, 10).shape, (2, 6))


# ---------------------------------------------------------------- brute-force reference


def brute_force(emb, source, target, cand, exclude_source=True, ties_seed=0):
    """Dense per-user metrics straight from the formulas (no batching, no RecPack). Ties: the candidate
    that comes first in the seeded shuffle default_rng(ties_seed).permutation ranks higher (None: by index)."""
    X, T = source.toarray(), target.toarray()
    cand = np.arange(X.shape[1]) if cand is None else np.asarray(cand)
    # position of each candidate in the shuffled order
    tie_key = (np.arange(len(cand)) if ties_seed is None
               else np.argsort(np.random.default_rng(ties_seed).permutation(len(cand))))
    S = np.maximum(X @ emb @ emb.T - X, 0.0)[:, cand]
    if exclude_source:
        S[X[:, cand] > 0] = -np.inf
    rows, excluded = [], 0
    for u in range(X.shape[0]):
        t = T[u, cand] > 0
        if X[u].sum() == 0 or t.sum() == 0:
            excluded += 1
            continue
        order = np.lexsort((tie_key, -S[u]))  # score desc, then earlier in the shuffled order
        order = order[np.isfinite(S[u, order])]
        rel = t[order]
        n_t = t.sum()
        r20 = rel[:20].sum() / min(20, n_t)
        r50 = rel[:50].sum() / min(50, n_t)
        dcg = (rel[:100] / np.log2(np.arange(2, min(100, len(rel)) + 2))).sum()
        idcg = (1 / np.log2(np.arange(2, min(100, n_t) + 2))).sum()
        rows.append([r20, r50, dcg / idcg])
    return np.array(rows), excluded


def random_split(n_users, n_items, n_cand, seed, density=0.15):
    rng = np.random.default_rng(seed)
    cand = None if n_cand is None else np.sort(rng.choice(n_items, n_cand, replace=False))
    src_mask = rng.random((n_users, n_items)) < density
    tgt_mask = rng.random((n_users, n_items)) < density
    if cand is not None:  # item split: sources never touch cold items
        src_mask[:, cand] = False
    src_mask[rng.random(n_users) < 0.05] = False  # some users without history
    tgt_mask[rng.random(n_users) < 0.05] = False  # some without target
    emb = rng.normal(size=(n_items, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    split = Split("val", np.arange(n_users), sp.csr_matrix(src_mask, dtype=np.float32),
                  sp.csr_matrix(tgt_mask, dtype=np.float32), np.arange(n_items) if cand is None else cand, 3)
    return emb.astype(np.float32), split


@pytest.mark.parametrize("n_users,n_items,n_cand", [(200, 60, 25), (200, 60, None), (60, 250, None)])
def test_matches_brute_force(n_users, n_items, n_cand):
    emb, split = random_split(n_users, n_items, n_cand, seed=n_items + (n_cand or 0))
    res = score_split(CBFScorer(emb), split, batch_users=7, bootstrap=20)
    ref, excluded = brute_force(emb.astype(np.float64), split.source, split.target, split.candidates)
    assert excluded > 0
    assert res["users"] == len(ref)
    assert res["excluded_users"] == excluded + 3
    for j, name in enumerate(["recall@20", "recall@50", "ndcg@100"]):
        assert res[name] == pytest.approx(ref[:, j].mean(), abs=1e-12), name
    # batching must not change anything
    assert score_split(CBFScorer(emb), split, batch_users=1000, bootstrap=20) == res


def test_bootstrap_stderr_close_to_analytic():
    emb, split = random_split(2500, 140, 90, seed=1, density=0.06)
    res = score_split(CBFScorer(emb), split, batch_users=512, bootstrap=1000, seed=5)
    ref, _ = brute_force(emb.astype(np.float64), split.source, split.target, split.candidates)
    for j, name in enumerate(["recall@20", "recall@50", "ndcg@100"]):
        analytic = ref[:, j].std(ddof=1) / np.sqrt(len(ref))
        assert analytic > 0
        assert res["stderr"][name] == pytest.approx(analytic, rel=0.12), name
    # seeded: same seed same answer, another seed a (slightly) different one
    vals = ref.copy()
    assert np.array_equal(bootstrap_stderr(vals, 200, seed=1), bootstrap_stderr(vals, 200, seed=1))
    assert not np.array_equal(bootstrap_stderr(vals, 200, seed=1), bootstrap_stderr(vals, 200, seed=2))


# ---------------------------------------------------------------- a real encoder on a prepared folder

WORDS = ("space war love detective magic dragon history family robot ocean city music crime "
         "school island king queen secret journey forest winter summer ghost train").split()


def write_prepared(root: Path, *, n_items=90, n_users=40, n_val=10, n_test=35, seed=0, dataset="tiny") -> Path:
    """A small item-split prepared folder in the contract's format (independent of `beeray prepare`)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    texts = [f"item {i}: " + " ".join(rng.choice(WORDS, 6)) for i in range(n_items)]
    pq.write_table(pa.table({"item_id": [f"i{i}" for i in range(n_items)], "text": texts}), root / "items.parquet")
    perm = rng.permutation(n_items)
    val_items, test_items = np.sort(perm[:n_val]), np.sort(perm[n_val:n_val + n_test])
    user_items = [np.sort(rng.choice(n_items, rng.integers(5, 20), replace=False)).astype(np.int32)
                  for _ in range(n_users)]
    pq.write_table(pa.table({
        "user_id": pa.array([f"u{u}" for u in range(n_users)], pa.string()),
        "items": pa.array([x.tolist() for x in user_items], pa.list_(pa.int32())),
        "timestamps": pa.array([None] * n_users, pa.list_(pa.int64())),
    }), root / "users.parquet")

    cold = set(val_items) | set(test_items)

    def interactions(keep):
        rows = [(u, [int(i) for i in its if keep(i)]) for u, its in enumerate(user_items)]
        rows = [(u, its) for u, its in rows if its]
        return pa.table({"user": pa.array([u for u, _ in rows], pa.int32()),
                         "items": pa.array([its for _, its in rows], pa.list_(pa.int32()))})

    pq.write_table(interactions(lambda i: i not in cold), root / "train.parquet")
    pq.write_table(interactions(lambda i: i not in set(test_items)), root / "train_full.parquet")
    excluded = {}
    for name, held in (("val", set(val_items)), ("test", set(test_items))):
        users, srcs, tgts, excl = [], [], [], 0
        for u, its in enumerate(user_items):
            tgt = [int(i) for i in its if i in held]
            src = [int(i) for i in its if i not in cold]
            if not tgt:
                continue
            if not src:
                excl += 1
                continue
            users.append(u), srcs.append(src), tgts.append(tgt)
        excluded[name] = excl
        pq.write_table(pa.table({"user": pa.array(users, pa.int32()),
                                 "source": pa.array(srcs, pa.list_(pa.int32())),
                                 "target": pa.array(tgts, pa.list_(pa.int32()))}), root / f"{name}.parquet")
    split = {"kind": "item", "seed": seed, "val_items": val_items.tolist(), "test_items": test_items.tolist(),
             "val_candidates": val_items.tolist(), "test_candidates": test_items.tolist(),
             "val_excluded_users": excluded["val"], "test_excluded_users": excluded["test"]}
    (root / "split.json").write_text(json.dumps(split))
    n_inter = int(sum(len(x) for x in user_items))
    stats = {"dataset": dataset, "users": n_users, "items": n_items, "interactions": n_inter,
             "density": n_inter / (n_users * n_items),
             "split": {"val": {"items": n_val, "excluded_users": excluded["val"]},
                       "test": {"items": n_test, "excluded_users": excluded["test"]}}}
    (root / "stats.json").write_text(json.dumps(stats))
    del pd  # pandas only needs to be importable for the reader
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.helpers import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny_model"))


def test_evaluate_real_encoder(tmp_path, tiny):
    data = PreparedData.load(write_prepared(tmp_path / "data"))
    res = evaluate(tiny, data, "test", batch_size=16, bootstrap=200, show_progress=False)

    assert set(res) == {"recall@20", "recall@50", "ndcg@100", "users", "excluded_users", "stderr", "popularity"}
    split = data.eval_split("test")
    assert res["users"] == len(split.user) > 10
    for m in ("recall@20", "recall@50", "ndcg@100"):
        assert 0.0 < res[m] <= 1.0
    assert 0.0 < res["stderr"]["recall@20"] < 0.5 and 0.0 < res["stderr"]["ndcg@100"] < 0.5
    # only 35 candidates: everything is in the top 50, for every user
    assert res["recall@50"] == pytest.approx(1.0) and res["stderr"]["recall@50"] < 1e-12
    assert res["excluded_users"] == split.excluded_users

    emb = tiny.encode(data.texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    ref = score_split(CBFScorer(emb), split, bootstrap=200)
    assert ref["users"] == res["users"] and ref["excluded_users"] == res["excluded_users"]
    for m in ("recall@20", "recall@50", "ndcg@100"):
        assert res[m] == pytest.approx(ref[m], rel=1e-6)
        assert res["stderr"][m] == pytest.approx(ref["stderr"][m], rel=1e-6)


def test_user_batches_shrink_with_many_candidates(monkeypatch):
    """Memory is bounded by users x candidates per batch: with many candidates the evaluator scores
    fewer users at once, and the result does not change."""
    import beeray.evaluator as ev

    emb, split = random_split(120, 60, None, seed=3)
    want = score_split(CBFScorer(emb), split, bootstrap=20)
    seen = []

    class Spy(CBFScorer):
        def scores(self, source, candidates):
            seen.append(source.shape[0])
            return super().scores(source, candidates)

    monkeypatch.setattr(ev, "MAX_BLOCK", 60 * 7)  # 7 users x 60 candidates
    assert score_split(Spy(emb), split, bootstrap=20) == want
    assert max(seen) == 7 and sum(seen) == want["users"]


# ---------------------------------------------------------------- popularity-aware reporting


def test_popularity_thirds_and_their_recalls():
    """Hand case: 6 candidates whose target counts are 4, 4, 4 (head ... tail by construction: each
    third holds 4 of the 12 target interactions) and a ranking whose top 20 finds known hits."""
    from beeray.evaluator import popularity_report, popularity_strata

    # 4 users x 6 candidates: item 0 and 1 are targets of 2 users each (4 targets: head),
    # item 2 of 4 users (4: middle), items 3..5 of 4 users together (tail), ties broken by index.
    y = sp.csr_matrix(np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 1, 0], [0, 0, 1, 0, 0, 1], [0, 0, 1, 1, 0, 0]],
                               dtype=np.float64))
    stratum, percentile = popularity_strata(y)
    # counts: 2, 2, 4, 2, 1, 1 -> order 2, 0, 1, 3, 4, 5 -> running totals 0, 4, 6, 8, 10, 11 of 12
    assert stratum.tolist() == [1, 1, 0, 2, 2, 2]
    assert percentile[2] == 100 and percentile[4] == percentile[5] == 0
    top = np.tile(np.array([[2, 0, 1, 3, 4, 5]]), (4, 1))[:, :2]  # everyone gets items 2 and 0
    rep = popularity_report(y, top, np.ones(top.shape, dtype=bool))
    # item 2 (head): 4 of its 4 targets found; middle (items 0, 1: 4 targets): item 0 found for 2 users
    assert rep["recall@20_head"] == 1.0 and rep["recall@20_middle"] == 0.5 and rep["recall@20_tail"] == 0.0
    # micro = (4 + 2 + 0) / 12 = the thirds' mean here, since each third holds exactly 4 targets
    assert rep["recall@20_micro"] == pytest.approx(0.5) == pytest.approx(np.mean([1.0, 0.5, 0.0]))
    assert rep["popularity_percentile@20"] == pytest.approx((percentile[2] + percentile[0]) / 2)


def test_popularity_report_of_every_result():
    emb, split = random_split(300, 80, 40, seed=4)
    res = score_split(CBFScorer(emb), split, bootstrap=10)
    pop = res["popularity"]
    assert set(pop) == {"recall@20_head", "recall@20_middle", "recall@20_tail", "recall@20_micro",
                        "popularity_percentile@20"}
    assert 0 <= min(v for v in pop.values()) and pop["popularity_percentile@20"] <= 100
    # the micro recall is the targets-weighted mean of the thirds'
    from beeray.evaluator import popularity_strata

    y = sp.csr_matrix(split.target[:, split.candidates])
    keep = (np.diff(sp.csr_matrix(split.source).indptr) > 0) & (np.diff(y.indptr) > 0)
    stratum, _ = popularity_strata(y[keep])
    n = np.bincount(stratum[y[keep].indices], minlength=3)
    thirds = [pop["recall@20_head"], pop["recall@20_middle"], pop["recall@20_tail"]]
    assert pop["recall@20_micro"] == pytest.approx(np.dot(n, thirds) / n.sum())


def test_ties_are_broken_at_random_not_by_item_index():
    """An all-ties scorer ranks like a random list: its recall is chance, not the popularity of the items
    with low indices (here every target is among the 40 lowest of 2,000 candidates)."""
    from beeray.data.prepared import EvalSplit

    rng = np.random.default_rng(0)
    n_users, n_items = 3000, 2100
    cand = np.arange(100, n_items)  # items 0-99 are the users' sources
    src = sp.csr_matrix((np.ones(n_users), (np.arange(n_users), rng.integers(0, 100, n_users))), shape=(n_users, n_items))
    tgt = sp.csr_matrix((np.ones(n_users), (np.arange(n_users), 100 + rng.integers(0, 40, n_users))),
                        shape=(n_users, n_items))
    split = EvalSplit("test", np.arange(n_users), src, tgt, cand, 0)

    class AllTies:
        def scores(self, source, candidates):
            return np.zeros((source.shape[0], candidates.size))

    by_seed = [score_split(AllTies(), split, bootstrap=0, ties_seed=s)["recall@20"] for s in range(20)]
    # one target per user: recall@20 = the share of users whose target is in the (common) top 20;
    # a random 20 of 2,000 candidates holds on average 20/2000 x 40 of the 40 popular ones
    chance = 20 / cand.size
    assert np.mean(by_seed) == pytest.approx(chance, rel=0.5)
    assert max(by_seed) < 0.2  # by index the top 20 would be 20 of the 40 targets: recall about 0.5
    # the order is seeded: the same seed ranks the same (every row of a table shares it)
    assert score_split(AllTies(), split, bootstrap=0, ties_seed=3)["recall@20"] == by_seed[3]
