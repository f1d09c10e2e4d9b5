"""The ELSA decoder and the normalised-MSE loss of beeFormer (docs/method.md §2.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def elsa_scores(x: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
    """relu(x Â Âᵀ − x) with Â the row-normalised item embeddings."""
    a = F.normalize(item_emb, dim=-1)
    return torch.relu((x @ a) @ a.T - x)


def nmse_loss(x: torch.Tensor, item_emb: torch.Tensor, n_users: int | None = None) -> torch.Tensor:
    """Mean over users of ||normalize(x) − normalize(prediction)||² / m.

    `n_users` is the size of the *global* batch when this process holds only part of it:
    the per-process losses then sum to the loss of the whole batch.
    """
    pred = elsa_scores(x, item_emb)
    diff = F.normalize(x, dim=-1) - F.normalize(pred, dim=-1)
    denom = (x.shape[0] if n_users is None else n_users) * x.shape[1]
    return diff.pow(2).sum() / max(denom, 1)
