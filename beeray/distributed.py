"""The few collectives the step needs, with a single-process fallback.

Ray Train sets up the torch.distributed process group (gloo on CPU, NCCL on GPU); outside
Ray, or with one worker, every call here is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# Gradients are all-reduced in flat buckets of about this many elements: a few large
# collectives instead of one per parameter tensor (~200 for MiniLM).
BUCKET_ELEMENTS = 16 * 1024 * 1024


class Comm:
    def __init__(self) -> None:
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1

    def all_reduce_(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=op)
        return t

    def all_gather_rows(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Gather tensors whose first dimension differs between ranks (all_gather needs equal shapes)."""
        if not self.active:
            return [t]
        n = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        width = int(max(s.item() for s in sizes))
        padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: t.shape[0]] = t
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded)
        return [o[: int(s.item())] for o, s in zip(out, sizes)]

    def all_reduce_grads_(self, params: list[torch.nn.Parameter], average: bool) -> None:
        if not self.active:
            return
        for bucket in _buckets([p.grad for p in params if p.grad is not None], BUCKET_ELEMENTS):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            if average:
                flat /= self.world
            for g, piece in zip(bucket, flat.split([g.numel() for g in bucket])):
                g.copy_(piece.view_as(g))


def _buckets(tensors: list[torch.Tensor], max_elements: int) -> list[list[torch.Tensor]]:
    """Consecutive groups of at most max_elements elements (a larger tensor gets a group of its own)."""
    groups: list[list[torch.Tensor]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.numel() > max_elements:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.numel()
    return [g for g in groups if g]
