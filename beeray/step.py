"""One beeFormer optimizer step, as a plain function (method.md §2, distributed per §3).

Read it top to bottom: choose the items, pass 1 (encode without grad), loss and dL/dA
(the gradient checkpoint), pass 2 (re-encode with grad, chunk by chunk), one update.
With several Ray Train workers, `comm` makes the same code the exact distributed step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from beeray.distributed import Comm
from beeray.encoder import TokenizedCatalog, backward_chunks, encode_chunks_no_grad, plan_chunks
from beeray.loss import nmse_loss
from beeray.sampler import batch_targets, sample_item_set, step_rng


@dataclass(frozen=True)
class StepResult:
    loss: float  # loss of the global batch
    items: int  # |I_b| this step (global in items mode, per worker in data mode)
    users: int  # users in the global batch
    encoded: int  # texts this worker encoded per pass


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    catalog: TokenizedCatalog,
    user_items: list[np.ndarray],
    *,
    m: int,
    rng_key: tuple[int, ...],
    chunk_size: int,
    device: torch.device,
    amp: bool = False,
    mode: str = "items",
    comm: Comm | None = None,
) -> StepResult:
    """`user_items`: this worker's users of the batch (item indices each).

    mode="items": all workers share one I_b (same `rng_key` everywhere) and each encodes
    1/W of it; the update equals the single-process step on the union of the batches.
    mode="data": each worker runs a full step on its own users (pass a per-rank
    `rng_key`) and gradients are averaged.
    """
    comm = comm or Comm()
    shared = mode == "items"
    model.train()  # dropout on in both passes; pass 2 replays pass 1's RNG per chunk

    # 1. I_b: positives of the (global) batch plus uniform negatives up to m.
    local_pos = np.unique(np.concatenate(user_items)) if user_items else np.zeros(0, np.int64)
    if shared:
        gathered = comm.all_gather_rows(torch.as_tensor(local_pos, dtype=torch.int64))
        positives = np.unique(torch.cat(gathered).numpy())
    else:
        positives = local_pos
    item_set = sample_item_set(positives, len(catalog), m, step_rng(*rng_key))

    # This worker's slice of I_b: every W-th item in length order, so that all workers
    # get a similar mix of long and short texts.
    by_length = np.argsort(catalog.lengths[item_set], kind="stable")
    world, rank = (comm.world, comm.rank) if shared else (1, 0)
    slices = [by_length[r::world] for r in range(world)]
    mine = item_set[slices[rank]]
    chunks = plan_chunks(mine, catalog.lengths, chunk_size)

    # 2. Pass 1: embeddings without grad; in items mode, gather everybody's rows into A.
    emb_mine, rng_states = encode_chunks_no_grad(model, catalog, mine, chunks, device, amp)
    pieces = comm.all_gather_rows(emb_mine) if shared else [emb_mine]
    item_emb = torch.empty((item_set.size, emb_mine.shape[1]), device=device)
    for r, piece in enumerate(pieces):
        item_emb[torch.as_tensor(slices[r], device=device)] = piece

    # 3. Loss over this worker's users and G = dL/dA; summed over workers in items mode.
    x = torch.from_numpy(batch_targets(user_items, item_set)).to(device)
    n_users = int(comm.all_reduce_(torch.tensor([float(x.shape[0])], device=device)).item())
    item_emb.requires_grad_(True)
    loss = nmse_loss(x, item_emb, n_users=n_users if shared else None)
    loss.backward()
    grad = item_emb.grad
    loss_value = comm.all_reduce_(loss.detach().reshape(1))
    if shared:
        comm.all_reduce_(grad)
    else:
        loss_value /= comm.world  # each worker's loss is the mean over its own users

    # 4. Pass 2: re-encode this worker's chunks with grad and backprop their slice of G.
    backward_chunks(model, catalog, mine, chunks, rng_states, grad[torch.as_tensor(slices[rank], device=device)],
                    device, amp)

    # 5. One update, identical on every worker.
    params = [p for p in model.parameters() if p.requires_grad]
    comm.all_reduce_grads_(params, average=not shared)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=float(loss_value.item()), items=int(item_set.size), users=n_users, encoded=int(mine.size))
