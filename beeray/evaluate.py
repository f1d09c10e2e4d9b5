"""Content-based (CBF) evaluation of a text encoder on a prepared split (method.md sections 4 and 5).

A user's scores are the ELSA-style item-item propagation through text embeddings,
relu(x Â Â_candᵀ − x[:, cand]), ranked over the split's candidate items and scored
with RecPack's CalibratedRecallK and NDCGK. Users are processed in batches so the
only dense matrix is batch x candidates, which keeps Goodbooks-sized splits
(53k users x 10k items) within a few hundred MB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

if TYPE_CHECKING:  # the data layer is only needed for type hints here
    from beeray.data.prepared import EvalSplit, PreparedData

METRICS: tuple[str, ...] = ("recall@20", "recall@50", "ndcg@100")
TOP_N = 100  # the largest K of any metric: nothing below rank 100 can change a result


def _recpack_metrics() -> dict[str, Any]:
    # RecPack pulls in sklearn; import lazily so `beeray --help` stays fast.
    from recpack.metrics import CalibratedRecallK, NDCGK

    return {"recall@20": CalibratedRecallK(20), "recall@50": CalibratedRecallK(50), "ndcg@100": NDCGK(100)}


def needed_items(split: "EvalSplit") -> np.ndarray:
    """Item indices whose embeddings scoring reads: every source item plus every candidate."""
    source = sp.csr_matrix(split.source)
    return np.union1d(np.unique(source.indices), _candidates(split, source.shape[1])).astype(np.int64)


def encode_items(model, texts: list[str], batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
    """Encode texts into float32 rows of unit L2 norm (empty input gives a 0 x d array)."""
    if len(texts) == 0:
        return np.zeros((0, _embedding_dim(model)), dtype=np.float32)
    emb = model.encode(
        list(texts), batch_size=batch_size, show_progress_bar=show_progress,
        convert_to_numpy=True, normalize_embeddings=True,
    )
    return np.ascontiguousarray(emb, dtype=np.float32)


def _embedding_dim(model) -> int:
    # sentence-transformers renamed this method across versions; accept either.
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        fn = getattr(model, name, None)
        if fn is not None:
            return int(fn() or 0)
    return 0


def _candidates(split, n_items: int) -> np.ndarray:
    cand = getattr(split, "candidates", None)
    if cand is None:  # split.json's null means "all items"
        return np.arange(n_items, dtype=np.int64)
    return np.asarray(cand, dtype=np.int64)


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k highest scores, best first.

    Ties are broken by the lower column index so results never depend on
    argpartition's arbitrary order (and are reproducible across runs/machines).
    """
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k == 0 or n_rows == 0:
        return np.zeros((n_rows, 0), dtype=np.int64)
    kth = np.partition(scores, n_cols - k, axis=1)[:, n_cols - k]  # k-th largest per row
    above = scores > kth[:, None]
    tied = scores == kth[:, None]
    n_tied_needed = k - above.sum(axis=1)
    take = above | (tied & (np.cumsum(tied, axis=1) <= n_tied_needed[:, None]))
    cols = np.nonzero(take)[1].reshape(n_rows, k)  # ascending column order within each row
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def cbf_scores(
    item_emb: np.ndarray, x: sp.csr_matrix, cand: np.ndarray, exclude_source: bool = True,
    emb_cand: np.ndarray | None = None,
) -> np.ndarray:
    """relu(x Â Â_candᵀ − x[:, cand]) for a batch of users x (batch x n_items, sparse).

    Returns a dense batch x candidates float64 array — the only dense block evaluation
    allocates. Candidates in a user's source are -inf when exclude_source is set.
    """
    emb = np.asarray(item_emb, dtype=np.float64)
    if emb_cand is None:
        emb_cand = emb[cand]
    x = sp.csr_matrix(x, dtype=np.float64)
    x_cand = x[:, cand]
    scores = np.asarray((x @ emb) @ emb_cand.T) - x_cand.toarray()
    np.maximum(scores, 0.0, out=scores)
    if exclude_source and x_cand.nnz:
        r, c = x_cand.nonzero()
        scores[r, c] = -np.inf
    return scores


def _per_user(metric, y_true: sp.csr_matrix, y_pred: sp.csr_matrix) -> np.ndarray:
    metric.calculate(y_true, y_pred)
    res = metric.results
    out = np.full(y_true.shape[0], np.nan)
    out[res["user_id"].to_numpy(dtype=np.int64)] = res["score"].to_numpy(dtype=np.float64)
    return out


