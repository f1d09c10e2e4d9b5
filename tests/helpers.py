"""Helpers for the tests: tiny models, small matrices, process trees."""

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
# The gradient check and the tiny model live in beeray.testing (benchmarks/gpu.py runs it where tests/ is absent).
from beeray.testing.gradcheck import GradientCapture, NoReplay, autograd_grads, relative_error, two_pass_grads  # noqa: F401
from beeray.models import DEFAULT_MODEL, resolve_model  # noqa: F401
from beeray.testing import tiny_model  # noqa: F401

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
