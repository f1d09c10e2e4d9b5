"""Heater trained as its authors do: validation after every few epochs, the best epoch kept and refitted,
the collaborative backbone chosen on validation, and a faster epoch that computes the same function."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from beeray.baselines import evaluate_baseline, training_matrix
from beeray.baselines.base import Context
from beeray.baselines.heater import Heater, HeaterNet, sgd
from tests.test_baselines import bag_of_words, write_series

SMALL = {"factors": 16, "batch_size": 256}


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Users buy within one or two product series, and an item's text names its series (an item split)."""
    data = write_series(tmp_path_factory.mktemp("heater") / "series", n_items=240, n_groups=12, n_users=240,
                        per_user=10, cold=40, words="red blue green lamp chair table sofa rug".split(),
                        words_per_text=3)
    return data, bag_of_words(data, dim=64)


def context(series, validate=None, which="val"):
    data, emb = series
    return Context(data, which, training_matrix(data, which), lambda: emb, seed=0, validate=validate)


class Curve:
    """A fake validation: the k-th call (epoch k · every) scores curve(epoch); a model seen before (the same
    scores for the same users) gets its earlier score back. Keeps each scored epoch's weights."""

    def __init__(self, series, every: int, curve):
        self.split, self.every, self.curve = series[0].eval_split("val"), every, curve
        self.seen: dict[str, float] = {}
        self.states: dict[int, dict] = {}
        self.calls = 0

    def __call__(self, model: Heater) -> float:
        scores = model.scores(self.split.source[:50], self.split.candidates)
        key = hashlib.sha1(np.ascontiguousarray(scores).tobytes()).hexdigest()
        if key not in self.seen:
            self.calls += 1
            epoch = self.calls * self.every
            self.states[epoch] = {k: v.clone() for k, v in model.net.state_dict().items()}
            self.seen[key] = self.curve(epoch)
        return self.seen[key]


def same_state(a: dict, b: dict, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].double(), b[k].double(), rtol=rtol, atol=atol)
                                        for k in a)


def test_validation_keeps_the_best_epoch_and_restores_it(series):
    fake = Curve(series, every=3, curve=lambda epoch: -abs(epoch - 15) / 100)
    model = Heater(epochs=30, eval_every=3, patience=0, **SMALL).fit(context(series, fake))
    assert fake.calls == 10  # validated after epochs 3, 6, ..., 30 (no early stop: patience 0, the authors')
    fit = model.fitted()
    assert list(fit.record["val_ndcg@100"]) == [str(e) for e in range(3, 31, 3)]
    assert fit.params["epochs"] == fit.record["best_epoch"] == 15 and fit.edges == {}
    assert model.params["epochs"] == 30  # the settings given are left as given
    # the restored model is the epoch-15 model: its weights, and its validation score is the best recorded
    assert same_state(model.net.state_dict(), fake.states[15], rtol=0)
    assert fake(model) == max(fit.record["val_ndcg@100"].values()) == 0.0 and fake.calls == 10


def test_a_best_last_epoch_is_an_edge_and_the_last_epoch_is_always_validated(series):
    fake = Curve(series, every=4, curve=lambda epoch: epoch)  # still improving at the end
    model = Heater(epochs=6, eval_every=4, **SMALL).fit(context(series, fake))
    assert list(model.fitted().record["val_ndcg@100"]) == ["4", "6"]
    assert model.fitted().params["epochs"] == 6 and model.fitted().edges == {"epochs": "high"}
    # a best first validation is the other end: nothing earlier was scored
    fake = Curve(series, every=2, curve=lambda epoch: -epoch)
    model = Heater(epochs=10, eval_every=2, patience=2, **SMALL).fit(context(series, fake))
    assert model.fitted().params["epochs"] == 2 and model.fitted().edges == {"epochs": "low"}


def test_patience_stops_after_that_many_validations_without_improvement(series):
    fake = Curve(series, every=2, curve=lambda epoch: -abs(epoch - 4))
    model = Heater(epochs=30, eval_every=2, patience=2, **SMALL).fit(context(series, fake))
    assert list(model.fitted().record["val_ndcg@100"]) == ["2", "4", "6", "8"] and model.fitted().params["epochs"] == 4


