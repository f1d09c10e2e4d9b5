"""Which items one training step looks at: the batch's positives plus uniform negatives (docs/method.md §2.1)."""

from __future__ import annotations

import numpy as np


def step_rng(*key: int) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, step, ...), so every process can replay a draw."""
    return np.random.default_rng([int(k) for k in key])


def sample_item_set(positives: np.ndarray, n_items: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """I_b: all `positives` plus negatives drawn uniformly without replacement until |I_b| = m.

    `n_items` is the size of the training catalog: indices are catalog rows, so negatives can
    only be items the run trains on. When the positives alone reach m they are all kept and no
    negative is drawn: the step then costs |positives| encodes instead of m. (The reference
    implementation keeps all positives too, but still draws max(1, m - |positives|) negatives,
    with replacement.)
    Returns sorted, unique item indices. Work is O(m log m), independent of `n_items`
    beyond the draw itself.
    """
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
