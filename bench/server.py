"""Start the real service (gunicorn, service/gunicorn.conf.py) on loopback for a benchmark."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ROOT = Path(__file__).resolve().parent.parent  # gunicorn's config path is relative to it


@contextlib.contextmanager
def running_service(
    env: dict[str, str], timeout_s: float = 300, ready_path: str = "/readyz"
) -> Iterator[tuple[str, float, subprocess.Popen]]:
    """Yields (base URL, seconds from process start to ``ready_path`` 200, the gunicorn process);
    ``/healthz`` for a service that has no collection to be ready with."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gunicorn = Path(sys.executable).parent / "gunicorn"
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(gunicorn), "-c", "service/gunicorn.conf.py", "--access-logfile", "/dev/null", "service:create_app()"],
        cwd=ROOT,
        env={**os.environ, **env, "BIND": f"127.0.0.1:{port}", "LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_answering(url + ready_path, process, timeout_s)
        yield url, time.perf_counter() - started, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_until_answering(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Until ``url`` answers 200 (the service started, or a killed worker replaced)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}")
        if time.perf_counter() > deadline:
            raise TimeoutError("service not ready in time")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (gunicorn's workers)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def memory_mib(pid: int) -> dict:
    """The memory of a process and its children (gunicorn master + workers): ``pss`` counts pages
    shared after the fork once (the honest sum), ``rss`` sums each process's resident set."""
    pids = [pid, *children(pid)]
    rss, pss = {}, 0.0
    for one in pids:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{one}/smaps_rollup").read_text().splitlines()[1:])
        rss[one] = int(fields["Rss"].split()[0]) / 1024
        pss += int(fields["Pss"].split()[0]) / 1024
    return {"pss": pss, "rss": sum(rss.values()), "per_process": [round(v, 1) for v in rss.values()]}


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (gunicorn master + workers), MiB."""
    pids = [pid, *children(pid)]
    total_kib = 0
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024
