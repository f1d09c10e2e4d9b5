"""The paper's reference training step, re-implemented for timing comparisons only.

Mirrors `NMSEbeeformer.train_step` of the public beeFormer code (recombee/beeformer,
models.py + dataloaders.py) as far as cost is concerned:
- texts are padded to the catalog's longest text (capped at max_seq_length): the reference
  calls `sbert.tokenize(all_texts)` once, which pads the whole catalog to one width, and each
  step slices that. Here the step's texts are tokenized inside the step with the same fixed
  width (`padding="max_length"`), so tokenization is charged to the step (it costs well
  under 1% of a step; see `tokenize_s` in the result);
- I_b is encoded in chunks of `sbert_batch_size` in the order given (positives, then
  negatives), with no grouping by length;
- pass 1 without grad, loss on A as a leaf, dL/dA, pass 2 re-encodes each chunk with grad
  and calls `backward(dL/dA[chunk])`;
- no RNG replay: dropout masks in pass 2 differ from pass 1 (the defect method.md §2 notes).
The loss is the reference's ELSA + NMSE: prediction relu(x Â_pos Â_allᵀ − y), rows
L2-normalised, mean squared error. It is a negligible share of the step either way.
Not part of beeray; do not use it for training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ReferenceResult:
    loss: float
    items: int
    width: int  # padded token width of every text
    tokenize_s: float


def catalog_width(model, texts: list[str], max_seq_length: int, batch: int = 2048) -> int:
    """The width `sbert.tokenize(all_texts)` pads every text to: the longest text, capped."""
    tok = model.tokenizer
    longest = 0
    for s in range(0, len(texts), batch):
        enc = tok(list(texts[s:s + batch]), truncation=True, max_length=max_seq_length, padding=False,
                  return_attention_mask=False, return_token_type_ids=False)
        longest = max(longest, max(len(x) for x in enc["input_ids"]))
    return longest


def tokenize_fixed(model, texts: list[str], width: int, device) -> dict:
    enc = model.tokenizer(texts, truncation=True, max_length=width, padding="max_length", return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def reference_encode_no_grad(model, feats: dict, chunk: int) -> torch.Tensor:
    n = feats["input_ids"].shape[0]
    with torch.no_grad():
        parts = [model({k: v[s:s + chunk] for k, v in feats.items()})["sentence_embedding"]
                 for s in range(0, n, chunk)]
    return torch.vstack(parts)


def reference_loss(x_pos: torch.Tensor, y: torch.Tensor, a: torch.Tensor, n_pos: int) -> torch.Tensor:
    """ELSA over the positives' columns as input and all of I_b as output, then NMSE."""
    a_pos = F.normalize(a[:n_pos], dim=-1)
    a_all = F.normalize(a, dim=-1)
    pred = torch.relu((x_pos @ a_pos) @ a_all.T - y)
    diff = F.normalize(y, dim=-1) - F.normalize(pred, dim=-1)
    return diff.pow(2).mean()


def reference_train_step(model, optimizer, texts: list[str], user_items: list[np.ndarray], item_set: np.ndarray,
                         *, width: int, sbert_batch_size: int, device) -> ReferenceResult:
    """One reference step on the given I_b (item indices); positives are put first, as the reference does."""
    model.train()
    positives = np.unique(np.concatenate(user_items))
    negatives = np.setdiff1d(item_set, positives, assume_unique=True)
    order = np.concatenate([positives, negatives])
    y = np.zeros((len(user_items), order.size), dtype=np.float32)
    col = {int(i): c for c, i in enumerate(order)}
    for row, items in enumerate(user_items):
        y[row, [col[int(i)] for i in items]] = 1.0
    y_t = torch.from_numpy(y).to(device)
    x_pos = y_t[:, :positives.size]

    optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    feats = tokenize_fixed(model, [texts[i] for i in order], width, device)
    tokenize_s = time.perf_counter() - t0

    a = reference_encode_no_grad(model, feats, sbert_batch_size)  # pass 1
    a.requires_grad_(True)
    loss = reference_loss(x_pos, y_t, a, positives.size)
    loss.backward()
    grad = a.grad
    n = order.size
    for s in range(0, n, sbert_batch_size):  # pass 2, no RNG replay
        out = model({k: v[s:s + sbert_batch_size] for k, v in feats.items()})["sentence_embedding"]
        out.backward(gradient=grad[s:s + sbert_batch_size])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return ReferenceResult(loss=float(loss.item()), items=int(n), width=int(width), tokenize_s=tokenize_s)
