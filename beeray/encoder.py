"""Turning item texts into embeddings for the step: tokenize once, pad per chunk, replay dropout.

The reference implementation tokenizes its whole catalog once per run, padded to one width (the
longest text, capped at max_seq_length), and encodes each step's items in catalog order; on
short-text data most of its compute is spent on padding. Here the training catalog is tokenized
once too (flat id array + offsets), but each chunk is padded only to its own longest text, with
chunks formed from texts of similar length.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from beeray.models import embedding_dim

try:  # sentence-transformers >= 6
    from sentence_transformers.base.losses.gradcache import RandContext
except ImportError:  # pragma: no cover - older sentence-transformers
    from sentence_transformers.losses.CachedMultipleNegativesRankingLoss import RandContext


@dataclass(frozen=True)
class TokenizedCatalog:
    """Token ids of the training catalog's texts, truncated to max_seq_length, stored flat.

    Row r holds the text of item `items[r]` (an index into the prepared data's items). The
    training catalog is exactly the items of the interaction file a run trains on (docs/method.md
    §2.1), so validation and test cold items are never tokenized here; the step and the sampler
    only ever see row numbers of this catalog.
    """

    ids: np.ndarray  # int32, all rows' token ids concatenated
    offsets: np.ndarray  # int64, row r is ids[offsets[r]:offsets[r+1]]
    items: np.ndarray  # int64, sorted: the prepared-data item index of each row
    pad_id: int
    pad_left: bool

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return self.offsets.size - 1

    def rows(self, items: np.ndarray) -> np.ndarray:
        """Catalog rows of prepared-data item indices; an item outside the catalog is an error."""
        items = np.asarray(items, dtype=np.int64)
        rows = np.searchsorted(self.items, items)
        found = rows < self.items.size
        found[found] = self.items[rows[found]] == items[found]
        if not found.all():
            missing = items[~found][:5].tolist()
            raise ValueError(f"items {missing} are not in the training catalog ({self.items.size} items)")
        return rows

    @classmethod
    def build(cls, model, texts: list[str], max_seq_length: int, items: np.ndarray | None = None,
              batch: int = 2048, show_progress: bool = False) -> "TokenizedCatalog":
        """Tokenize `texts`; `items` names the prepared-data item of each text (default: 0..n-1)."""
        from tqdm.auto import tqdm

        items = np.arange(len(texts), dtype=np.int64) if items is None else np.asarray(items, dtype=np.int64)
        if items.size != len(texts) or (items.size > 1 and not (np.diff(items) > 0).all()):
            raise ValueError("items must be strictly increasing, one per text")
        tok = model.tokenizer
        pieces: list[list[int]] = []
        starts = range(0, len(texts), batch)
        for s in tqdm(starts, desc="tokenize", disable=not show_progress, unit="batch"):
            enc = tok(list(texts[s:s + batch]), truncation=True, max_length=max_seq_length,
                      padding=False, return_attention_mask=False, return_token_type_ids=False)
            pieces.extend(enc["input_ids"])
        lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        ids = np.fromiter((t for p in pieces for t in p), dtype=np.int32, count=int(offsets[-1]))
        return cls(ids=ids, offsets=offsets, items=items, pad_id=int(tok.pad_token_id or 0),
                   pad_left=getattr(tok, "padding_side", "right") == "left")

    def features(self, items: np.ndarray, device: torch.device | str) -> dict:
        """Padded input_ids/attention_mask for `items`, padded to the longest of them only."""
        lens = self.lengths[items]
        width = int(lens.max())
        input_ids = np.full((items.size, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((items.size, width), dtype=np.int64)
        for row, (item, n) in enumerate(zip(items, lens)):
            cols = slice(width - n, width) if self.pad_left else slice(0, n)
            input_ids[row, cols] = self.ids[self.offsets[item]:self.offsets[item] + n]
            mask[row, cols] = 1
        return {
            "input_ids": torch.from_numpy(input_ids).to(device),
            "attention_mask": torch.from_numpy(mask).to(device),
        }


def plan_chunks(items: np.ndarray, lengths: np.ndarray, chunk_size: int) -> list[np.ndarray]:
    """Split `items` into chunks of at most chunk_size texts of similar token length.

    Returns positions into `items` (not item ids), so callers can scatter results back.
    """
    order = np.argsort(lengths[items], kind="stable")
    return [order[s:s + chunk_size] for s in range(0, order.size, chunk_size)]


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def encode(model, features: dict, amp: bool) -> torch.Tensor:
    device = features["input_ids"].device
    with autocast(device, amp):
        out = model(dict(features))["sentence_embedding"]
    return out.float()


def encode_chunks_no_grad(model, catalog: TokenizedCatalog, items: np.ndarray, chunks: list[np.ndarray],
                          device: torch.device, amp: bool) -> tuple[torch.Tensor, list[RandContext]]:
    """Pass 1: embeddings of `items` (in their order) and the RNG state before each chunk."""
    states: list[RandContext] = []
    parts: list[torch.Tensor] = []
    with torch.no_grad():
        for pos in chunks:
            feats = catalog.features(items[pos], device)
            states.append(RandContext(*feats.values()))
            parts.append(encode(model, feats, amp))
    out = torch.empty((items.size, embedding_dim(model)), device=device)
    for pos, emb in zip(chunks, parts):
        out[torch.as_tensor(pos, device=device)] = emb
    return out, states


def backward_chunks(model, catalog: TokenizedCatalog, items: np.ndarray, chunks: list[np.ndarray],
                    states: list[RandContext], grad: torch.Tensor, device: torch.device, amp: bool) -> None:
    """Pass 2: re-encode each chunk under its pass-1 RNG state and backprop its slice of dL/dA."""
    for pos, state in zip(chunks, states):
        feats = catalog.features(items[pos], device)
        with state:
            emb = encode(model, feats, amp)
        emb.backward(grad[torch.as_tensor(pos, device=device)])
