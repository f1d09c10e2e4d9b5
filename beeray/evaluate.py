"""The evaluator: rank a split's candidates for every user with a scorer, and measure (docs/method.md §4, §5).

A *scorer* turns a batch of users' source histories (a sparse users x items matrix) into scores
over the split's candidate items. The text encoder is one (`CBFScorer`: the ELSA-style
propagation relu(x Â Â_candᵀ − x_cand) through text embeddings); every other way of ranking
items plugs in the same way, and the evaluator never knows which it holds. It ranks the
candidates, excludes what a user already has, and scores the ranking with RecPack's
CalibratedRecallK and NDCGK, with a bootstrap standard error.

Memory is bounded by the user batch: the only dense block is users x candidates, and the batch
shrinks when the candidates are many (a time split ranks the whole catalog), so a large catalog
never allocates users x items.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from beeray.errors import BeerayError
from beeray.models import embedding_dim

if TYPE_CHECKING:  # the data layer is only needed for type hints here
    from beeray.data.prepared import EvalSplit, PreparedData

METRICS: tuple[str, ...] = ("recall@20", "recall@50", "ndcg@100")
VAL_METRICS: tuple[str, ...] = tuple(f"val_{m}" for m in METRICS)  # what training reports per epoch
STRATA = ("head", "middle", "tail")  # thirds of the candidates' target interactions, most popular first
POPULARITY_METRICS: tuple[str, ...] = (*(f"recall@20_{s}" for s in STRATA), "recall@20_micro",
                                       "popularity_percentile@20")
TOP_N = 100  # the largest K of any metric: nothing below rank 100 can change a result
# Largest users x candidates score block (float64) one batch may hold: 2^23 elements = 64 MB, plus
# about twice that in ranking temporaries. A batch has fewer users when the candidates are many.
MAX_BLOCK = 1 << 23


class Scorer(Protocol):
    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        """Dense float64 (users x candidates) scores for a batch of source histories (users x items)."""


def _recpack_metrics() -> dict[str, Any]:
    # RecPack pulls in sklearn; import lazily so `beeray --help` stays fast.
    from recpack.metrics import CalibratedRecallK, NDCGK

    return {"recall@20": CalibratedRecallK(20), "recall@50": CalibratedRecallK(50), "ndcg@100": NDCGK(100)}


# ---------------------------------------------------------------- the text encoder as a scorer

def needed_items(split: "EvalSplit") -> np.ndarray:
    """Item indices whose embeddings CBF scoring reads: every source item plus every candidate."""
    source = sp.csr_matrix(split.source)
    return np.union1d(np.unique(source.indices), split.candidates).astype(np.int64)


def encode_items(model, texts: list[str], batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
    """Encode texts into float32 rows of unit L2 norm (empty input gives a 0 x d array)."""
    if len(texts) == 0:
        return np.zeros((0, embedding_dim(model)), dtype=np.float32)
    emb = model.encode(
        list(texts), batch_size=batch_size, show_progress_bar=show_progress,
        convert_to_numpy=True, normalize_embeddings=True,
    )
    return np.ascontiguousarray(emb, dtype=np.float32)


def cbf_scores(item_emb: np.ndarray, x: sp.csr_matrix, cand: np.ndarray,
               emb_cand: np.ndarray | None = None) -> np.ndarray:
    """relu(x Â Â_candᵀ − x[:, cand]) for a batch of users x (batch x n_items, sparse), in float64.

    Only the embeddings of the items in the batch's histories are read (and upcast), so the
    cost in memory is the batch's items x d, not the catalog's.
    """
    x = sp.csr_matrix(x, dtype=np.float64)
    used = np.unique(x.indices)
    profile = x[:, used] @ np.asarray(item_emb[used], dtype=np.float64)  # users x d
    if emb_cand is None:
        emb_cand = np.asarray(item_emb[cand], dtype=np.float64)
    scores = profile @ emb_cand.T
    own = x[:, cand].tocoo()  # the − x_cand term, without a second dense users x candidates array
    scores[own.row, own.col] -= own.data
    np.maximum(scores, 0.0, out=scores)
    return scores


class CBFScorer:
    """Content-based scoring from item embeddings (rows L2-normalised; unread rows may be zero)."""

    def __init__(self, item_emb: np.ndarray) -> None:
        self.item_emb = np.asarray(item_emb, dtype=np.float32)
        self._cand: np.ndarray | None = None
        self._emb_cand: np.ndarray | None = None

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        if self._cand is not candidates:  # the evaluator passes one array for the whole split
            self._cand, self._emb_cand = candidates, self.item_emb[candidates].astype(np.float64)
        return cbf_scores(self.item_emb, source, candidates, emb_cand=self._emb_cand)


# ---------------------------------------------------------------- ranking and metrics

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
    take = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= n_tied_needed[:, None]))
    cols = np.nonzero(take)[1].reshape(n_rows, k)  # ascending column order within each row
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


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
    chunk = max(1, min(n_boot, 500_000 // n))  # about 12 MB of resampled rows at a time
    means = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        means.append(values[idx].mean(axis=1))
    return np.concatenate(means).std(axis=0, ddof=1)


def popularity_strata(y_true: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: its stratum (0 head, 1 middle, 2 tail) and its popularity percentile (0-100).

    Popularity = the candidate's number of target interactions in the split. Candidates are sorted
    from most to least popular (ties: lower index first) and cut where the running total of target
    interactions crosses 1/3 and 2/3 of all of them: each third holds about a third of the targets.
    """
    from scipy.stats import rankdata

    counts = np.asarray(y_true.sum(axis=0), dtype=np.float64).ravel()
    order = np.lexsort((np.arange(counts.size), -counts))
    before = np.cumsum(counts[order]) - counts[order]  # target interactions of more popular candidates
    stratum = np.empty(counts.size, dtype=np.int64)
    stratum[order] = np.minimum((3 * before / max(counts.sum(), 1)).astype(np.int64), 2)
    # percentile: the share of the other candidates that are strictly less popular (0 = least popular)
    percentile = (rankdata(counts, method="min") - 1) / max(counts.size - 1, 1) * 100
    return stratum, percentile


