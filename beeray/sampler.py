"""Which users and items each training step looks at: the epoch's batches of users (joint or one
dataset per step, docs/method.md §3.4) and I_b, the batch's positives plus uniform negatives (§2.1)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from beeray.errors import BeerayError

if TYPE_CHECKING:  # annotations only: the sampler needs nothing of them but attributes
    from beeray.config import TrainConfig
    from beeray.data.prepared import PreparedData

PAD_USER = -1  # rows added so the dataset splits evenly across workers; they hold no user


def composed_parts(cfg: TrainConfig, data: PreparedData) -> list[str]:
    """The datasets a `per_dataset` run composes its steps from; [] = joint steps.

    Checks `dataset_weights` against the folder (one-line BeerayError). On a single-dataset folder
    per_dataset is joint: every step is from that one dataset already.
    """
    if cfg.dataset_weights:
        if not data.parts:
            raise BeerayError(f"dataset_weights: {data.root} holds a single dataset, nothing to weigh "
                              f"(weights need a multi-dataset folder: beeray prepare goodlens)")
        unknown = sorted(str(k) for k in cfg.dataset_weights if str(k) not in data.parts)
        if unknown:
            raise BeerayError(f"dataset_weights: unknown dataset(s) {', '.join(map(repr, unknown))}; "
                              f"{data.root} has {', '.join(data.parts)}")
    return list(data.parts) if cfg.batch_composition == "per_dataset" else []


def step_rng(*key: int) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, step, ...), so every process can replay a draw."""
    return np.random.default_rng([int(k) for k in key])


def sample_item_set(positives: np.ndarray, n_items: int, m: int, rng: np.random.Generator,
                    pool: np.ndarray | None = None) -> np.ndarray:
    """I_b: all `positives` plus negatives drawn uniformly without replacement until |I_b| = m.

    `n_items` is the size of the training catalog: indices are catalog rows, so negatives can
    only be items the run trains on. `pool` (sorted, unique catalog rows, e.g. one dataset's rows of
    a goodlens catalog): draw the negatives from these rows only; every positive must be one of them.
    The draw is then the same draw over the pool's positions (pool=None is the whole catalog, and a
    pool of all rows gives exactly the same I_b). When the positives alone reach m they are all kept and no
    negative is drawn: the step then costs |positives| encodes instead of m. (The reference
    implementation keeps all positives too, but still draws max(1, m - |positives|) negatives,
    with replacement.)
    Returns sorted, unique item indices. Work is O(m log m), independent of `n_items`
    beyond the draw itself.
    """
    if pool is not None:
        pool = np.asarray(pool, dtype=np.int64)
        pos = np.unique(np.asarray(positives, dtype=np.int64))
        at = np.searchsorted(pool, pos)
        if not (at < pool.size).all() or not (pool[np.minimum(at, pool.size - 1)] == pos).all():
            raise ValueError("a positive item is not in the pool of rows negatives are drawn from")
        return pool[sample_item_set(at, pool.size, m, rng)]
    pos = np.unique(np.asarray(positives, dtype=np.int64))
    if pos.size and (pos[0] < 0 or pos[-1] >= n_items):
        raise ValueError(f"positive item index out of range [0, {n_items})")
    need = min(m, n_items) - pos.size
    if need <= 0:
        return pos
    # Draw ranks among the non-positive items, then map rank k to the k-th item not in `pos`:
    # the k-th free item is k + (number of positives at or below it).
    ranks = np.sort(rng.choice(n_items - pos.size, size=need, replace=False))
    shifted = pos - np.arange(pos.size)
    negatives = ranks + np.searchsorted(shifted, ranks, side="right")
    return np.union1d(pos, negatives)


def batch_targets(user_items: list[np.ndarray], item_set: np.ndarray) -> np.ndarray:
    """Dense B x |I_b| binary targets X_b = X[U][:, I_b] (float32)."""
    x = np.zeros((len(user_items), item_set.size), dtype=np.float32)
    for row, items in enumerate(user_items):
        cols = np.searchsorted(item_set, items)
        ok = (cols < item_set.size) & (item_set[np.minimum(cols, item_set.size - 1)] == items)
        x[row, cols[ok]] = 1.0
    return x


