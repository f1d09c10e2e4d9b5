"""Scaffolding for beeray's tests and benchmarks, not part of its API: a tiny random model that needs
no download, and (beeray.testing.gradcheck) the exactness check of the two-pass step. The tests and
benchmarks/ (which must run where tests/ is absent, e.g. on a lent GPU) import it from a source
checkout; the wheel leaves it out (pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

from beeray.models import DEFAULT_MODEL, resolve_model


def tiny_model(path: str | Path, *, hidden: int = 32, layers: int = 2, dropout: float = 0.1, seed: int = 0):
    """Write and load a small random-initialised BERT sentence Transformer (tests, benchmarks; no download).

    It reuses the packaged MiniLM tokenizer so texts tokenize realistically.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=512,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    hf_dir = path / "hf"
    BertModel(cfg).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    word = Transformer(str(hf_dir), max_seq_length=128)
    pool = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[word, pool], device="cpu")
    model.save(str(path / "st"))
    return SentenceTransformer(str(path / "st"), device="cpu")