def bootstrap_stderr(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap standard error of the column means of `values` (users x metrics).

    Users are resampled with replacement, jointly for all metrics. Replicates are
    drawn in chunks so memory stays bounded for large user counts.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n < 2 or n_boot < 2:
        return np.zeros(values.shape[1])
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 2_000_000 // n))
    means = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        means.append(values[idx].mean(axis=1))
    return np.concatenate(means).std(axis=0, ddof=1)


def score_split(
    item_emb: np.ndarray,
    split: "EvalSplit",
    batch_users: int = 1024,
    bootstrap: int = 1000,
    seed: int = 0,
    exclude_source: bool = True,
    show_progress: bool = False,
) -> dict:
    """Rank the split's candidates for every user from item embeddings and compute the metrics.

    item_emb: n_items x d, rows L2-normalised (rows of items not in needed_items may be zero).
    exclude_source: candidates in a user's own source are set to -inf (the time split's
    "known items"); in the item split sources and candidates are disjoint so it is a no-op.
    Users without source history or without a target among the candidates cannot be
    scored; they are added to split.excluded_users.
    """
    emb = np.asarray(item_emb, dtype=np.float64)
    source = sp.csr_matrix(split.source, dtype=np.float64)
    target = sp.csr_matrix(split.target, dtype=np.float64)
    n_items = source.shape[1]
    if emb.shape[0] != n_items:
        raise ValueError(f"item_emb has {emb.shape[0]} rows, split has {n_items} items")
    cand = _candidates(split, n_items)
    emb_cand = emb[cand]
    y_true_all = sp.csr_matrix(target[:, cand])
    y_true_all.sum_duplicates()
    y_true_all.data[:] = 1.0

    keep = (np.diff(source.indptr) > 0) & (np.diff(y_true_all.indptr) > 0)
    rows = np.flatnonzero(keep)
    excluded = int(getattr(split, "excluded_users", 0)) + int((~keep).sum())
    metrics = _recpack_metrics()
    per_user = np.zeros((len(rows), len(METRICS)))

    starts = range(0, len(rows), batch_users)
    for start in tqdm(starts, desc="scoring users", disable=not show_progress):
        batch = rows[start:start + batch_users]
        scores = cbf_scores(emb, source[batch], cand, exclude_source, emb_cand=emb_cand)
        top = top_k_rows(scores, TOP_N)
        # Encode the rank as a distinct positive value (TOP_N for the best) so RecPack's own
        # top-K selection reproduces this ranking exactly, including zero scores and ties.
        valid = np.isfinite(np.take_along_axis(scores, top, axis=1))
        rank_value = np.broadcast_to(np.arange(TOP_N, TOP_N - top.shape[1], -1, dtype=np.float64), top.shape)
        row_idx = np.broadcast_to(np.arange(len(batch))[:, None], top.shape)
        y_pred = sp.csr_matrix(
            (rank_value[valid], (row_idx[valid], top[valid])), shape=(len(batch), len(cand))
        )
        y_true = y_true_all[batch]
        for j, name in enumerate(METRICS):
            per_user[start:start + len(batch), j] = _per_user(metrics[name], y_true, y_pred)

    n = len(rows)
    # every kept user has a target, so RecPack must have returned a value for each
    assert not np.isnan(per_user).any(), "RecPack skipped a user with a target"
    means = per_user.mean(axis=0) if n else np.zeros(len(METRICS))
    errs = bootstrap_stderr(per_user, bootstrap, seed) if n else np.zeros(len(METRICS))
    result: dict = {name: float(means[j]) for j, name in enumerate(METRICS)}
    result["users"] = int(n)
    result["excluded_users"] = excluded
    result["stderr"] = {name: float(errs[j]) for j, name in enumerate(METRICS)}
    return result


def evaluate(
    model,
    data: "PreparedData",
    which: str,
    batch_size: int = 64,
    batch_users: int = 1024,
    bootstrap: int = 1000,
    seed: int = 0,
    show_progress: bool = True,
) -> dict:
    """Encode the items the split needs with `model` and score the split ("val" or "test")."""
    split = data.eval_split(which)
    idx = needed_items(split)
    vecs = encode_items(model, [data.texts[i] for i in idx], batch_size=batch_size, show_progress=show_progress)
    emb = np.zeros((data.n_items, vecs.shape[1]), dtype=np.float32)
    emb[idx] = vecs
    return score_split(emb, split, batch_users=batch_users, bootstrap=bootstrap, seed=seed,
                       show_progress=show_progress)
