"""The ELSA baseline is the authors' ELSA: their loss (no ReLU), NAdam, Xavier-uniform start, and it learns.

The reference formula is written out here from the authors' code, not taken from beeray:
elsarec 0.1.4 (github.com/recombee/ELSA, elsa/elsa.py: forward lines 204-207, NMSELoss lines 455-461)
on rows L1-normalised as the beeFormer reference does (github.com/recombee/beeformer, models.py 162-163).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from beeray.baselines import elsa as elsa_mod  # attributes looked up in the tests: each fails on its own


def unit(m: torch.Tensor) -> torch.Tensor:
    return m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def authors_loss(x: torch.Tensor, w: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """mse_loss(normalize(x Â Âᵀ − x), normalize(x), reduction='mean') with x's rows L1-normalised;
    `relu=True` is the loss the baseline trained before (beeray.loss.nmse_loss), for contrast."""
    x = x / x.sum(dim=-1, keepdim=True)
    a = unit(w)
    pred = x @ a @ a.T - x
    if relu:
        pred = pred.clamp_min(0)
    return (unit(pred) - unit(x)).pow(2).mean()  # the mean over users x items


def loss_and_grad(x: np.ndarray, w: torch.Tensor, relu: bool = False):
    w = w.detach().double().clone().requires_grad_(True)
    loss = authors_loss(torch.from_numpy(x).double(), w, relu)
    loss.backward()
    return loss.item(), w.grad


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def random_interactions(n_users: int, n_items: int, per_user: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    cols = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    rows = np.repeat(np.arange(n_users), per_user)
    return sp.csr_matrix((np.ones(cols.size, np.float32), (rows, cols)), shape=(n_users, n_items))


class FirstStep:
    """Spy on every optimizer step: the first one's optimizer, weights before it and their gradient."""

    def __init__(self):
        self.optimizer = self.weights = self.grad = None

    def __call__(self, optimizer, args, kwargs):
        if self.optimizer is None:
            p = optimizer.param_groups[0]["params"][0]
            self.optimizer, self.weights, self.grad = optimizer, p.detach().clone(), p.grad.detach().clone()

    def __enter__(self):
        self.handle = register_optimizer_step_pre_hook(self)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def first_step(train: sp.csr_matrix, factors: int, lr: float = 0.1, seed: int = 0) -> FirstStep:
    """One full-batch step of the baseline's training (one epoch, every user in the batch)."""
    with FirstStep() as spy:
        elsa_mod.train_elsa(train, factors, lr=lr, epochs=1, batch_size=train.shape[0], seed=seed)
    return spy


def test_a_training_step_is_the_authors_loss_and_gradient():
    train = random_interactions(40, 30, 5, seed=1)
    rows = elsa_mod.training_rows(train)
    assert np.allclose(np.asarray(rows.sum(axis=1)).ravel(), 1.0)  # L1-normalised users (beeformer)
    x = torch.from_numpy(rows.toarray())
    model = elsa_mod.new_model(30, 8, lr=0.1, seed=3)
    w0 = model.get_items_embeddings().clone()
    loss, _ = model.train_step(x, x)  # what elsarec's fit does with each batch
    want_loss, want_grad = loss_and_grad(train.toarray(), w0)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    assert rel(next(model.parameters()).grad, want_grad) < 1e-5
    # train_elsa's one full-batch epoch is that step: the same gradient at the same seeded start
    spy = first_step(train, 8, seed=3)
    assert torch.equal(spy.weights, w0)
    assert rel(spy.grad, want_grad) < 1e-5


def test_b_no_relu_in_training_where_predictions_are_negative():
    """About half of x Â Âᵀ − x is negative at a random start; a ReLU in the loss (what the baseline
    trained with before) zeroes their gradient, the authors' loss keeps it."""
    train = random_interactions(60, 40, 6, seed=2)
    spy = first_step(train, 8, seed=0)
    x = torch.from_numpy(train.toarray()).double()
    x = x / x.sum(dim=-1, keepdim=True)
    a = unit(spy.weights.double())
    assert ((x @ a @ a.T - x) < 0).double().mean() > 0.3  # the case discriminates ...
    _, with_relu = loss_and_grad(train.toarray(), spy.weights, relu=True)
    _, want = loss_and_grad(train.toarray(), spy.weights)
    assert rel(with_relu, want) > 0.1  # ... the two gradients differ clearly
    assert rel(spy.grad, want) < 1e-5


def test_c_nadam_and_a_seeded_xavier_uniform_start():
    n_items, factors, lr = 300, 64, 0.03
    train = random_interactions(20, n_items, 4, seed=3)
    spy = first_step(train, factors, lr=lr, seed=5)
    assert type(spy.optimizer) is torch.optim.NAdam and spy.optimizer.defaults["lr"] == lr
    w = spy.weights.numpy()
    bound = np.sqrt(6 / (n_items + factors))  # xavier_uniform_ on an (n_items, factors) tensor
    assert w.shape == (n_items, factors)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.03)  # uniform, not normal
    assert torch.equal(first_step(train, factors, lr=lr, seed=5).weights, spy.weights)
    assert not torch.equal(first_step(train, factors, lr=lr, seed=6).weights, spy.weights)


def test_d_elsa_ranks_held_out_items_of_a_planted_structure():
    """Users consume from one of 6 clusters of 20 items: ELSA ranks the held-out ones of their cluster."""
    from beeray.baselines.base import Context

    rng = np.random.default_rng(0)
    n_users, n_items, clusters, k = 300, 120, 6, 10
    members = rng.permutation(n_items).reshape(clusters, -1)
    seen, held = [], []
    for u in range(n_users):
        items = rng.choice(members[u % clusters], 8, replace=False)
        seen.append(items[:6])
        held.append(items[6:])
    train = sp.csr_matrix((np.ones(6 * n_users, np.float32), np.concatenate(seen), np.arange(0, 6 * n_users + 1, 6)),
                          shape=(n_users, n_items))
    params = {"factors": 16, "lr": 0.1, "epochs": 10, "batch_size": 64}
    model = elsa_mod.ELSA(**params).fit(Context(data=None, split="val", train=train, seed=0))
    scores = model.scores(train, np.arange(n_items))
    scores[train.toarray() > 0] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    recall = np.mean([np.isin(held[u], top[u]).mean() for u in range(n_users)])
    chance = k / (n_items - 6)
    assert recall > 0.5 and recall > 5 * chance, recall
    again = elsa_mod.ELSA(**params).fit(Context(data=None, split="val", train=train, seed=0))
    assert np.array_equal(again.embeddings, model.embeddings)  # deterministic on the CPU


def test_grid_is_ladders_around_the_authors_defaults():
    cls = elsa_mod.ELSA
    for key, ladder in cls.grid.items():
        assert ladder == sorted(ladder) and cls.defaults[key] in ladder[1:-1], key
        assert cls.edges[key], key
    assert cls.defaults["lr"] == 0.1  # elsarec's default
