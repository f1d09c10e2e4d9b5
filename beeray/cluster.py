"""Joining or starting Ray: one place for the driver of `train`, `tune` and `embed`."""

from __future__ import annotations

import os
import socket

from beeray.errors import BeerayError


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local Ray, dashboard on localhost."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "auto":
        _check_reachable(address)
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        # The dashboard (which Ray Train's state queries and `ray job submit` need) listens on
        # the loopback interface only.
        ray.init(num_cpus=num_cpus, dashboard_host="127.0.0.1")


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast instead of letting ray.init retry for minutes against a dead address."""
    target = address.removeprefix("ray://").removeprefix("http://").removeprefix("https://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise BeerayError(f"Ray address {address!r} is not host:port (or 'auto')")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BeerayError(f"Ray cluster at {address} does not answer ({exc.strerror or exc})") from None