# ---------------------------------------------------------------- the epoch's batches of users

PER_DATASET_KEY = 2  # last element of the per_dataset plan's draws: apart from I_b (3-4 keys) and dropout (…, 1)


def joint_steps(n_rows: int, local_batch: int, seed: int, epoch: int, rank: int, world: int) -> list[np.ndarray]:
    """`joint` composition: this worker's shard rows in a seeded order, cut into batches of
    `local_batch` (the last one may be short). Shards are equal (padding rows), so every worker
    gets the same number of steps; a step's users come from any dataset of the folder."""
    order = step_rng(seed, epoch, rank, world).permutation(n_rows)
    return [order[s * local_batch:(s + 1) * local_batch] for s in range(math.ceil(n_rows / local_batch))]


def dataset_batches(user_parts: np.ndarray, n_parts: int, batch_size: int, seed: int, epoch: int,
                    weights: list[float] | None = None) -> list[tuple[int, np.ndarray]]:
    """`per_dataset` composition: the epoch's global batches, each of one dataset, in interleaved order.

    `user_parts[i]`: the dataset (0..n_parts-1) of row i of the training table. Each dataset's rows
    are shuffled and cut into batches of `batch_size` rows of that dataset only (its last batch may
    be short); the batches of all datasets are then interleaved in a seeded random order in which
    each dataset appears as often as it has batches (sentence-transformers' proportional sampler).
    Weight w of a dataset: its rows are visited round(w * n) times per epoch: floor(w) full shuffled
    passes plus the first round(frac(w) * n) rows of one more shuffled pass, each pass cut into batches
    on its own (no row twice in a batch). All weights 1 (the default): every row exactly once.
    Returns (dataset, rows) per batch. Depends only on (seed, epoch) and the inputs: every worker
    computes the same plan, and a run resumed mid-epoch replays it.
    """
    weights = [1.0] * n_parts if weights is None else list(weights)
    per_part: list[list[np.ndarray]] = []
    for part in range(n_parts):
        rows = np.flatnonzero(user_parts == part)
        visits = int(math.floor(weights[part] * rows.size + 0.5))
        batches: list[np.ndarray] = []
        for n_pass in range(math.ceil(visits / rows.size) if rows.size else 0):
            take = min(rows.size, visits - n_pass * rows.size)
            seq = rows[step_rng(seed, epoch, part, n_pass, PER_DATASET_KEY).permutation(rows.size)[:take]]
            batches.extend(seq[i:i + batch_size] for i in range(0, take, batch_size))
        per_part.append(batches)
    labels = np.concatenate([np.full(len(b), p, dtype=np.int64) for p, b in enumerate(per_part)] or
                            [np.zeros(0, np.int64)])
    labels = step_rng(seed, epoch, PER_DATASET_KEY).permutation(labels)
    taken = [0] * n_parts
    out = []
    for part in labels.tolist():
        out.append((part, per_part[part][taken[part]]))
        taken[part] += 1
    return out


def worker_steps(batches: list[tuple[int, np.ndarray]], rank: int, world: int,
                 mode: str) -> list[tuple[int, np.ndarray]]:
    """This worker's (dataset, rows) per step of a `dataset_batches` plan; the same count on every worker.

    items mode: step k is global batch k, split across the W workers (np.array_split; a worker may
    get no rows of a short batch), so that the shared I_b is from that batch's dataset.
    data mode: each worker runs its own step: round j gives batch j*W + r to worker r; the workers
    left without a batch in the last round run an empty step (as today's padding rows make them),
    drawn from the dataset of the round's first batch.
    """
    if mode == "items":
        return [(part, np.array_split(rows, world)[rank]) for part, rows in batches]
    out = []
    for j in range(math.ceil(len(batches) / world)):
        k = j * world + rank
        out.append(batches[k] if k < len(batches) else (batches[j * world][0], np.zeros(0, np.int64)))
    return out
