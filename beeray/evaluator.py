"""The evaluator: rank a split's candidates for every user with a scorer, and measure (docs/method.md §4, §5).

A *scorer* turns a batch of users' source histories (a sparse users x items matrix) into scores
over the split's candidate items. The text encoder is one (`CBFScorer`: the ELSA-style
propagation relu(x Â Â_candᵀ − x_cand) through text embeddings); every other way of ranking
items plugs in the same way, and the evaluator never knows which it holds. It ranks the
candidates, excludes what a user already has, and scores the ranking with beeray.metrics (RecPack's
CalibratedRecallK and NDCGK, computed by beeray), with a bootstrap standard error.

Memory is bounded by the user batch: the only dense block is users x candidates, and the batch
shrinks when the candidates are many (a time split ranks the whole catalog), so a large catalog
never allocates users x items. Only the top 100 of each row matter to any metric: long rows are
narrowed to them with one pass over the block (top_k_rows), and the metrics read the top 100's hits.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Protocol

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from beeray.errors import BeerayError
from beeray.metrics import LARGEST_K, METRICS, STRATA, ranking_metrics
from beeray.models import embedding_dim

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the data layer is only needed for type hints here
    from beeray.data.prepared import EvalSplit, PreparedData

JOINT = "joint"  # the part label of a multi-dataset folder's whole split (every dataset's users and cold items)
TOP_N = LARGEST_K  # the largest K of any metric: nothing below rank 100 can change a result
# Largest users x candidates score block (float64) one scoring batch may hold: 2^24 elements =
# 128 MB. A batch has fewer users when the candidates are many (16 for a 10^6-item catalog). Ranking
# adds little to the block (group maxima and the few groups read back, see top_k_rows), and each
# block is freed before the next is made: scoring alone peaked at +138 MB at 10^6 candidates, where
# the 2^23 bound of the partition-based ranking peaked at +183 MB. More users per matrix product
# read the candidate embeddings fewer times.
MAX_BLOCK = 1 << 24


class Scorer(Protocol):
    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        """Dense float64 (users x candidates) scores for a batch of source histories (users x items)."""


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


def candidate_positions(candidates: np.ndarray, n_items: int) -> np.ndarray | None:
    """Per item, its position among `candidates` (-1 when it is not one); None if a candidate repeats.

    With it, the entries of x[:, candidates] are found by one lookup per stored entry of x: scipy's
    column fancy indexing argsorts the whole candidate array on every call (~8 ms for 10^6 candidates,
    twice per batch).
    """
    pos = np.full(n_items, -1, dtype=np.int64)
    pos[candidates] = np.arange(len(candidates))
    return pos if np.count_nonzero(pos >= 0) == len(candidates) else None


def in_candidates(x: sp.csr_matrix, candidates: np.ndarray,
                  cand_pos: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, candidate position, value) of every stored entry of x[:, candidates], in x's entry order."""
    if cand_pos is None:  # repeated candidates: scipy duplicates the column, the lookup could not
        own = x[:, candidates].tocoo()
        return own.row, own.col, own.data
    pos = cand_pos[x.indices]
    hit = pos >= 0
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    return rows[hit], pos[hit], x.data[hit]


def cbf_scores(item_emb: np.ndarray, x: sp.csr_matrix, cand: np.ndarray,
               emb_cand: np.ndarray | None = None, cand_pos: np.ndarray | None = None) -> np.ndarray:
    """relu(x Â Â_candᵀ − x[:, cand]) for a batch of users x (batch x n_items, sparse), in float64.

    Only the embeddings of the items in the batch's histories are read (and upcast), so the
    cost in memory is the batch's items x d, not the catalog's. cand_pos: candidate_positions(cand).
    """
    x = sp.csr_matrix(x, dtype=np.float64)
    used = np.unique(x.indices)
    profile = x[:, used] @ np.asarray(item_emb[used], dtype=np.float64)  # users x d
    if emb_cand is None:
        emb_cand = np.asarray(item_emb[cand], dtype=np.float64)
    scores = profile @ emb_cand.T
    r, c, v = in_candidates(x, cand, cand_pos)  # the − x_cand term, without a dense users x candidates copy
    scores[r, c] -= v
    np.maximum(scores, 0.0, out=scores)
    return scores


