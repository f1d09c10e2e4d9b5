"""The model folder's README.md: sentence-transformers' own card with Hub metadata (fast, no Ray).

The card writer runs on a saved tiny model; huggingface_hub reads the card back. `ModelCard.validate()`
posts the card to the Hub (network), so the metadata is validated offline instead: loading the card
parses its `model-index` into EvalResults (a malformed one raises), and the parsed values are compared
with the metrics the writer was given.
"""

from __future__ import annotations

import shutil

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import ModelCardData, eval_results_to_model_index, model_index_to_eval_results

from beeray import artifacts, training_record
from beeray.config import TrainConfig, to_dict
from beeray.metrics import METRICS

TAGS = {"beeformer", "sentence-transformers", "recommendation"}


def _metrics(val: float, test: float | None) -> dict:
    def res(v):
        return {"recall@20": v, "recall@50": v + 0.0731, "ndcg@100": v / 3, "users": 9, "stderr": {}}

    out = {"base": {"val": res(0.05)}, "trained": {"val": res(val)}}
    if test is not None:
        out["base"]["test"], out["trained"]["test"] = res(0.04), res(test)
    return out


@pytest.fixture
def model_dir(tiny_model_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


@pytest.fixture
def hub_calls(monkeypatch):
    """Every Hub look-up sentence-transformers' card data could make (base model, datasets)."""
    import sentence_transformers.base.model_card as st_card

    calls: list[str] = []
    monkeypatch.setattr(st_card, "get_model_info", lambda *a, **k: calls.append(f"model {a}") or 1 / 0)
    monkeypatch.setattr(st_card, "get_dataset_info", lambda *a, **k: calls.append(f"dataset {a}") or 1 / 0)
    return calls


def test_card_has_hub_metadata_and_the_test_metrics_as_model_index(model_dir, shop, hub_calls):
    from beeray.data.prepared import PreparedData

    data = PreparedData.load(shop)
    cfg = to_dict(TrainConfig(data=str(shop), model="all-MiniLM-L6-v2", out="runs/x", lr=1e-3))
    metrics = _metrics(0.2, 0.2345678901234567)
    training_record.write(model_dir, training_record.build(data, False, cfg["model"]))
    artifacts.model_card(model_dir, cfg, data.stats, metrics)

    card = ModelCard.load(model_dir / "README.md")
    meta = card.data
    assert TAGS <= set(meta.tags)
    assert meta.base_model == "sentence-transformers/all-MiniLM-L6-v2"  # the Hub id of the default model
    assert meta.license == "apache-2.0"  # from the base model's own (packaged) card
    assert meta.language == ["en"] and meta.library_name == "sentence-transformers"
    assert meta.datasets == ["synthetic"]
    # model-index: the trained model's test metrics, by value, with dataset and split named
    assert meta.model_name and len(meta.eval_results) == len(METRICS)
    got = {r.metric_name: r for r in meta.eval_results}
    assert set(got) == set(METRICS)
    for m in METRICS:
        assert got[m].metric_value == metrics["trained"]["test"][m]
        assert got[m].metric_type == m.replace("@", "_at_")
        assert (got[m].dataset_name, got[m].dataset_type, got[m].dataset_split) == ("synthetic", "synthetic", "test")
    # Offline validation: the metadata round-trips through huggingface_hub's own parsers.
    raw = meta.to_dict()
    name, results = model_index_to_eval_results(raw["model-index"])
    assert eval_results_to_model_index(name, results) == raw["model-index"]
    ModelCardData(**raw)
    # sentence-transformers' card body, then beeray's training record
    text = card.text
    assert "# sentence-transformers/all-MiniLM-L6-v2 fine-tuned with beeFormer on synthetic" in text
    record = text[text.index("## beeray training"):]
    assert data.stats["fingerprint"] in record
    split = data.stats["split"]
    assert f"{split['val_items'] + split['test_items']} cold items withheld" in record
    assert training_record.RECORD in record
    assert "```yaml" in record and "lr: 0.001" in record and "batch_composition: joint" in record
    assert "vancura2024beeformer" in text
    assert hub_calls == []
    # Idempotent: a resumed run that writes the card again gets the same file.
    first = (model_dir / "README.md").read_text()
    artifacts.model_card(model_dir, cfg, data.stats, metrics)
    assert (model_dir / "README.md").read_text() == first


def test_local_base_model_goodlens_parts_and_no_test_split(model_dir, tiny_model_dir, shop, hub_calls):
    """A base model given as a folder has no Hub id (nor a known license): both stay unset, and the card
    data does not try to find one on the Hub. A goodlens folder names its datasets; without test metrics
    (evaluate_test off) the validation split is the model-index."""
    from beeray.data.prepared import PreparedData

    stats = dict(PreparedData.load(shop).stats, dataset="goodlens",
                 per_dataset={"movielens": {"val_items": 20}, "goodbooks": {"val_items": 20}})
    cfg = to_dict(TrainConfig(data=str(shop), model=str(tiny_model_dir), out="runs/x", full_train=True,
                              evaluate_test=False))
    metrics = _metrics(0.31, None)
    artifacts.model_card(model_dir, cfg, stats, metrics)

    card = ModelCard.load(model_dir / "README.md")
    assert card.data.base_model is None and card.data.license is None
    assert TAGS <= set(card.data.tags)
    assert card.data.datasets == ["goodbooks", "movielens"]
    assert {r.dataset_split for r in card.data.eval_results} == {"validation"}
    assert {r.metric_name: r.metric_value for r in card.data.eval_results} == \
        {m: metrics["trained"]["val"][m] for m in METRICS}
    assert f"{stats['split']['test_items']} cold items withheld" in card.text  # full train: test items only
    assert training_record.RECORD not in card.text  # no record in this folder
    assert hub_calls == []


def test_hub_model_id():
    assert artifacts.hub_model_id("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert artifacts.hub_model_id("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    assert artifacts.hub_model_id("bert-base-uncased") == "bert-base-uncased"  # a transformers original
    assert artifacts.hub_model_id("/no/such/a/b") is None
