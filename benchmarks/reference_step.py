"""The paper's reference training step, re-implemented for timing comparisons only.

Mirrors `NMSEbeeformer.train_step` of the public beeFormer code (recombee/beeformer,
models.py + dataloaders.py) as far as cost is concerned:
- the catalog is tokenized once per run, every text padded to the catalog's longest text
  (capped at max_seq_length): the reference calls `sbert.tokenize(all_texts)` once, which pads
  the whole catalog to one width, and each step slices that. `tokenize_catalog` does this once,
  outside any timed step, exactly as beeray tokenizes its catalog once: neither side's step
  time includes tokenization;
- I_b is encoded in chunks of `sbert_batch_size` in the order given (positives, then
  negatives), with no grouping by length;
- pass 1 without grad, loss on A as a leaf, dL/dA, pass 2 re-encodes each chunk with grad
  and calls `backward(dL/dA[chunk])`;
- no RNG replay: dropout masks in pass 2 differ from pass 1 (the defect docs/method.md §2 notes).
The loss is the reference's ELSA + NMSE: prediction relu(x Â_pos Â_allᵀ − y), rows
L2-normalised, mean squared error. It is a negligible share of the step either way.
`precision` (fp32 | bf16 | fp16) is the autocast of both passes, for comparisons at equal precision.
Not part of beeray; do not use it for training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from beeray.precision import autocast


@dataclass(frozen=True)
class ReferenceCatalog:
    """Every catalog text tokenized once, padded to one width (`sbert.tokenize(all_texts)`)."""

    input_ids: torch.Tensor  # n_items x width, on the step's device
    attention_mask: torch.Tensor
    width: int

    def features(self, rows: np.ndarray) -> dict:
        idx = torch.as_tensor(rows, device=self.input_ids.device)
        return {"input_ids": self.input_ids[idx], "attention_mask": self.attention_mask[idx]}


def tokenize_catalog(model, texts: list[str], max_seq_length: int, device) -> ReferenceCatalog:
    enc = model.tokenizer(list(texts), truncation=True, max_length=max_seq_length, padding="longest",
                          return_tensors="pt", return_token_type_ids=False)
    return ReferenceCatalog(enc["input_ids"].to(device), enc["attention_mask"].to(device),
                            int(enc["input_ids"].shape[1]))


def _embed(model, feats: dict, precision: str) -> torch.Tensor:
    with autocast(feats["input_ids"].device, precision):
        return model(dict(feats))["sentence_embedding"].float()


def reference_encode_no_grad(model, catalog: ReferenceCatalog, rows: np.ndarray, chunk: int,
                             precision: str = "fp32") -> torch.Tensor:
    with torch.no_grad():
        parts = [_embed(model, catalog.features(rows[s:s + chunk]), precision) for s in range(0, rows.size, chunk)]
    return torch.vstack(parts)


def reference_loss(x_pos: torch.Tensor, y: torch.Tensor, a: torch.Tensor, n_pos: int) -> torch.Tensor:
    """ELSA over the positives' columns as input and all of I_b as output, then NMSE."""
    a_pos = F.normalize(a[:n_pos], dim=-1)
    a_all = F.normalize(a, dim=-1)
    pred = torch.relu((x_pos @ a_pos) @ a_all.T - y)
    diff = F.normalize(y, dim=-1) - F.normalize(pred, dim=-1)
    return diff.pow(2).mean()


def reference_train_step(model, optimizer, catalog: ReferenceCatalog, user_items: list[np.ndarray],
                         item_set: np.ndarray, *, sbert_batch_size: int, device, precision: str = "fp32") -> float:
    """One reference step on the given I_b (catalog rows); positives are put first, as the reference does.

    Returns the loss."""
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
    a = reference_encode_no_grad(model, catalog, order, sbert_batch_size, precision)  # pass 1
    a.requires_grad_(True)
    loss = reference_loss(x_pos, y_t, a, positives.size)
    loss.backward()
    grad = a.grad
    for s in range(0, order.size, sbert_batch_size):  # pass 2, no RNG replay
        out = _embed(model, catalog.features(order[s:s + sbert_batch_size]), precision)
        out.backward(gradient=grad[s:s + sbert_batch_size])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.item())
