"""W workers (gloo, CPU) give exactly the update of one process on the same global batch."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sentence_transformers import SentenceTransformer

from beeray.distributed import Comm
from beeray.encoder import TokenizedCatalog
from beeray.step import train_step
from tests.test_step import make_texts

STEPS = 3


def _users(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.choice(40, size=rng.integers(1, 6), replace=False) for _ in range(n)]


def _run(model_dir, users_per_step, mode, rank=0):
    model = SentenceTransformer(str(model_dir), device="cpu")
    catalog = TokenizedCatalog.build(model, make_texts(40), max_seq_length=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step, users in enumerate(users_per_step):
        key = (5, 0, step) if mode == "items" else (5, 0, step, rank)
        res = train_step(model, opt, catalog, users, m=16, rng_key=key, chunk_size=4,
                         device=torch.device("cpu"), mode=mode)
        losses.append(res.loss)
    return model, losses


def _worker(rank, world, port, model_dir, mode, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    assert Comm().world == world
    users = _users()
    # Rank r holds users r, r+W, ...: an uneven split (10 users, W=3) is part of the test.
    per_step = [[users[i] for i in range(len(users)) if i % world == rank]] * STEPS
    model, losses = _run(model_dir, per_step, mode, rank)
    torch.save({"params": [p.detach() for p in model.parameters()], "losses": losses},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory):
    from beeray.models import tiny_model

    root = tmp_path_factory.mktemp("tiny0")
    tiny_model(root, dropout=0.0)  # dropout masks cannot match across different chunkings
    return root / "st"


def _spawn(world, mode, model_dir, tmp_path):
    mp.spawn(_worker, args=(world, _free_port(), str(model_dir), mode, str(tmp_path)), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
def test_items_mode_equals_single_process(no_dropout_model, tmp_path, world):
    single, single_losses = _run(no_dropout_model, [_users()] * STEPS, "items")
    results = _spawn(world, "items", no_dropout_model, tmp_path)
    for res in results:
        np.testing.assert_allclose(res["losses"], single_losses, rtol=1e-5)
        for got, want in zip(res["params"], single.parameters()):
            torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    # and training actually moved the parameters
    start = SentenceTransformer(str(no_dropout_model), device="cpu")
    moved = max((a - b.detach()).abs().max().item() for a, b in zip(results[0]["params"], start.parameters()))
    assert moved > 1e-4


def test_data_mode_replicas_stay_identical(no_dropout_model, tmp_path):
    results = _spawn(2, "data", no_dropout_model, tmp_path)
    for a, b in zip(results[0]["params"], results[1]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert results[0]["losses"] == results[1]["losses"]