def popularity_report(y_true: sp.csr_matrix, top20: np.ndarray, valid: np.ndarray) -> dict:
    """How a ranking uses popularity (reading aids, no bootstrap).

    recall@20_<third>: of all target interactions with candidates of that third, the share found in
    the users' top 20 (pooled over users); recall@20_micro: the same over all targets, which is the
    thirds' recalls weighted by their target counts (their plain mean when the thirds hold equal
    numbers of targets). popularity_percentile@20: mean popularity percentile of the recommended top 20.
    """
    stratum, percentile = popularity_strata(y_true)
    y_true = sp.csr_matrix(y_true)
    n_cand = y_true.shape[1]
    target_keys = np.repeat(np.arange(y_true.shape[0]), np.diff(y_true.indptr)) * n_cand + y_true.indices
    top_keys = np.arange(top20.shape[0])[:, None] * n_cand + top20
    hits = np.isin(top_keys, target_keys) & valid
    found = np.bincount(stratum[top20][hits], minlength=3)
    targets = np.bincount(stratum[y_true.indices], minlength=3)
    out = {f"recall@20_{name}": float(found[g] / targets[g]) if targets[g] else None for g, name in enumerate(STRATA)}
    out["recall@20_micro"] = float(found.sum() / targets.sum()) if targets.sum() else None
    out["popularity_percentile@20"] = float(percentile[top20][valid].mean()) if valid.any() else None
    return out


