"""Batch composition on multi-dataset (goodlens) folders (issue 22, part 4; docs/method.md §3.4):
`joint` (the reference: a step's users from any dataset, negatives from the joint catalog; today's
training, bit for bit) and `per_dataset` (each step's users and I_b from one dataset)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import beeray.testing.gradcheck
import beeray.step
import beeray.train_loop
from beeray.cli import main
from beeray.config import TrainConfig, to_dict, train_config
from beeray.data.prepared import PreparedData
from beeray.encoder import TokenizedCatalog
from beeray.errors import BeerayError
from beeray.sampler import dataset_batches, joint_steps, sample_item_set, step_rng, worker_steps
from beeray.step import StepResult
from beeray.sampler import PAD_USER, composed_parts
from beeray.train_loop import Recipe
from beeray.trainer import train_table
from tests.helpers import autograd_grads, relative_error, two_pass_grads
from tests.test_goodlens import movielens_folder
from tests.test_step import make_texts


@pytest.fixture(scope="module")
def goodlens(tmp_path_factory):
    """A generated MovieLens folder and the synthetic shop, prepared together."""
    root = tmp_path_factory.mktemp("composition")
    ml_raw = movielens_folder(root / "raw-ml")
    (root / "raw-shop").mkdir()
    assert main(["prepare", "goodlens", "--input", f"movielens={ml_raw}", "--input", f"synthetic={root / 'raw-shop'}",
                 "--out", str(root / "gl")]) == 0
    return root / "gl"


def cfg_for(data, model, tmp_path, **kw) -> TrainConfig:
    base = dict(data=str(data), model=str(model), out=str(tmp_path / "run"), batch_size=16, m=40,
                max_seq_length=16, encode_batch_size=32, seed=5)
    return train_config(None, {**base, **kw})


def table_rows(data: PreparedData, world: int, split: bool):
    table = train_table(data, full=False, world=world, split=split)
    users = np.asarray(table.column("user").to_pylist(), dtype=np.int64)
    items = [np.asarray(x, dtype=np.int64) for x in table.column("items").to_pylist()]
    return users, items


def worker_plans(recipe: Recipe, epoch: int, world: int, split: bool):
    """Every worker's (dataset, user ids) per step, computed as the workers compute them, without Ray.

    joint: each worker gets a contiguous equal shard of the padded table (what streaming_split(equal=True)
    guarantees: equal row counts); per_dataset: every worker gets the whole table.
    """
    users, items = table_rows(recipe.data, world, split)
    plans = []
    for rank in range(world):
        if split:
            share = users.size // world
            mine = slice(rank * share, (rank + 1) * share)
            u, it = users[mine], items[mine]
        else:
            u, it = users, items
        worker = dataclasses.replace(recipe, rank=rank, world=world)
        plans.append([(part, u[rows]) for part, rows in worker.epoch_steps(epoch, u, it)])
    return plans, users[users != PAD_USER], items


@pytest.fixture(scope="module")
def recipes(goodlens, tiny_model_dir, tmp_path_factory):
    """A worker Recipe (model, tokenized catalog, pools) per (composition, parallel mode, world)."""
    tmp = tmp_path_factory.mktemp("recipes")
    out = {}
    for comp in ("joint", "per_dataset"):
        for mode in ("items", "data"):
            for world in (1, 2):
                cfg = cfg_for(goodlens, tiny_model_dir, tmp, batch_composition=comp, parallel=mode,
                              num_workers=world)
                out[comp, mode, world] = Recipe.setup(cfg, rank=0, world=world, device=torch.device("cpu"))
    return out


# ---------------------------------------------------------------- (a) exactness, I_b of one dataset

def test_sample_item_set_with_a_pool_draws_only_from_it():
    pool = np.r_[0:20, 35:50]
    for step in range(20):
        got = sample_item_set(np.array([3, 36, 49]), 60, 12, step_rng(1, 0, step), pool=pool)
        assert got.size == 12 and {3, 36, 49} <= set(got.tolist()) and set(got.tolist()) <= set(pool.tolist())
    # fewer pool rows than m: the whole pool; a positive outside the pool is an error
    np.testing.assert_array_equal(sample_item_set(np.array([1]), 60, 100, step_rng(1), pool=pool[:7]), pool[:7])
    with pytest.raises(ValueError, match="not in the pool"):
        sample_item_set(np.array([25]), 60, 12, step_rng(1), pool=pool)


def test_per_dataset_step_gradient_equals_autograd_and_its_item_set_is_one_datasets(tiny_model_dir, monkeypatch):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    catalog = TokenizedCatalog.build(model, make_texts(40), max_seq_length=32)
    pool = np.arange(20, 40)  # the step's dataset: catalog rows 20..39
    rng = np.random.default_rng(1)
    users = [20 + rng.choice(20, size=rng.integers(1, 5), replace=False) for _ in range(5)]
    seen: list[np.ndarray] = []

    def spy(*args, **kw):
        seen.append(sample_item_set(*args, **kw))
        return seen[-1]

    monkeypatch.setattr(beeray.step, "sample_item_set", spy)
    # the reference: one graph through the encoder over the same I_b (the same pooled draw)
    monkeypatch.setattr(beeray.testing.gradcheck, "sample_item_set", functools.partial(sample_item_set, pool=pool))
    ref, ref_loss = autograd_grads(model, catalog, users, 14, (2, 0, 1), 5, seed=3)
    got, res = two_pass_grads(model, catalog, users, 14, (2, 0, 1), 5, seed=3, pool=pool)
    assert res.items == 14 and res.loss == pytest.approx(ref_loss, rel=1e-6)
    assert relative_error(got, ref) < 1e-5
    (item_set,) = seen
    assert set(item_set.tolist()) <= set(pool.tolist())  # negatives of that dataset only
    assert set(np.concatenate(users).tolist()) <= set(item_set.tolist())


def test_pools_are_each_datasets_training_catalog_rows(recipes):
    recipe = recipes["per_dataset", "items", 2]
    data, catalog = recipe.data, recipe.catalog
    assert data.parts == ["movielens", "synthetic"] and len(recipe.pools) == 2
    assert sorted(np.concatenate(recipe.pools).tolist()) == list(range(len(catalog)))  # a partition
    for part, pool in enumerate(recipe.pools):
        assert (data.item_parts[catalog.items[pool]] == part).all()
        cold = set(data.cold_items("val", data.parts[part]).tolist()) | set(data.cold_items("test").tolist())
        assert not cold & set(catalog.items[pool].tolist())
    assert recipes["joint", "items", 2].pools is None


# ---------------------------------------------------------------- (b) every user once per epoch

@pytest.mark.parametrize("comp", ["joint", "per_dataset"])
@pytest.mark.parametrize("mode", ["items", "data"])
@pytest.mark.parametrize("world", [1, 2])
def test_every_training_user_exactly_once_per_epoch(recipes, comp, mode, world):
    recipe = recipes[comp, mode, world]
    data = recipe.data
    for epoch in (0, 1):
        plans, users, items = worker_plans(recipe, epoch, world, split=comp == "joint")
        assert len({len(p) for p in plans}) == 1  # the same number of steps on every worker
        seen = [u for plan in plans for _, step in plan for u in step.tolist() if u != PAD_USER]
        assert len(seen) == len(set(seen)) and sorted(seen) == sorted(users.tolist())
        if comp == "joint":
            continue
        part_of = {int(u): int(data.item_parts[it[0]]) for u, it in zip(*table_rows(data, 1, False))}
        for step in range(len(plans[0])):
            parts = {plans[r][step][0] for r in range(world)}
            users_parts = {part_of[u] for r in range(world) for u in plans[r][step][1].tolist()}
            assert users_parts <= {plans[r][step][0] for r in range(world)}  # each worker's users: its dataset
            if mode == "items":  # one shared I_b: every worker on the same dataset
                assert len(parts) == 1
            for r in range(world):
                assert {part_of[u] for u in plans[r][step][1].tolist()} <= {plans[r][step][0]}
            if mode == "items":
                n = sum(plans[r][step][1].size for r in range(world))
                assert 0 < n <= recipe.cfg.batch_size
        # both datasets are interleaved, not one after the other
        order = [p for p, _ in plans[0]]
        assert set(order) == {0, 1} and order != sorted(order) and order != sorted(order, reverse=True)


def test_per_dataset_batches_are_cut_per_dataset_and_proportional():
    parts = np.array([0] * 70 + [1] * 23 + [2] * 5)
    batches = dataset_batches(parts, 3, 10, seed=1, epoch=0)
    counts = Counter(p for p, _ in batches)
    assert counts == {0: 7, 1: 3, 2: 1}  # ceil(n_p / B) batches each
    for p, rows in batches:
        assert (parts[rows] == p).all() and 0 < rows.size <= 10
    assert sorted(np.concatenate([r for _, r in batches]).tolist()) == list(range(parts.size))
    # data mode, W = 3: 11 batches -> 4 steps each, the last round padded with one empty step
    plans = [worker_steps(batches, r, 3, "data") for r in range(3)]
    assert [len(p) for p in plans] == [4, 4, 4] and sum(p[-1][1].size == 0 for p in plans) == 1


def test_weights_scale_how_often_a_datasets_users_are_visited():
    parts = np.array([0] * 30 + [1] * 40)
    batches = dataset_batches(parts, 2, 8, seed=3, epoch=2, weights=[2.0, 0.5])
    visits = Counter(int(u) for _, rows in batches for u in rows)
    assert all(visits[u] == 2 for u in range(30))  # weight 2: two passes
    assert sum(visits[u] for u in range(30, 70)) == 20 and max(visits[u] for u in range(30, 70)) == 1  # 0.5: half
    for _, rows in batches:
        assert len(set(rows.tolist())) == rows.size  # never one user twice in a batch
    assert Counter(p for p, _ in batches) == {0: 2 * math.ceil(30 / 8), 1: math.ceil(20 / 8)}


# ---------------------------------------------------------------- (c) joint is today's training

# Recorded with the code before batch composition existed (fixed seeds).
BEFORE_ITEM_SETS = [
    ((np.array([3, 7, 8, 20, 41]), 50, 12, (42, 0, 3)), [3, 4, 7, 8, 20, 25, 26, 30, 32, 35, 41, 48]),
    ((np.array([3, 7, 8, 20, 41]), 50, 12, (42, 1, 0, 1)), [3, 7, 8, 14, 15, 16, 20, 22, 31, 32, 41, 44]),
    ((np.zeros(0, np.int64), 30, 6, (7, 2, 5)), [5, 15, 16, 26, 27, 29]),
]
BEFORE_STEPS = {0: [[4, 5, 8], [0, 1, 2], [6, 10, 3], [9, 7]], 1: [[6, 4, 9], [5, 8, 10], [7, 2, 3], [1, 0]]}


def test_joint_draws_are_the_ones_before_batch_composition():
    for (pos, n, m, key), want in BEFORE_ITEM_SETS:
        assert sample_item_set(pos, n, m, step_rng(*key)).tolist() == want
        assert sample_item_set(pos, n, m, step_rng(*key), pool=np.arange(n)).tolist() == want  # a full pool
    for rank, want in BEFORE_STEPS.items():  # 11 shard rows, 3 per step, seed 42, epoch 1, W = 2
        assert [s.tolist() for s in joint_steps(11, 3, 42, 1, rank, 2)] == want


def test_joint_steps_are_the_previous_formula_and_per_dataset_on_one_dataset_is_joint(shop, tiny_model_dir,
                                                                                      tmp_path):
    data = PreparedData.load(shop)
    assert data.parts == []
    for mode in ("items", "data"):
        joint = Recipe.setup(cfg_for(shop, tiny_model_dir, tmp_path, parallel=mode, num_workers=2), 1, 2,
                             torch.device("cpu"))
        per = Recipe.setup(cfg_for(shop, tiny_model_dir, tmp_path, parallel=mode, num_workers=2,
                                   batch_composition="per_dataset"), 1, 2, torch.device("cpu"))
        assert per.pools is None  # one dataset: per_dataset is joint
        users, items = table_rows(data, 2, True)
        shard = slice(users.size // 2, None)
        u, it = users[shard], items[shard]
        # the plain formula of train_epoch before batch composition
        order = step_rng(5, 3, 1, 2).permutation(u.size)
        n_steps = math.ceil(u.size / joint.local_batch)
        want = [order[s * joint.local_batch:(s + 1) * joint.local_batch].tolist() for s in range(n_steps)]
        for recipe in (joint, per):
            steps = recipe.epoch_steps(3, u, it)
            assert [part for part, _ in steps] == [None] * n_steps
            assert [rows.tolist() for _, rows in steps] == want


# ---------------------------------------------------------------- (d) resume replays the order

def test_the_per_dataset_plan_depends_only_on_seed_and_epoch(recipes):
    recipe = recipes["per_dataset", "items", 2]
    users, items = table_rows(recipe.data, 1, False)
    plan = [(p, users[r].tolist()) for p, r in recipe.epoch_steps(4, users, items)]
    # a restarted worker reads the table again, maybe in another order: the same users per step
    shuffled = np.random.default_rng(0).permutation(users.size)
    again = dataclasses.replace(recipe)
    replay = [(p, users[shuffled][r].tolist())
              for p, r in again.epoch_steps(4, users[shuffled], [items[i] for i in shuffled])]
    assert replay == plan
    other = [(p, users[r].tolist()) for p, r in recipe.epoch_steps(5, users, items)]
    assert [p for p, _ in other] != [p for p, _ in plan]  # another epoch, another interleaving
    for part in (0, 1):  # and each dataset's users in another order
        assert [u for p, s in other if p == part for u in s] != [u for p, s in plan if p == part for u in s]
    parts = np.array([0] * 50 + [1] * 30)
    a, b = dataset_batches(parts, 2, 7, 9, 1), dataset_batches(parts, 2, 7, 9, 1)
    assert [(p, r.tolist()) for p, r in a] == [(p, r.tolist()) for p, r in b]


@pytest.mark.parametrize("comp", ["joint", "per_dataset"])
def test_train_epoch_resumed_mid_epoch_runs_the_rest_of_the_same_steps(recipes, comp, monkeypatch):
    """The worker loop with the step replaced by a recorder: users, pool and key of every step."""
    calls: list[tuple] = []

    def fake_step(model, optimizer, catalog, batch, *, rng_key, pool, **kw):
        calls.append((rng_key, sorted(int(catalog.items[r[0]]) for r in batch),
                      None if pool is None else pool.tolist()))
        return StepResult(loss=0.0, items=1, users=len(batch), encoded=0)

    monkeypatch.setattr(beeray.train_loop, "train_step", fake_step)
    recipe = dataclasses.replace(recipes[comp, "items", 1])
    users, items = table_rows(recipe.data, 1, True)
    recipe.state = dataclasses.replace(recipe.state, epoch=0, step_in_epoch=0, steps=[], epoch_losses=[])
    recipe.start_schedule(users, items)  # what Recipe.run does first
    recipe.train_epoch(0, users, items, lambda *a: None)
    full, calls[:] = list(calls), []
    recipe.state = dataclasses.replace(recipe.state, epoch=0, step_in_epoch=3, steps=[], epoch_losses=[])
    recipe.train_epoch(0, users, items, lambda *a: None)
    assert calls == full[3:] and len(full) > 4
    if comp == "per_dataset":  # every step's positives and pool from one dataset
        data = recipe.data
        for _, first_items, pool in full:
            (part,) = set(data.item_parts[first_items].tolist())
            assert pool == recipe.pools[part].tolist()


# ---------------------------------------------------------------- (e) configuration

def test_config_errors_name_the_key_and_the_datasets(goodlens, shop, tiny_model_dir, tmp_path):
    gl, single = PreparedData.load(goodlens), PreparedData.load(shop)
    ok = cfg_for(goodlens, tiny_model_dir, tmp_path, batch_composition="per_dataset",
                 dataset_weights={"movielens": 2, "synthetic": 0.5})
    assert composed_parts(ok, gl) == ["movielens", "synthetic"]
    assert composed_parts(cfg_for(goodlens, tiny_model_dir, tmp_path), gl) == []  # joint, the default
    bad = cfg_for(goodlens, tiny_model_dir, tmp_path, batch_composition="per_dataset",
                  dataset_weights={"goodbooks": 2})
    with pytest.raises(BeerayError, match=r"dataset_weights: unknown dataset\(s\) 'goodbooks'; .* has movielens, "
                                          r"synthetic$"):
        composed_parts(bad, gl)
    with pytest.raises(BeerayError, match="dataset_weights: .* holds a single dataset"):
        composed_parts(cfg_for(shop, tiny_model_dir, tmp_path, batch_composition="per_dataset",
                               dataset_weights={"synthetic": 2}), single)
    # per_dataset on a single dataset is joint (documented), not an error
    assert composed_parts(cfg_for(shop, tiny_model_dir, tmp_path, batch_composition="per_dataset"), single) == []
    with pytest.raises(BeerayError, match="dataset_weights needs batch_composition: per_dataset"):
        cfg_for(goodlens, tiny_model_dir, tmp_path, dataset_weights={"movielens": 2})
    for weight in (0, -1, "x", True, float("nan")):
        with pytest.raises(BeerayError, match="dataset_weights.movielens must be a number > 0"):
            cfg_for(goodlens, tiny_model_dir, tmp_path, batch_composition="per_dataset",
                    dataset_weights={"movielens": weight})
    with pytest.raises(BeerayError, match="batch_composition must be joint or per_dataset"):
        cfg_for(goodlens, tiny_model_dir, tmp_path, batch_composition="mixed")


def test_resume_with_another_composition_is_refused_and_old_runs_resume():
    saved = to_dict(TrainConfig(data="d"))
    assert TrainConfig(data="d", batch_composition="per_dataset").resume_conflicts(saved) == \
        ["batch_composition: 'joint' -> 'per_dataset'"]
    weighted = TrainConfig(data="d", batch_composition="per_dataset", dataset_weights={"a": 2})
    assert weighted.resume_conflicts({**saved, "batch_composition": "per_dataset"}) == \
        ["dataset_weights: {} -> {'a': 2}"]
    old = {k: v for k, v in saved.items() if k not in ("batch_composition", "dataset_weights")}
    assert TrainConfig(data="d").resume_conflicts(old) == []  # a checkpoint from before these keys
