"""A real S3 API on 127.0.0.1 for benchmarks and tests: moto's server (`moto[server]`, a test
dependency) on a free loopback port. Nothing leaves the machine."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time


@contextlib.contextmanager
def local_s3(extra_env: dict | None = None, port: int | None = None, server_env: dict | None = None):
    """Start the server, point the standard AWS variables at it (in this process, so in the Ray it
    starts and the commands it runs), yield `bucket(name) -> "s3://name"` (which creates the bucket);
    afterwards stop it by its process id and restore the environment. `port`: a given one (a server
    restarted where the last one was); `server_env`: the server's own settings (moto checks keys when
    started with INITIAL_NO_AUTH_ACTION_COUNT)."""
    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, **(server_env or {})})
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", **(extra_env or {})}
    saved = {k: os.environ.get(k) for k in env}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start (pip install 'moto[server]')") from None
                time.sleep(0.1)
        os.environ.update(env)

        def bucket(name: str) -> str:
            import boto3

            boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
            return f"s3://{name}"

        bucket.port, bucket.pid = port, server.pid
        yield bucket
    finally:
        server.kill()
        server.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