class CBFScorer:
    """Content-based scoring from item embeddings (rows L2-normalised; unread rows may be zero)."""

    def __init__(self, item_emb: np.ndarray) -> None:
        self.item_emb = np.asarray(item_emb, dtype=np.float32)
        self._cand: np.ndarray | None = None
        self._emb_cand: np.ndarray | None = None
        self._cand_pos: np.ndarray | None = None

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        if self._cand is not candidates:  # the evaluator passes one array for the whole split
            self._cand, self._emb_cand = candidates, self.item_emb[candidates].astype(np.float64)
            self._cand_pos = candidate_positions(candidates, self.item_emb.shape[0])
        return cbf_scores(self.item_emb, source, candidates, emb_cand=self._emb_cand, cand_pos=self._cand_pos)


# ---------------------------------------------------------------- ranking and metrics

def _top_k_dense(scores: np.ndarray, k: int) -> np.ndarray:
    """top_k_rows by partitioning whole rows (small rows, and rows the grouped search cannot narrow)."""
    n_rows, n_cols = scores.shape
    kth = np.partition(scores, n_cols - k, axis=1)[:, n_cols - k]  # k-th largest per row
    above = scores > kth[:, None]
    tied = scores == kth[:, None]
    n_tied_needed = k - above.sum(axis=1)
    take = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= n_tied_needed[:, None]))
    cols = np.nonzero(take)[1].reshape(n_rows, k)  # ascending column order within each row
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def _n_groups(n_cols: int, k: int) -> int:
    """Groups for the grouped top-k search of a row of n_cols (0: rank the row densely).

    About sqrt(n_cols / k) members per group balances the two costs that depend on the grouping:
    partitioning the group maxima (n_cols / members) and reading the hit groups (~k x members).
    With fewer than 8k groups the threshold would not narrow the row enough to pay off.
    """
    members = max(1, round(float(np.sqrt(n_cols / max(k, 1)))))
    groups = n_cols // members
    return groups if groups >= 8 * k else 0


