"""The few collectives the step needs, with a single-process fallback.

Ray Train sets up the torch.distributed process group: gloo on CPU, NCCL on GPU. NCCL has no CPU
backend, so every tensor handed to a collective must live on the device the group was made for.
`Comm` is built with that device and refuses any other, index included: a CPU tensor in a CUDA
run, or a `cuda:0` tensor in the `cuda:1` worker, fails here with a message on every backend
(gloo would accept it silently and hide the bug until NCCL, which hangs or crashes on it).
Host data (item ids, counts) goes through the numpy helpers, which place it on the device.
Outside Ray, or with one worker, every call is the identity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

# Gradients are all-reduced in flat buckets of about this many elements: a few large
# collectives instead of one per parameter tensor (~200 for MiniLM).
BUCKET_ELEMENTS = 16 * 1024 * 1024


class Comm:
    def __init__(self, device: torch.device | str = "cpu", active: bool | None = None) -> None:
        """`device`: where this process's collective tensors live (the worker's training device).

        `active`: None = whenever a process group with more than one rank exists; True also runs
        the collectives with a single rank (a one-GPU NCCL check of the device rule).
        """
        initialized = dist.is_available() and dist.is_initialized()
        self.device = _indexed(torch.device(device))
        self.active = initialized and (dist.get_world_size() > 1 if active is None else active)
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1

    def _check(self, t: torch.Tensor) -> torch.Tensor:
        if _indexed(t.device) != self.device:
            raise RuntimeError(f"collective on a {t.device} tensor, but this process works on {self.device} "
                               "(NCCL has no CPU backend, and each rank owns one GPU): create it on the "
                               "training device")
        return t

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        if self.active:
            dist.all_reduce(self._check(t))
        return t

    def all_gather_rows(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Gather tensors whose first dimension differs between ranks (all_gather needs equal shapes)."""
        if not self.active:
            return [t]
        self._check(t)
        n = torch.tensor([t.shape[0]], device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        sizes = [int(s.item()) for s in sizes]
        padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=self.device)
        padded[: t.shape[0]] = t
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded)
        return [o[:s] for o, s in zip(out, sizes)]

    def all_gather_ids(self, ids: np.ndarray) -> np.ndarray:
        """Concatenation of every rank's int64 array (the host side of all_gather_rows)."""
        if not self.active:
            return np.asarray(ids, dtype=np.int64)
        local = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)
        return torch.cat(self.all_gather_rows(local)).cpu().numpy()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of small host numbers over ranks (float64 on the device)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.all_reduce_(t).tolist()

    def all_reduce_grads_(self, params: list[torch.nn.Parameter]) -> None:
        """Replace every gradient by the sum of that gradient over ranks."""
        if not self.active:
            return
        # A rank that back-propagated nothing (an empty slice of I_b) has no gradients at all: agree
        # on which parameters have one anywhere, so that every rank builds the same buckets.
        used = self.sum([float(p.grad is not None) for p in params])
        grads = []
        for p, n in zip(params, used):
            if n > 0:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        for bucket in _buckets(grads, BUCKET_ELEMENTS):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            self.all_reduce_(flat)
            for g, piece in zip(bucket, flat.split([g.numel() for g in bucket])):
                g.copy_(piece.view_as(g))


def _indexed(device: torch.device) -> torch.device:
    """`device` with its index made explicit (`cuda` -> `cuda:<current>`), so devices compare whole;
    the CPU is one device whatever its index."""
    if device.type == "cpu":
        return torch.device("cpu")
    if device.index is None and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device


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
