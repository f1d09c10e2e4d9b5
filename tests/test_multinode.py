"""A real two-node Ray cluster on one machine: `ray job submit` of `beeray train`, with and without a killed worker.

Each node is a separate `ray start --block` process with 1 CPU, so a 2-worker run must place one
worker on each node. The cluster lives in its own --temp-dir and is torn down by process id (never
`ray stop`, which would kill every Ray on the machine, including other tests' and other users').
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import cmdline, kill, process_tree

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent  # the venv's bin: ray, beeray
JOB_TIMEOUT = 360  # seconds per job; generous for a loaded CI box (a job takes ~45-70 s on 2 idle cores)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _get_json(url: str, token: str):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _wait(what: str, check, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# ---- the cluster --------------------------------------------------------------------------------------

class Cluster:
    def __init__(self, root: Path):
        self.root = root
        # Short temp dir: Ray's unix sockets live under it and socket paths are limited to ~107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="brmn-", dir="/tmp"))
        self.procs: list[subprocess.Popen] = []
        ports = _free_ports(14)
        self.gcs_port, self.dash_port = ports[0], ports[1]
        self.ports = iter(ports[2:])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # Job entrypoints inherit the node's environment: offline hub, the venv first on PATH.
        self.env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                        PATH=f"{BIN}{os.pathsep}{self.env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0")
        # Token auth with a token of our own: independent of ~/.ray/auth_token, and the job driver and
        # the CLI inherit it from this environment.
        self.token = secrets.token_hex(32)
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        self.dashboard = f"http://127.0.0.1:{self.dash_port}"

    def _node_ports(self) -> list[str]:
        # Explicit ports: two raylets on one machine must not both take Ray's fixed defaults (52365, ...).
        return ["--node-manager-port", str(next(self.ports)), "--object-manager-port", str(next(self.ports)),
                "--dashboard-agent-listen-port", str(next(self.ports)),
                "--dashboard-agent-grpc-port", str(next(self.ports)),
                "--runtime-env-agent-port", str(next(self.ports)), "--metrics-export-port", str(next(self.ports))]

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "w")
        # Loopback only: nothing of this test cluster listens on the machine's network interfaces.
        cmd = [str(BIN / "ray"), "start", "--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
               "--temp-dir", str(self.temp_dir),
               "--object-store-memory", str(150 * 2**20), "--disable-usage-stats", *args, *self._node_ports()]
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))

    def get(self, path: str):
        return _get_json(self.dashboard + path, self.token)

    def alive_nodes(self) -> int:
        nodes = self.get("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        return sum(n["state"] == "ALIVE" for n in nodes)

    def start(self) -> None:
        self._start("head", ["--head", "--port", str(self.gcs_port), "--include-dashboard", "true",
                             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dash_port)])
        _wait("the head node's dashboard", lambda: self._check_running() and self.alive_nodes() >= 1, 90)
        self._start("worker", ["--address", f"127.0.0.1:{self.gcs_port}"])
        _wait("the second node to join", lambda: self._check_running() and self.alive_nodes() >= 2, 90)

    def _check_running(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"`{' '.join(p.args[:4])}` exited with {p.returncode}:\n{self.logs()}")
        return True

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text()[-4000:]}" for f in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        pids = process_tree([p.pid for p in self.procs])
        kill([p.pid for p in self.procs], signal.SIGTERM)  # --block cleans up its node's processes
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        kill(pids, signal.SIGKILL)  # whatever survived, ours only
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    # ---- jobs ----

    def submit(self, job_id: str, entrypoint: list[str]) -> None:
        # RAY_ADDRESS for every process of the job: Ray Train's own helper actors otherwise look for
        # "the" local Ray and fail on a machine that runs several (other tests', other users').
        runtime_env = json.dumps({"env_vars": {"RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}"}})
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.dashboard, "--submission-id", job_id,
               "--runtime-env-json", runtime_env, "--no-wait", "--", *entrypoint]
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"ray job submit failed:\n{res.stdout}\n{res.stderr}"

    def status(self, job_id: str) -> str:
        return self.get(f"/api/jobs/{job_id}")["status"]

    def job_logs(self, job_id: str) -> str:
        return self.get(f"/api/jobs/{job_id}/logs")["logs"]

    def wait_job(self, job_id: str, timeout: float = JOB_TIMEOUT) -> str:
        t0 = time.monotonic()
        try:
            status = _wait(f"job {job_id}", lambda: (s := self.status(job_id)) in TERMINAL and s, timeout, 1.0)
        except TimeoutError:
            status = "TIMEOUT"
        logs = self.job_logs(job_id)
        print(f"job {job_id}: {status} after {time.monotonic() - t0:.0f}s")
        if status != "SUCCEEDED":
            print(f"===== job {job_id}: {status}\n{logs}\n===== cluster logs\n{self.logs()}")
        return status


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from beeray.data.prepare import prepare_synthetic
    from tests.helpers import tiny_model

    root = tmp_path_factory.mktemp("inputs")
    prepare_synthetic(root / "shop")
    tiny_model(root / "tiny")
    return root / "shop", root / "tiny" / "st"


def _train(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    # The entrypoint runs on the head node; absolute paths, since the job's cwd is Ray's.
    return [str(BIN / "beeray"), "train", "--data", str(data), "--model", str(model), "--out", str(out),
            "--num-workers", "2", "--epochs", "2", "--batch-size", "64", "--m", "96", "--max-seq-length", "24",
            "--encode-batch-size", "48", "--lr", "1e-3", "--no-baseline", *extra]


def _assert_model(out: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(out / "model"), device="cpu")
    assert model.encode(["a printer"]).shape == (1, 32)
    assert (out / "metrics.json").is_file()


def test_two_node_job_trains_across_both_nodes(cluster, inputs, tmp_path):
    data, model = inputs
    out = tmp_path / "run"
    cluster.submit("beeray-two-node", _train(data, model, out))
    assert cluster.wait_job("beeray-two-node") == "SUCCEEDED"
    _assert_model(out)
    # Two 1-CPU workers on two 1-CPU nodes: the placement had to span both.
    nodes = cluster.get("/api/v0/nodes?limit=100")["data"]["result"]["result"]
    assert sum(n["state"] == "ALIVE" and n["resources_total"].get("CPU") == 1 for n in nodes) == 2


def _train_workers(cluster: Cluster) -> list[int]:
    return [pid for pid in process_tree([p.pid for p in cluster.procs]) if "RayTrainWorker" in cmdline(pid)]


def test_killed_worker_recovers_from_checkpoint(cluster, inputs, tmp_path):
    data, model = inputs
    out = tmp_path / "run"
    job = "beeray-fault"
    cluster.submit(job, _train(data, model, out, "--max-failures", "1", "--checkpoint-every", "2"))
    ckpt_root = out / "ray" / "train"
    try:
        _wait("a first checkpoint", lambda: any(ckpt_root.glob("checkpoint_*"))
              or cluster.status(job) in TERMINAL, JOB_TIMEOUT, 0.2)
        assert cluster.status(job) not in TERMINAL, "the job ended before a worker could be killed"
        workers = _wait("the RayTrainWorker processes", lambda: _train_workers(cluster), 30, 0.2)
    except (TimeoutError, AssertionError):
        print(cluster.job_logs(job))
        raise
    os.kill(workers[-1], signal.SIGKILL)
    assert cluster.wait_job(job) == "SUCCEEDED"
    logs = cluster.job_logs(job)
    # Ray Train's failure policy chose to retry (max_failures 1) ...
    assert "[FailurePolicy] RETRY" in logs, logs[-6000:]
    # ... and a new worker group (other processes than the killed group) went on to save checkpoints.
    savers = {int(pid) for pid in re.findall(r"RayTrainWorker pid=(\d+)\)\S* beeray: checkpoint checkpoint_\S+ saved in", logs)}
    assert savers - set(workers), f"no checkpoint from a restarted worker; before the kill: {workers}, savers: {savers}"
    _assert_model(out)
    assert json.loads((out / "metrics.json").read_text())["config"]["max_failures"] == 1
