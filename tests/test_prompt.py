"""Prompts (issue 24 part 5): TrainConfig.prompt is put before every item text the training step
tokenizes and every text evaluation encodes, exactly once, and the saved model folder applies it by
itself (sentence-transformers' prompts + default_prompt_name). Without Ray: the worker's Recipe, the
tokenized catalog and the saved folder's encode, with a spy on the tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from beeray.config import train_config
from beeray.data.prepared import PreparedData
from beeray.encoder import TokenizedCatalog
from beeray.errors import BeerayError
from beeray.evaluator import encode_items, evaluate
from beeray.models import PROMPT_NAME, load_model, set_prompt
from beeray.train_loop import Recipe

PROMPT = "passage: "


@pytest.fixture()
def tokenized(monkeypatch, tiny_model_dir):
    """Every text handed to the (fast) tokenizer class while the test runs."""
    tok = SentenceTransformer(str(tiny_model_dir), device="cpu").tokenizer
    seen: list[str] = []
    call = type(tok).__call__

    def spy(self, text=None, *args, **kwargs):
        seen.extend([text] if isinstance(text, str) else list(text))
        return call(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tok), "__call__", spy)
    return seen


def carries_prompt_once(text: str) -> bool:
    return text.startswith(PROMPT) and PROMPT not in text[len(PROMPT):]


def recipe_for(data, model, tmp_path, **kw) -> Recipe:
    cfg = train_config(None, dict(data=str(data), model=str(model), out=str(tmp_path / "run"), batch_size=16, m=40,
                                  max_seq_length=32, encode_batch_size=32, seed=5, **kw))
    return Recipe.setup(cfg, rank=0, world=1, device=torch.device("cpu"))


def test_training_tokenizes_every_item_text_after_the_prompt_once(shop, tiny_model_dir, tmp_path, tokenized):
    data = PreparedData.load(shop)
    plain = recipe_for(shop, tiny_model_dir, tmp_path)  # first: the prompt must not reuse this cached catalog
    tokenized.clear()
    recipe = recipe_for(shop, tiny_model_dir, tmp_path, prompt=PROMPT)
    texts = data.train_texts(data.train_items(False))
    assert sorted(tokenized) == sorted(PROMPT + t for t in texts)  # each text once, each after the prompt
    assert all(carries_prompt_once(t) for t in tokenized)
    # the step's token ids (the only thing it encodes) start with the prompt's, right after [CLS]
    prompt_ids = recipe.model.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    catalog = recipe.catalog
    for row in range(len(catalog)):
        ids = catalog.ids[catalog.offsets[row]:catalog.offsets[row + 1]].tolist()
        assert ids[1:1 + len(prompt_ids)] == prompt_ids
    assert plain.catalog.offsets[-1] < catalog.offsets[-1]  # a catalog of its own (the cache key has the prompt)
    # and a later run with the prompt maps the cached one (nothing tokenized again). A freshly loaded
    # model, as every run and worker has: a tokenizer that has truncated once digests differently.
    tokenized.clear()
    again = TokenizedCatalog.cached(load_model(str(tiny_model_dir), device="cpu", prompt=PROMPT), data, 32)
    assert tokenized == [] and np.array_equal(again.ids, catalog.ids)


def test_the_saved_model_applies_the_prompt_by_itself(shop, tiny_model_dir, tmp_path, tokenized):
    recipe = recipe_for(shop, tiny_model_dir, tmp_path, prompt=PROMPT)
    recipe.save(tmp_path / "ckpt")  # the folder beeray train copies to OUT/model
    folder = SentenceTransformer(str(tmp_path / "ckpt" / "model"), device="cpu")
    assert folder.default_prompt_name == PROMPT_NAME and folder.prompts[PROMPT_NAME] == PROMPT
    texts = ["red tent", "boots and socks", "a lens"]
    tokenized.clear()
    got = folder.encode(texts)
    encoded = [t for t in tokenized if t != PROMPT]  # sentence-transformers measures the bare prompt once
    assert sorted(encoded) == sorted(PROMPT + t for t in texts)
    base = SentenceTransformer(str(tiny_model_dir), device="cpu")
    np.testing.assert_allclose(got, base.encode([PROMPT + t for t in texts]), rtol=1e-5, atol=1e-6)


def test_evaluation_encodes_every_text_after_the_prompt_once(shop, tiny_model_dir, tokenized):
    data = PreparedData.load(shop)
    model = load_model(str(tiny_model_dir), device="cpu", prompt=PROMPT)
    tokenized.clear()
    evaluate(model, data, "val", show_progress=False, bootstrap=0)
    encoded = [t for t in tokenized if t != PROMPT]
    assert encoded and all(carries_prompt_once(t) for t in encoded)
    assert set(encoded) <= {PROMPT + t for t in data.texts}  # the items it scores, each after the prompt
    # without a prompt nothing changes: the texts as they are
    tokenized.clear()
    encode_items(load_model(str(tiny_model_dir), device="cpu"), ["red tent"], show_progress=False)
    assert tokenized == ["red tent"]


def test_a_pooling_that_drops_prompt_tokens_is_refused(tiny_model_dir):
    model = load_model(str(tiny_model_dir), device="cpu")
    model[1].include_prompt = False
    with pytest.raises(BeerayError, match=r"^prompt: this model's Pooling leaves prompt tokens out"):
        set_prompt(model, PROMPT)
