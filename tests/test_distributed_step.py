"""W workers (gloo, CPU) give exactly the update of one process on the same global batch.

Updates are compared as gradients read by the optimizer (before it changes anything) and as
parameters after plain SGD steps: SGD, unlike Adam, passes a gradient's scale straight to the
weights, so a factor-W error in dL/dA or in the gradient all-reduce cannot hide.
"""

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
from tests.helpers import relative_error
from tests.test_step import make_texts

N_ITEMS = 40


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps a copy of the gradients of every step it takes."""

    def __init__(self, model, lr):
        self.names = {id(p): n for n, p in model.named_parameters()}
        super().__init__(model.parameters(), lr=lr)
        self.history: list[dict[str, torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure=None):
        self.history.append({self.names[id(p)]: p.grad.clone()
                             for g in self.param_groups for p in g["params"] if p.grad is not None})
        return super().step(closure)


def _users(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.choice(N_ITEMS, size=rng.integers(1, 6), replace=False) for _ in range(n)]


def _run(model_dir, steps, mode, rank=0, m=16, lr=0.5):
    """Run train_step once per entry of `steps` (this process's users for that step)."""
    model = SentenceTransformer(str(model_dir), device="cpu")
    catalog = TokenizedCatalog.build(model, make_texts(N_ITEMS), max_seq_length=32)
    opt = RecordingSGD(model, lr=lr)
    losses = []
    for step, users in enumerate(steps):
        key = (5, 0, step) if mode == "items" else (5, 0, step, rank)
        res = train_step(model, opt, catalog, users, m=m, rng_key=key, chunk_size=4, device=torch.device("cpu"),
                         mode=mode)
        losses.append(res.loss)
    return {"params": {n: p.detach().clone() for n, p in model.named_parameters()}, "grads": opt.history,
            "losses": losses}


def _worker(rank, world, port, model_dir, mode, plan, m, scale_error, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    assert Comm().world == world
    if scale_error:  # the deliberate bug the SGD comparison must catch: gradients W times too large
        original = Comm.all_reduce_grads_

        def scaled(self, params):
            original(self, params)
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(self.world)

        Comm.all_reduce_grads_ = scaled
    torch.save(_run(model_dir, plan[rank], mode, rank, m=m), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory):
    from tests.helpers import tiny_model

    root = tmp_path_factory.mktemp("tiny0")
    tiny_model(root, dropout=0.0)  # dropout masks cannot match across different chunkings
    return root / "st"


def _spawn(plan, mode, model_dir, tmp_path, m=16, scale_error=False):
    world = len(plan)
    mp.spawn(_worker, args=(world, _free_port(), str(model_dir), mode, plan, m, scale_error, str(tmp_path)),
             nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _deal(users, world, steps=3):
    """Rank r holds users r, r+W, ... at every step: an uneven split (10 users, W=3) is part of the test."""
    return [[[users[i] for i in range(len(users)) if i % world == r]] * steps for r in range(world)]


def _assert_same(result, single):
    """Equal up to float32 round-off: workers encode other chunk compositions (other padding) than
    one process does, which moves gradients by ~1e-5 relative; a scale error moves them by ~1."""
    np.testing.assert_allclose(result["losses"], single["losses"], rtol=1e-5)
    for got, want in zip(result["grads"], single["grads"]):
        assert relative_error(got, want) < 1e-4
    assert relative_error(result["params"], single["params"]) < 1e-6


@pytest.mark.parametrize("world", [2, 3])
def test_items_mode_equals_single_process(no_dropout_model, tmp_path, world):
    single = _run(no_dropout_model, [_users()] * 3, "items")
    results = _spawn(_deal(_users(), world), "items", no_dropout_model, tmp_path)
    for res in results:
        _assert_same(res, single)
    # and training actually moved the parameters
    start = SentenceTransformer(str(no_dropout_model), device="cpu")
    moved = max((results[0]["params"][n] - p.detach()).abs().max().item() for n, p in start.named_parameters())
    assert moved > 1e-4


def test_a_scale_error_in_the_all_reduce_is_caught(no_dropout_model, tmp_path):
    """The comparison above can fail: gradients W times too large do not pass it."""
    single = _run(no_dropout_model, [_users()] * 3, "items")
    broken = _spawn(_deal(_users(), 2), "items", no_dropout_model, tmp_path, scale_error=True)
    assert relative_error(broken[0]["grads"][0], single["grads"][0]) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(AssertionError):
        _assert_same(broken[0], single)


def test_items_mode_with_an_empty_slice(no_dropout_model, tmp_path):
    """m < W: |I_b| = 3 items over 4 workers, so one worker encodes nothing and still takes part."""
    users = [np.array([7, 30]), np.array([12, 7]), np.array([30, 12])]
    single = _run(no_dropout_model, [users] * 2, "items", m=3)
    plan = [[[u]] * 2 for u in users] + [[[]] * 2]
    results = _spawn(plan, "items", no_dropout_model, tmp_path, m=3)
    assert sum(g.abs().sum().item() for g in single["grads"][0].values()) > 0  # a step that learns something
    for res in results:
        _assert_same(res, single)


def test_data_mode_is_the_mean_over_real_users(no_dropout_model, tmp_path):
    """Each worker's gradient counts in proportion to its users (3 vs 1 here), not 1/W each.

    Reference: one process takes each worker's batch with that worker's I_b, and the gradients
    are combined as the mean over all users of the step.
    """
    users = _users(4, seed=4)
    plan = [[users[0:3]], [users[3:4]]]
    a, b = _spawn(plan, "data", no_dropout_model, tmp_path, m=12)
    for got, want in zip(a["params"].values(), b["params"].values()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # replicas stay identical
    assert a["losses"] == b["losses"]
    refs = [_run(no_dropout_model, plan[r], "data", rank=r, m=12) for r in range(2)]
    weights = [3 / 4, 1 / 4]
    want = {n: sum(w * ref["grads"][0][n] for w, ref in zip(weights, refs)) for n in refs[0]["grads"][0]}
    assert relative_error(a["grads"][0], want) < 1e-5
    assert a["losses"][0] == pytest.approx(sum(w * ref["losses"][0] for w, ref in zip(weights, refs)), rel=1e-5)
    # an unweighted mean of the two workers' gradients is measurably different
    equal = {n: (refs[0]["grads"][0][n] + refs[1]["grads"][0][n]) / 2 for n in want}
    assert relative_error(equal, want) > 0.05


def test_data_mode_padding_worker_does_not_shrink_the_update(no_dropout_model, tmp_path):
    """One real batch on rank 0 and nothing on rank 1 = the single-process step on that batch."""
    users = _users(4, seed=2)
    single = _run(no_dropout_model, [users], "data", rank=0, m=12)
    a, _ = _spawn([[users], [[]]], "data", no_dropout_model, tmp_path, m=12)
    _assert_same(a, single)


def test_comm_refuses_tensors_off_its_device():
    """NCCL has no CPU backend: a CPU tensor in a CUDA group must fail loudly on every backend."""
    comm = Comm("cuda")
    comm.active, comm.world = True, 2  # as if in a 2-rank NCCL group; the check runs before any collective
    with pytest.raises(RuntimeError, match="collective on a cpu tensor.*NCCL has no CPU backend"):
        comm.all_reduce_(torch.zeros(3))
    with pytest.raises(RuntimeError, match="collective on a cpu tensor"):
        comm.all_gather_rows(torch.zeros(2, 4))


def test_collective_on_another_gpu_is_refused():
    """The whole device is compared: a cuda:0 tensor in the cuda:1 worker would pass a type check and
    then hang or corrupt NCCL. (No GPU needed: the check reads only the tensor's device.)"""
    from types import SimpleNamespace

    comm = Comm(torch.device("cuda", 1))
    with pytest.raises(RuntimeError, match="collective on a cuda:0 tensor, but this process works on cuda:1"):
        comm._check(SimpleNamespace(device=torch.device("cuda", 0)))
    same = SimpleNamespace(device=torch.device("cuda", 1))
    assert comm._check(same) is same
    cpu = Comm("cpu")
    tensor = torch.zeros(1)
    assert cpu._check(tensor) is tensor and Comm(torch.device("cpu", 0)).device == cpu.device


def test_forced_single_rank_group_runs_every_collective(tiny_model_dir, tmp_path):
    """Comm(active=True) with one rank runs the real collectives (what benchmarks/gpu.py does under
    NCCL on one GPU) and gives the plain single-process step."""
    users = _users()
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    catalog = TokenizedCatalog.build(model, make_texts(N_ITEMS), max_seq_length=32)
    from tests.helpers import two_pass_grads

    want, want_res = two_pass_grads(model, catalog, users, 16, (1, 0, 0), 4, seed=3)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        comm = Comm("cpu", active=True)
        assert comm.active and comm.world == 1
        got, res = two_pass_grads(model, catalog, users, 16, (1, 0, 0), 4, seed=3, comm=comm)
    finally:
        dist.destroy_process_group()
    assert res.loss == pytest.approx(want_res.loss, rel=1e-6)
    assert relative_error(got, want) < 1e-6
