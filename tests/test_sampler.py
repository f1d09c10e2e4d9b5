import numpy as np
import pytest

from beeray.sampler import batch_targets, sample_item_set, step_rng


@pytest.mark.parametrize("n_items,m,n_pos", [(50, 20, 7), (1000, 64, 0), (30, 30, 10), (100, 10, 25)])
def test_item_set_contains_positives_no_repeats(n_items, m, n_pos):
    rng = np.random.default_rng(1)
    pos = rng.choice(n_items, n_pos, replace=False)
    for step in range(20):
        s = sample_item_set(pos, n_items, m, step_rng(3, 0, step))
        assert np.unique(s).size == s.size  # never repeats an item
        assert np.isin(pos, s).all()  # always every positive
        assert s.size == max(min(m, n_items), n_pos)
        assert s.min() >= 0 and s.max() < n_items


def test_item_set_reproducible_and_varies_by_step():
    pos = np.array([3, 9, 40])
    a = sample_item_set(pos, 500, 50, step_rng(42, 1, 7))
    b = sample_item_set(pos, 500, 50, step_rng(42, 1, 7))
    c = sample_item_set(pos, 500, 50, step_rng(42, 1, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_negatives_are_uniform():
    # Each non-positive item should be drawn with probability (m - |pos|) / (n - |pos|).
    n, m, pos = 40, 12, np.array([0, 5, 39])
    counts = np.zeros(n)
    trials = 4000
    for t in range(trials):
        counts[sample_item_set(pos, n, m, step_rng(0, t))] += 1
    free = np.setdiff1d(np.arange(n), pos)
    expected = trials * (m - pos.size) / (n - pos.size)
    assert counts[pos].min() == trials
    assert np.abs(counts[free] - expected).max() < 5 * np.sqrt(expected)


def test_batch_targets():
    item_set = np.array([2, 5, 7, 11])
    x = batch_targets([np.array([5, 11]), np.array([2]), np.array([], dtype=np.int64)], item_set)
    np.testing.assert_array_equal(x, [[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