def score_split(
    scorer: Scorer,
    split: "EvalSplit",
    batch_users: int = 1024,
    bootstrap: int = 1000,
    seed: int = 0,
    exclude_source: bool = True,
    show_progress: bool = False,
) -> dict:
    """Rank the split's candidates for every user with `scorer` and compute the metrics.

    exclude_source: candidates in a user's own source are never recommended (the time split's
    "known items"); in the item split sources and candidates are disjoint so it is a no-op.
    Users without source history or without a target among the candidates cannot be
    scored; they are added to split.excluded_users.
    """
    source = sp.csr_matrix(split.source, dtype=np.float64)
    target = sp.csr_matrix(split.target, dtype=np.float64)
    cand = np.asarray(split.candidates, dtype=np.int64)
    y_true_all = sp.csr_matrix(target[:, cand])
    y_true_all.sum_duplicates()
    y_true_all.data[:] = 1.0

    keep = (np.diff(source.indptr) > 0) & (np.diff(y_true_all.indptr) > 0)
    rows = np.flatnonzero(keep)
    excluded = int(split.excluded_users) + int((~keep).sum())
    metrics = _recpack_metrics()
    per_user = np.zeros((len(rows), len(METRICS)))
    top20 = np.zeros((len(rows), min(20, cand.size)), dtype=np.int64)
    top20_valid = np.zeros(top20.shape, dtype=bool)

    batch_users = max(1, min(batch_users, MAX_BLOCK // max(cand.size, 1)))
    starts = range(0, len(rows), batch_users)
    for start in tqdm(starts, desc="scoring users", disable=not show_progress):
        batch = rows[start:start + batch_users]
        x = source[batch]
        scores = np.asarray(scorer.scores(x, cand), dtype=np.float64)
        if scores.shape != (len(batch), cand.size):
            raise BeerayError(f"{type(scorer).__name__} returned scores of shape {scores.shape}, "
                              f"expected {(len(batch), cand.size)} (users x candidates)")
        if exclude_source:
            r, c = x[:, cand].nonzero()
            scores[r, c] = -np.inf
        top = top_k_rows(scores, TOP_N)
        # Encode the rank as a distinct positive value (TOP_N for the best) so RecPack's own
        # top-K selection reproduces this ranking exactly, including zero scores and ties.
        valid = np.isfinite(np.take_along_axis(scores, top, axis=1))
        top20[start:start + len(batch)] = top[:, :top20.shape[1]]
        top20_valid[start:start + len(batch)] = valid[:, :top20.shape[1]]
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
    if np.isnan(per_user).any():
        raise BeerayError(f"RecPack returned no metric for {int(np.isnan(per_user).any(axis=1).sum())} "
                          f"users that have a target ({split.name} split)")
    means = per_user.mean(axis=0) if n else np.zeros(len(METRICS))
    errs = bootstrap_stderr(per_user, bootstrap, seed) if n else np.zeros(len(METRICS))
    result: dict = {name: float(means[j]) for j, name in enumerate(METRICS)}
    result["users"] = int(n)
    result["excluded_users"] = excluded
    result["stderr"] = {name: float(errs[j]) for j, name in enumerate(METRICS)}
    result["popularity"] = popularity_report(y_true_all[rows], top20, top20_valid)
    return result


def encoder_scorer(model, data: "PreparedData", split: "EvalSplit", batch_size: int = 64,
                   show_progress: bool = True) -> CBFScorer:
    """Encode the items `split` reads (sources and candidates) with `model`: the CBF scorer."""
    idx = needed_items(split)
    vecs = encode_items(model, [data.texts[i] for i in idx], batch_size=batch_size, show_progress=show_progress)
    emb = np.zeros((data.n_items, vecs.shape[1]), dtype=np.float32)
    emb[idx] = vecs
    return CBFScorer(emb)


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
    """Metrics of the text encoder `model` on the split `which` ("val" or "test")."""
    split = data.eval_split(which)
    scorer = encoder_scorer(model, data, split, batch_size=batch_size, show_progress=show_progress)
    return score_split(scorer, split, batch_users=batch_users, bootstrap=bootstrap, seed=seed,
                       show_progress=show_progress)


def evaluate_models(models: list[str], datasets: dict[str, "PreparedData"], which: str, device: str | None = None,
                    **kwargs) -> dict[str, dict]:
    """{model: {dataset label: result}}: each model is loaded once and scored on every dataset."""
    from beeray.models import load_model

    out: dict[str, dict] = {}
    for name in models:
        model = load_model(name, device=device)
        out[name] = {}
        for label, data in datasets.items():
            print(f"evaluating {name} on {label} ({which})", flush=True)
            t0 = time.perf_counter()
            res = evaluate(model, data, which, **kwargs)
            out[name][label] = {"model": name, "data": str(data.root), "split": which, **res,
                                "seconds": time.perf_counter() - t0}  # encoding and scoring
    return out
