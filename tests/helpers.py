"""Helpers for the tests (and the CPU mode of benchmarks/gpu.py): tiny models, small matrices, process trees."""

from __future__ import annotations

import functools
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch

from beeray.data.prepared import PreparedData, lists_to_csr
from beeray.models import DEFAULT_MODEL, resolve_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def needs_shared(*names: str):
    """For tests that read real data from ../shared/data/<name>.

    Where a folder is missing the test is skipped with a reason that names it, except under CI
    (CI or BEERAY_REQUIRE_SHARED_DATA set), where a missing folder fails the test: CI must run them.
    """
    def decorate(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            missing = [str(SHARED_DATA / n) for n in names if not (SHARED_DATA / n).is_dir()]
            if missing:
                msg = f"real data not found: {', '.join(missing)} (../shared must sit beside the repository)"
                if os.environ.get("CI") or os.environ.get("BEERAY_REQUIRE_SHARED_DATA"):
                    pytest.fail(msg)
                pytest.skip(msg)
            return test(*args, **kwargs)
        return run
    return decorate


def tiny_model(path: str | Path, *, hidden: int = 32, layers: int = 2, dropout: float = 0.1, seed: int = 0):
    """Write and load a small random-initialised BERT sentence Transformer (tests, benchmarks).

    It reuses the packaged MiniLM tokenizer so texts tokenize realistically.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=512,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    hf_dir = path / "hf"
    BertModel(cfg).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    word = Transformer(str(hf_dir), max_seq_length=128)
    pool = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[word, pool], device="cpu")
    model.save(str(path / "st"))
    return SentenceTransformer(str(path / "st"), device="cpu")


def train_matrix(data: PreparedData, full: bool = False) -> sp.csr_matrix:
    """The training interactions of a prepared folder as a users x items binary matrix."""
    table = pq.read_table(data.train_path(full), columns=["items"])
    return lists_to_csr(table.column("items").to_pylist(), data.n_items)


def tokens(text: str) -> set[str]:
    """Lower-cased word tokens (for similarity checks)."""
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def jaccard(a: str, b: str) -> float:
    ta, tb = tokens(a), tokens(b)
    return len(ta & tb) / len(ta | tb) if ta | tb else 0.0


# ---------------------------------------------------------------- exactness of the two-pass step

class GradientCapture(torch.optim.Optimizer):
    """An optimizer whose step() records each parameter's gradient and changes nothing.

    Gradients are read where the optimizer reads them, before any update: a parameter delta
    after an SGD step would lose small gradients to round-off in the weights.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.names = {id(p): n for n, p in model.named_parameters()}
        super().__init__([p for p in model.parameters() if p.requires_grad], {})
        self.grads: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):
        self.grads = {self.names[id(p)]: p.grad.detach().clone()
                      for g in self.param_groups for p in g["params"] if p.grad is not None}


class NoReplay:
    """Stands in for sentence-transformers' RandContext: pass 2 then draws fresh dropout masks (the
    reference implementation's defect), so the two-pass gradient must no longer equal autograd."""

    def __init__(self, *tensors):
        pass

    def __enter__(self):
        pass

    def __exit__(self, *exc):
        pass


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """||got - want|| / ||want|| over all parameters' gradients taken as one vector (float64)."""
    assert got.keys() == want.keys(), sorted(set(got) ^ set(want))
    num = sum(float((got[k].double() - want[k].double()).pow(2).sum()) for k in want)
    den = sum(float(want[k].double().pow(2).sum()) for k in want)
    return (num / den) ** 0.5


def autograd_grads(model, catalog, users, m, key, chunk_size, seed, device="cpu", amp=False):
    """Plain autograd through the encoder: the step's I_b and chunks, one graph, one backward."""
    import copy

    from beeray.encoder import encode, plan_chunks
    from beeray.loss import nmse_loss
    from beeray.sampler import batch_targets, sample_item_set, step_rng

    model = copy.deepcopy(model)
    model.train()
    item_set = sample_item_set(np.unique(np.concatenate(users)), len(catalog), m, step_rng(*key))
    chunks = plan_chunks(item_set, catalog.lengths, chunk_size)
    torch.manual_seed(seed)
    parts = [(pos, encode(model, catalog.features(item_set[pos], device), amp=amp)) for pos in chunks]
    emb = torch.empty((item_set.size, parts[0][1].shape[1]), device=device)
    for pos, e in parts:
        emb[torch.as_tensor(pos, device=device)] = e
    loss = nmse_loss(torch.from_numpy(batch_targets(users, item_set)).to(device), emb)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, loss.item()


def two_pass_grads(model, catalog, users, m, key, chunk_size, seed, device="cpu", amp=False, **step_kw):
    """beeray's train_step on a copy of `model`; the gradients its optimizer step would apply."""
    import copy

    from beeray.step import train_step

    model = copy.deepcopy(model)
    capture = GradientCapture(model)
    torch.manual_seed(seed)
    res = train_step(model, capture, catalog, users, m=m, rng_key=key, chunk_size=chunk_size,
                     device=torch.device(device), amp=amp, **step_kw)
    return capture.grads, res


# ---- processes, without psutil: /proc is enough on Linux --------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has exited: it writes nothing more


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def process_tree(roots: list[int]) -> list[int]:
    """The roots and all their descendants (Ray's daemons, workers and the job driver)."""
    kids: dict[int, list[int]] = {}
    for pid in _pids():
        if (fields := _stat(pid)) is not None:
            kids.setdefault(int(fields[1]), []).append(pid)
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def with_env(marker: str) -> list[int]:
    """Live processes whose environment holds the line `marker` (NAME=VALUE)."""
    want = marker.encode()
    found = []
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in environ and _alive(pid):
            found.append(pid)
    return found


def kill_run(root: int, marker: str, timeout: float = 60) -> None:
    """SIGKILL a process, its descendants and every process started with `marker` in its environment,
    and return once none of them is alive.

    A local Ray's workers and actors put themselves in process groups of their own: a killpg of the
    driver's group misses them, and an orphaned actor finishes the shard it was encoding before it
    notices its raylet is gone. The marker finds them even once they are re-parented.
    """
    deadline = time.monotonic() + timeout
    while pids := [pid for pid in {*process_tree([root]), *with_env(marker)} if _alive(pid)]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {pids} survived SIGKILL for {timeout:.0f} s")
        kill(pids, signal.SIGKILL)
        time.sleep(0.05)