def top_k_rows(scores: np.ndarray, k: int, groups: int | None = None) -> np.ndarray:
    """Column indices of each row's k highest scores, best first.

    Ties are broken by the lower column index so results never depend on
    argpartition's arbitrary order (and are reproducible across runs/machines):
    the ranking is the first k of the row sorted by (score descending, column ascending).

    Long rows (a time split ranks the whole catalog) are not partitioned whole. Each row's columns
    are dealt into `groups` strided groups (column j goes to group j mod groups); t = the k-th
    largest of the group maxima is a lower bound on the row's k-th largest score (k groups each hold
    an element >= t), so every element of the top k scores >= t and sits in a group whose maximum
    is >= t. Only those groups are read back and sorted. This costs one pass over the row (the
    group maxima) instead of a partition, compares, a cumulative sum and a nonzero over it, and it
    returns exactly what the dense selection returns, ties included. Rows with NaN, or whose
    threshold is not selective (many tied groups), are ranked densely. groups: for tests, to force
    the grouped search on small rows; None chooses (see _n_groups).
    """
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k == 0 or n_rows == 0:
        return np.zeros((n_rows, 0), dtype=np.int64)
    groups = min(_n_groups(n_cols, k) if groups is None else groups, n_cols)
    if groups < k:
        return _top_k_dense(scores, k)

    members = n_cols // groups  # the last n_cols mod groups columns give groups 0, 1, ... one more
    main = groups * members
    gmax = scores[:, :main].reshape(n_rows, members, groups).max(axis=1)  # a view: no copy of the block
    tail = scores[:, main:]
    np.maximum(gmax[:, :tail.shape[1]], tail, out=gmax[:, :tail.shape[1]])
    t = np.partition(gmax, groups - k, axis=1)[:, groups - k]  # k-th largest group maximum
    hit = gmax >= t[:, None]
    # rows where the hit groups hold over an eighth of the row (ties) gain nothing: rank them densely
    dense = np.isnan(gmax).any(axis=1) | (hit.sum(axis=1) * (members + 1) > n_cols // 8)

    fast = np.flatnonzero(~dense)
    r, g = np.nonzero(hit[fast])
    rows = fast[r]
    cols = g[:, None] + groups * np.arange(members + 1)  # the members of each hit group, ascending
    vals = scores[rows[:, None], np.minimum(cols, n_cols - 1)]
    keep = (cols < n_cols) & (vals >= t[rows, None])
    rows, cols, vals = np.broadcast_to(rows[:, None], cols.shape)[keep], cols[keep], vals[keep]
    order = np.lexsort((cols, -vals, rows))  # by row, then score descending, then lower column
    counts = np.bincount(rows, minlength=n_rows)  # >= k in every fast row (see above)
    first = np.cumsum(counts) - counts
    top = np.empty((n_rows, k), dtype=np.int64)
    top[fast] = cols[order][first[fast, None] + np.arange(k)]
    if dense.any():
        top[dense] = _top_k_dense(scores[dense], k)
    return top


def target_hits(y_true: sp.csr_matrix, top: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """users x ranks booleans: whether the candidate ranked there (top, columns of y_true) is a target.

    One sorted search of (row, column) keys: y_true's stored entries are the targets, found without a
    dense users x candidates copy. valid False (an excluded candidate, never recommended) is no hit.
    """
    y_true = sp.csr_matrix(y_true)
    y_true.sort_indices()
    n_cand = y_true.shape[1]
    target_keys = np.repeat(np.arange(y_true.shape[0], dtype=np.int64), np.diff(y_true.indptr)) * n_cand \
        + y_true.indices  # ascending: rows in order, sorted columns within a row
    top_keys = np.arange(top.shape[0], dtype=np.int64)[:, None] * n_cand + top
    at = np.minimum(np.searchsorted(target_keys, top_keys), max(target_keys.size - 1, 0))
    found = target_keys[at] == top_keys if target_keys.size else np.zeros(top.shape, dtype=bool)
    return found & valid


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
    from most to least popular (ties: the column order of y_true, which score_split shuffles) and cut where the running total of target
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
    hits = target_hits(y_true, top20, valid)
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
    keep_per_user: bool = False,
    ties_seed: int | None = 0,
) -> dict:
    """Rank the split's candidates for every user with `scorer` and compute the metrics.

    Ties are broken by a random order of the candidates, drawn from `ties_seed` (the same order for
    every scorer evaluated on the split, so the rows of a table differ only by their scores): among
    equal scores the candidate that comes first in that order ranks higher. Breaking them by item
    index instead would hand every tie (a popularity list, an all-zero ReLU row) to whichever items the
    data's ordering puts first, which on real data are the popular ones (Goodbooks: Spearman -0.83
    between item index and popularity). ties_seed None keeps the split's own candidate order (ties to
    the lower item index): for rankings worked out by hand.

    keep_per_user: also return each scored user's metric values (`per_user`: users, and a list per
    metric), for paired comparisons of rows scored on the same users (`paired_differences`).

    exclude_source: candidates in a user's own source are never recommended (the time split's
    "known items"); in the item split sources and candidates are disjoint so it is a no-op.
    Users without source history or without a target among the candidates cannot be
    scored; they are added to split.excluded_users.
    """
    source = sp.csr_matrix(split.source, dtype=np.float64)
    # Everything below works in this shuffled candidate order (metrics do not depend on the order of
    # the columns); top_k_rows breaks ties by the lower column, i.e. by this random order.
    cand = np.asarray(split.candidates, dtype=np.int64)
    if ties_seed is not None:
        cand = cand[np.random.default_rng(ties_seed).permutation(cand.size)]
    y_true = sp.csr_matrix(sp.csr_matrix(split.target, dtype=np.float64)[:, cand])
    y_true.sum_duplicates()
    y_true.data[:] = 1.0
    keep = (np.diff(source.indptr) > 0) & (np.diff(y_true.indptr) > 0)
    rows = np.flatnonzero(keep)
    n_targets = np.diff(y_true.indptr)
    per_user = np.zeros((len(rows), len(METRICS)))
    top20 = np.zeros((len(rows), min(20, cand.size)), dtype=np.int64)
    top20_valid = np.zeros(top20.shape, dtype=bool)
    for start, batch, top, valid in ranked_batches(scorer, source, rows, cand, batch_users, exclude_source,
                                                   show_progress):
        done = slice(start, start + len(batch))
        top20[done], top20_valid[done] = top[:, :top20.shape[1]], valid[:, :top20.shape[1]]
        per_user[done] = ranking_metrics(target_hits(y_true[batch], top, valid), n_targets[batch])
    result = summary(per_user, bootstrap, seed)
    result["excluded_users"] = int(split.excluded_users) + int((~keep).sum())
    result["popularity"] = popularity_report(y_true[rows], top20, top20_valid)
    if keep_per_user:
        result["per_user"] = {"users": split.user[rows].tolist(),
                              **{name: per_user[:, j].tolist() for j, name in enumerate(METRICS)}}
    return result


def ranked_batches(scorer: Scorer, source: sp.csr_matrix, rows: np.ndarray, cand: np.ndarray, batch_users: int,
                   exclude_source: bool, show_progress: bool):
    """(offset, users, top-k candidate positions, whether each is a real score) per batch of `batch_users`
    of the users `rows`, ranked by `scorer`; a user's own items among the candidates never rank.

    Two batch sizes: the metrics run on `batch_users` users at a time, while the scorer and the ranking
    see at most MAX_BLOCK scores at once (16 users when every one of 10^6 items is a candidate). Each
    user's metrics depend on that user's ranking only. (The float64 product itself can differ in the
    last bit with the number of users per product: with OpenBLAS, 1 user goes through gemv; at 10^6
    candidates 2-44 users give the same bits.)"""
    score_users = max(1, min(batch_users, MAX_BLOCK // max(cand.size, 1)))
    cand_pos = candidate_positions(cand, source.shape[1]) if exclude_source else None
    k = min(TOP_N, cand.size)
    progress = tqdm(total=len(rows), desc="scoring users", unit="user", disable=not show_progress)
    for start in range(0, len(rows), batch_users):
        batch = rows[start:start + batch_users]
        top = np.zeros((len(batch), k), dtype=np.int64)
        valid = np.zeros(top.shape, dtype=bool)
        for sub in range(0, len(batch), score_users):
            users = batch[sub:sub + score_users]
            scores = block_scores(scorer, source[users], cand, cand_pos if exclude_source else None)
            part = slice(sub, sub + len(users))
            top[part] = top_k_rows(scores, k)
            valid[part] = np.isfinite(np.take_along_axis(scores, top[part], axis=1))
            del scores  # else the next block is allocated before this one is freed
            progress.update(len(users))
        yield start, batch, top, valid
    progress.close()


def block_scores(scorer: Scorer, x: sp.csr_matrix, cand: np.ndarray, cand_pos: np.ndarray | None) -> np.ndarray:
    """The scorer's users x candidates scores, checked, with each user's own items (`cand_pos` given) at -inf."""
    scores = np.asarray(scorer.scores(x, cand), dtype=np.float64)
    if scores.shape != (x.shape[0], cand.size):
        raise BeerayError(f"{type(scorer).__name__} returned scores of shape {scores.shape}, "
                          f"expected {(x.shape[0], cand.size)} (users x candidates)")
    if cand_pos is not None:
        r, c, v = in_candidates(x, cand, cand_pos)
        scores[r[v != 0], c[v != 0]] = -np.inf
    return scores


def summary(per_user: np.ndarray, bootstrap: int, seed: int) -> dict:
    """The metrics' means over the scored users, their bootstrap stderr, and the count of users."""
    n = len(per_user)
    means = per_user.mean(axis=0) if n else np.zeros(len(METRICS))
    errs = bootstrap_stderr(per_user, bootstrap, seed) if n else np.zeros(len(METRICS))
    return {**{name: float(means[j]) for j, name in enumerate(METRICS)}, "users": int(n),
            "stderr": {name: float(errs[j]) for j, name in enumerate(METRICS)}}


def paired_differences(a: dict, b: dict, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Row a against row b, scored on the same users (both with `per_user`): per metric the mean of the
    per-user differences a − b, its bootstrap stderr (the same resampled users for both rows, so what
    the two rows share, the users' difficulty, cancels), z = diff / stderr and the two-sided p-value
    of z under the normal approximation (means of thousands of users' differences are near normal)."""
    ua, ub = np.asarray(a["per_user"]["users"]), np.asarray(b["per_user"]["users"])
    if ua.size != ub.size or not np.array_equal(np.sort(ua), np.sort(ub)):
        raise BeerayError(f"paired comparison of {a.get('model')} and {b.get('model')}: they were not scored "
                          f"on the same users ({ua.size} and {ub.size})")
    order_b = np.argsort(ub)[np.argsort(np.argsort(ua))]  # b's row of each of a's users
    diff = np.column_stack([np.asarray(a["per_user"][m], dtype=np.float64)
                            - np.asarray(b["per_user"][m], dtype=np.float64)[order_b] for m in METRICS])
    means = diff.mean(axis=0) if diff.size else np.zeros(len(METRICS))
    errs = bootstrap_stderr(diff, n_boot, seed) if diff.size else np.zeros(len(METRICS))
    out = {}
    for j, name in enumerate(METRICS):
        z = float(means[j] / errs[j]) if errs[j] > 0 else (0.0 if means[j] == 0 else math.copysign(math.inf, means[j]))
        out[name] = {"diff": float(means[j]), "stderr": float(errs[j]), "z": z,
                     "p": math.erfc(abs(z) / math.sqrt(2))}
    return out


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given): the k-th smallest is
    multiplied by (m − k + 1), then made monotone; rejecting where the adjusted value is below alpha
    keeps the family-wise error rate at alpha."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def encoder_scorer(model, data: "PreparedData", *splits: "EvalSplit", batch_size: int = 64,
                   show_progress: bool = True) -> CBFScorer:
    """Encode the items the `splits` read (sources and candidates) with `model`, once: the CBF scorer.
    Several splits (the parts of a multi-dataset folder) share one encoding of their items."""
    idx = np.unique(np.concatenate([needed_items(s) for s in splits]))
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
    part: str | None = None,
) -> dict:
    """Metrics of the text encoder `model` on the split `which` ("val" or "test"); `part`: one dataset
    of a multi-dataset folder (its users, its cold items as candidates), None the whole folder."""
    split = data.eval_split(which, part)
    scorer = encoder_scorer(model, data, split, batch_size=batch_size, show_progress=show_progress)
    return score_split(scorer, split, batch_users=batch_users, bootstrap=bootstrap, seed=seed,
                       show_progress=show_progress)


def evaluate_models(models: list[str], targets: dict[str, tuple["PreparedData", str | None]], which: str,
                    device: str | None = None, batch_size: int = 64, show_progress: bool = True,
                    **kwargs) -> dict[str, dict]:
    """{model: {target label: result}}: each model is loaded once and scored on every target, a
    (prepared folder, part) pair (part: one dataset of a multi-dataset folder, None the whole folder).
    The parts of one folder share one encoding of their items; a result's `seconds` is that encoding
    plus its own scoring."""
    from beeray.models import load_model

    by_data: dict[int, list[str]] = {}
    for label, (data, _) in targets.items():
        by_data.setdefault(id(data), []).append(label)
    out: dict[str, dict] = {}
    for name in models:
        model = load_model(name, device=device)
        out[name] = {}
        for labels in by_data.values():
            data = targets[labels[0]][0]
            splits = {label: data.eval_split(which, targets[label][1]) for label in labels}
            log.info(f"evaluating {name} on {', '.join(labels)} ({which})")
            t0 = time.perf_counter()
            scorer = encoder_scorer(model, data, *splits.values(), batch_size=batch_size, show_progress=show_progress)
            encode_s = time.perf_counter() - t0
            for label, split in splits.items():
                t1 = time.perf_counter()
                res = score_split(scorer, split, show_progress=show_progress, **kwargs)
                out[name][label] = {"model": name, "data": str(data.root), "split": which,
                                    **({"part": split.part or JOINT} if data.parts else {}), **res,
                                    "seconds": encode_s + time.perf_counter() - t1}
    return out
