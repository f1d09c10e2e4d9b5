"""One beeFormer optimizer step, as a plain function (docs/method.md §2, distributed per §3).

Read it top to bottom: choose the items, pass 1 (encode without grad), loss and dL/dA
(the gradient checkpoint), pass 2 (re-encode with grad, chunk by chunk), one update.
With several Ray Train workers, `comm` makes the same code the exact distributed step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from beeray.distributed import Comm
from beeray.encoder import ChunkPlan, TokenizedCatalog, backward_pass2, chunks_to_keep, encode_pass1, upload
from beeray.loss import nmse_loss
from beeray.precision import grad_scaler
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
    precision: str = "fp32",
    mode: str = "items",
    comm: Comm | None = None,
    activation_memory: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
    pool: np.ndarray | None = None,
) -> StepResult:
    """`user_items`: this worker's users of the batch, as rows of `catalog` (one array each).

    mode="items": all workers share one I_b (same `rng_key` everywhere) and each encodes
    1/W of it; the update equals the single-process step on the union of the batches.
    mode="data": each worker runs a full step on its own users and its own I_b (pass a per-rank
    `rng_key`); the update is that of the mean loss over all users of all workers.
    `activation_memory` (bytes, per worker): graphs of the shortest chunks that fit are kept from
    pass 1 instead of re-encoded in pass 2; 0 re-encodes every chunk (least memory).
    `precision`: fp32, bf16 or fp16 autocast of the encoder (beeray/precision.py); fp16 needs
    `scaler`, an enabled GradScaler that lives as long as the run (its scale adapts over steps).
    `pool`: catalog rows the negatives are drawn from (per_dataset composition: the step's dataset's
    rows, the same on every worker in items mode); None = the whole training catalog.
    """
    comm = comm or Comm(device)
    if scaler is None:
        if precision == "fp16":
            raise ValueError("fp16 training needs a GradScaler (loss scaling): pass scaler=")
        scaler = grad_scaler(device, precision)  # disabled: scale() and step() pass through
    shared = mode == "items"
    model.train()  # dropout on in both passes; pass 2 replays pass 1's RNG per chunk

    # 1. I_b: positives of the (global) batch plus uniform negatives up to m, all of them rows of
    #    the training catalog (cold items are not in it); per_dataset: of the step's dataset only.
    local_pos = np.unique(np.concatenate(user_items)) if user_items else np.zeros(0, np.int64)
    positives = np.unique(comm.all_gather_ids(local_pos)) if shared else local_pos
    item_set = sample_item_set(positives, len(catalog), m, step_rng(*rng_key), pool=pool)

    # This worker's slice of I_b: every W-th item in length order, so that all workers
    # get a similar mix of long and short texts (a slice may be empty when |I_b| < W).
    by_length = np.argsort(catalog.lengths[item_set], kind="stable")
    world, rank = (comm.world, comm.rank) if shared else (1, 0)
    slices = [by_length[r::world] for r in range(world)]
    mine = item_set[slices[rank]]
    # Every index tensor the step needs on the device, each uploaded once and asynchronously:
    # nothing below waits for the host until the loss is read at the end.
    on_device = catalog.on(device)
    plan = ChunkPlan.build(catalog, mine, chunk_size, device)
    slice_index = upload(np.concatenate(slices), device).split([s.size for s in slices])

    # 2. Pass 1: embeddings (without grad, except chunks whose graph fits the activation budget);
    #    in items mode, gather everybody's rows into A.
    keep = chunks_to_keep(model, plan, activation_memory, precision) if activation_memory else 0
    emb_mine, replay = encode_pass1(model, on_device, plan, precision, keep)
    pieces = comm.all_gather_rows(emb_mine) if shared else [emb_mine]
    item_emb = torch.empty((item_set.size, emb_mine.shape[1]), device=device)
    for index, piece in zip(slice_index, pieces):
        item_emb[index] = piece

    # 3. Loss over this worker's users and G = dL/dA. The loss is normalised by the number of
    #    users in the *global* batch in both modes, so the workers' losses and parameter gradients
    #    add up to those of the mean over all real users (a worker holding only padding adds 0).
    (n_users,) = comm.sum([float(len(user_items))])
    x = upload(batch_targets(user_items, item_set), device)
    item_emb.requires_grad_(True)
    loss = nmse_loss(x, item_emb, n_users=max(int(n_users), 1))
    loss.backward()
    grad = item_emb.grad
    if shared:
        comm.all_reduce_(grad)  # every worker's users score every item of the shared I_b

    # 4. Pass 2: backprop this worker's slice of G through each chunk: its kept graph, or a
    #    re-encoding with grad under the chunk's pass-1 RNG state. In fp16, G is multiplied by the
    #    loss scale first, so that small gradients survive the half-precision backward.
    backward_pass2(model, on_device, plan, replay, scaler.scale(grad[slice_index[rank]]), precision)

    # 5. One update, identical on every worker: gradients summed over workers (then, in fp16,
    #    unscaled; a step with an inf or NaN is skipped on every worker alike and the scale lowered).
    params = [p for p in model.parameters() if p.requires_grad]
    comm.all_reduce_grads_(params)
    (loss_value,) = comm.sum([loss.item()])
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=float(loss_value), items=int(item_set.size), users=int(n_users), encoded=int(mine.size))
