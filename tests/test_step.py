"""The two-pass step computes exactly the gradient of plain end-to-end autograd."""

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import beeray.encoder as encoder
from beeray.encoder import TokenizedCatalog, encode
from tests.helpers import NoReplay, autograd_grads, relative_error, two_pass_grads

WORDS = "printer toner cable paper tent lamp stove boots sock jacket lens tripod camera bag strap".split()


def make_texts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 14))) for _ in range(n)]


@pytest.fixture()
def setup(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    texts = make_texts(40)
    catalog = TokenizedCatalog.build(model, texts, max_seq_length=32)
    rng = np.random.default_rng(0)
    users = [rng.choice(40, size=rng.integers(1, 5), replace=False) for _ in range(6)]
    return model, catalog, users


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_two_pass_equals_autograd_with_dropout(setup, chunk_size):
    model, catalog, users = setup
    assert model[0].auto_model.config.hidden_dropout_prob > 0
    ref, ref_loss = autograd_grads(model, catalog, users, 24, (1, 0, 3), chunk_size, seed=7)
    got, res = two_pass_grads(model, catalog, users, 24, (1, 0, 3), chunk_size, seed=7)
    assert res.loss == pytest.approx(ref_loss, rel=1e-6)
    assert res.items == 24 and res.users == len(users)
    # float32 through a 2-layer encoder: the two computations differ by round-off only
    assert relative_error(got, ref) < 1e-5
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6 * g.abs().max().item(), msg=name)


def test_without_rng_replay_gradients_differ(setup, monkeypatch):
    """The control: dropout without replay gives a different (wrong) gradient."""
    model, catalog, users = setup
    monkeypatch.setattr(encoder, "RandContext", NoReplay)
    ref, _ = autograd_grads(model, catalog, users, 24, (1, 0, 3), 8, seed=7)
    got, _ = two_pass_grads(model, catalog, users, 24, (1, 0, 3), 8, seed=7)
    assert relative_error(got, ref) > 1e-2


def test_loss_and_grads_do_not_depend_on_catalog_beyond_item_set(setup):
    """Appending 500 unrelated items to the catalog changes nothing when I_b is the same.

    m=1 is below the number of positives, so I_b is exactly the positives in both catalogs.
    """
    model, catalog, users = setup
    big = TokenizedCatalog.build(model, make_texts(40) + make_texts(500, seed=9), max_seq_length=32)
    small_g, small = two_pass_grads(model, catalog, users, 1, (0, 0, 0), 8, seed=3)
    big_g, big_res = two_pass_grads(model, big, users, 1, (0, 0, 0), 8, seed=3)
    assert small.items == big_res.items == np.unique(np.concatenate(users)).size
    assert big_res.loss == pytest.approx(small.loss, rel=1e-6)
    assert relative_error(big_g, small_g) < 1e-6


def test_catalog_features_match_sentence_transformers_encode(setup):
    """Pre-tokenized, length-bucketed chunks give the embeddings model.encode gives."""
    model, catalog, _ = setup
    model.eval()
    texts = make_texts(40)
    items = np.arange(40)
    with torch.no_grad():
        ours = torch.cat([encode(model, catalog.features(items[pos], "cpu"), amp=False)
                          for pos in [np.arange(0, 20), np.arange(20, 40)]])
    model.max_seq_length = 32
    ref = model.encode(texts, convert_to_tensor=True, batch_size=7)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_attention_dropout_switch_keeps_hidden_dropout(tiny_model_dir):
    from beeray.models import set_attention_dropout

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    assert set_attention_dropout(model, 0.0) == 2  # one per layer of the tiny BERT
    drops = {n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert all(p == 0.0 for n, p in drops.items() if n.endswith("attention.self.dropout"))
    assert any(p == 0.1 for n, p in drops.items() if not n.endswith("attention.self.dropout"))