def test_the_refit_of_the_chosen_epochs_is_the_validated_run_at_that_epoch(series):
    """The test refit trains params["epochs"] epochs without validation: step for step the validated run's
    first epochs (same seed, same learning-rate steps), so it ends where the chosen epoch was."""
    fake = Curve(series, every=1, curve=lambda epoch: -abs(epoch - 12))  # past the lr decay after epoch 10
    validated = Heater(epochs=25, eval_every=1, patience=0, **SMALL).fit(context(series, fake))
    assert validated.fitted().params["epochs"] == 12 and len(validated.losses) == 25
    torch.rand(100)  # whatever ran in between (torch's global generator moved on), the seed decides
    refit = Heater(**validated.fitted().params).fit(context(series))
    assert len(refit.losses) == 12 and refit.losses == validated.losses[:12]
    assert same_state(refit.net.state_dict(), fake.states[12])
    assert np.allclose(refit.item_vectors, validated.item_vectors, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("backbone", ["als", "elsa"])
def test_both_backbones_fit_and_score(series, backbone):
    model = Heater(backbone=backbone, epochs=2, **SMALL).fit(context(series))
    split = series[0].eval_split("val")
    scores = model.scores(split.source, split.candidates)
    assert scores.shape == (split.source.shape[0], split.candidates.size) and np.isfinite(scores).all()
    assert scores.std(axis=1).min() > 0  # users rank the cold candidates, not one tie
    if backbone == "elsa":  # a user is x Â: the L1-normalised history times the item embeddings
        train = training_matrix(series[0], "val")
        x = train[:5].toarray()
        expected = (x / x.sum(axis=1, keepdims=True)) @ model.elsa_items
        assert np.allclose(model._elsa_users(train[:5]), expected, rtol=1e-5, atol=1e-7)
        assert not model.elsa_items[np.asarray(train.sum(axis=0)).ravel() == 0].any()  # cold items: no CF


def test_the_search_tries_both_backbones_and_refits_the_best_epoch(series):
    data, emb = series
    res = evaluate_baseline("heater", data, "test", params={"epochs": 4, "eval_every": 2, **SMALL},
                            item_embeddings=lambda: emb, log=lambda m: None, bootstrap=0)
    tried = {s["params"]["backbone"]: s for s in res["search"]}
    assert set(tried) == {"als", "elsa"}
    best = max(tried.values(), key=lambda s: s["val_ndcg@100"])
    assert res["params"]["backbone"] == best["params"]["backbone"]
    curve = best["trained"]["val_ndcg@100"]
    assert list(curve) == ["2", "4"] and best["val_ndcg@100"] == max(curve.values())
    assert res["params"]["epochs"] == best["trained"]["best_epoch"] == int(max(curve, key=curve.get))
    # validated after epochs 2 and 4 only: either is an end (nothing before the first validation was scored)
    assert res["edges"] == {"epochs": "high" if res["params"]["epochs"] == 4 else "low"}


class FiveExperts(torch.nn.Module):
    """The reference's layout (model.py:105-124): one dense layer per expert, summed in a loop."""

    def __init__(self, content_dim: int, cf: int, k: int, hidden: int) -> None:
        super().__init__()
        nn = torch.nn
        self.gate = nn.Linear(content_dim, k)
        self.experts = nn.ModuleList(nn.Linear(content_dim, cf) for _ in range(k))
        self.item_tower = nn.Sequential(nn.Linear(cf, hidden), nn.BatchNorm1d(hidden), nn.Tanh())
        self.user_tower = nn.Sequential(nn.Linear(cf, hidden), nn.BatchNorm1d(hidden), nn.Tanh())
        self.item_out, self.user_out = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-0.02, b=0.02)
                nn.init.zeros_(m.bias)

    def content(self, c: torch.Tensor) -> torch.Tensor:
        g = torch.tanh(self.gate(c))
        return torch.tanh(sum(g[:, j:j + 1] * torch.tanh(e(c)) for j, e in enumerate(self.experts)))


def test_stacked_experts_compute_the_mixture_of_experts():
    """One Linear for all experts is the reference's tanh(Σ_k g_k(c) · tanh(W_k c + b_k)), and a seed draws
    the same initial weights as the five layers of the reference's layout."""
    content_dim, cf, k = 24, 8, 5
    torch.manual_seed(0)
    net = HeaterNet(content_dim, cf, k, 16)
    torch.manual_seed(0)
    ref = FiveExperts(content_dim, cf, k, 16)
    assert torch.equal(net.experts.weight, torch.cat([e.weight for e in ref.experts]))
    for name in ("gate", "item_out", "user_out"):
        assert torch.equal(getattr(net, name).weight, getattr(ref, name).weight)
    with torch.no_grad():  # trained-looking weights, so that every term matters
        for p in ref.parameters():
            p.copy_(torch.randn_like(p))
        net.gate.load_state_dict(ref.gate.state_dict())
        net.experts.weight.copy_(torch.cat([e.weight for e in ref.experts]))
        net.experts.bias.copy_(torch.cat([e.bias for e in ref.experts]))
    c = torch.randn(7, content_dim)
    assert torch.allclose(net.content(c), ref.content(c), rtol=1e-6, atol=1e-6)
    assert net.content(c).std() > 0.1  # not a saturated constant


def test_weight_decay_is_the_reference_l2_term():
    """reg · Σ‖W‖² over the dense layers in the loss (the reference), or Heater's optimizer without it: the
    same steps."""
    torch.manual_seed(0)
    nets = [HeaterNet(12, 6, 3, 8) for _ in range(3)]
    with torch.no_grad():
        for p in nets[0].dense_parameters():
            p.add_(0.3 * torch.randn_like(p))  # weights large enough for the penalty to move them
    for net in nets[1:]:
        net.load_state_dict(nets[0].state_dict())
    reg, x, t = 0.5, torch.randn(16, 6), torch.randn(16)

    def plain(net):
        return torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)

    runs = [(nets[0], plain(nets[0]), reg), (nets[1], sgd(nets[1], lr=0.05, reg=reg), 0.0),
            (nets[2], plain(nets[2]), 0.0)]
    for _ in range(3):
        c = torch.randn(16, 12)
        for net, opt, penalty in runs:
            loss = ((net.users(x) * net.items(net.content(c))).sum(-1) - t).pow(2).mean() + penalty * net.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
    in_loss, decayed, unregularised = (net.state_dict() for net in nets)
    # (a bias before a batch norm gets no gradient from the loss, only float noise: hence atol)
    assert same_state(in_loss, decayed, rtol=1e-5, atol=1e-6)
    assert not same_state(in_loss, unregularised, rtol=1e-3, atol=1e-3)  # the penalty did move the weights
