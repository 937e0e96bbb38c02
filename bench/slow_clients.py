"""Slow clients against the real service: does it keep answering others? (issue 12, defect 11)

Starts gunicorn (service/gunicorn.conf.py, embedded store, a tiny random-init model: the figure
is about threads, not the encoder), opens ``--slow`` connections that send a request body one
byte every 2 s, and meanwhile asks /healthz and a by-id search every 0.25 s for ``--seconds``.
Prints the probes' p50/max latency and how many failed, per configuration: the one before the
fix (THREADS=4, no body deadline) and the default.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import percentiles
from bench.server import running_service

CONFIGS = {
    "before (THREADS=4, no body deadline)": {"THREADS": "4", "REQUEST_BODY_TIMEOUT_S": "3600"},
    "default": {},
}


def make_store(root: Path) -> dict[str, str]:
    """A small catalogue of generated photos, ingested with the tiny model."""
    from PIL import Image, ImageDraw

    for category, colour in (("red", (220, 30, 30)), ("blue", (30, 60, 220))):
        (root / "catalogue" / category).mkdir(parents=True)
        for i in range(10):
            image = Image.new("RGB", (64, 64), "white")
            ImageDraw.Draw(image).ellipse((4 + i, 4, 40 + i, 40), fill=colour)
            image.save(root / "catalogue" / category / f"{i}.jpg")
    env = {
        "QDRANT_PATH": str(root / "qdrant"),
        "CATALOGUE_DIR": str(root / "catalogue"),
        "UPLOAD_DIR": str(root / "uploads"),
        "INGEST_ERROR_REPORT": str(root / "errors.jsonl"),
        "MODEL_NAME": "lookalike-tiny",
        "MODEL_PRETRAINED": "",
        "MODEL_CHECKPOINT": "",
        "DECODE_WORKERS": "0",
    }
    subprocess.run([sys.executable, "-m", "ingest", "--no-progress"], env={**os.environ, **env}, check=True)
    return env


def slow_client(url: str, stop: threading.Event, outcomes: list[str]) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        sock.settimeout(2.0)
        while not stop.is_set():
            try:
                sock.sendall(b"x")
                answer = sock.recv(200)
            except TimeoutError:
                continue
            except OSError:
                outcomes.append("closed")
                return
            outcomes.append(answer.split(b"\r\n")[0].decode(errors="replace") if answer else "closed")
            return
    outcomes.append("still open")


def measure(url: str, slow: int, seconds: float) -> dict:
    stop, outcomes = threading.Event(), []
    threads = [threading.Thread(target=slow_client, args=(url, stop, outcomes)) for _ in range(slow)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # all slow clients connected and holding
    latencies, failures = [], 0
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=5.0) as client:
        while time.monotonic() < deadline:
            for path in ("/healthz", "/v1/items/red-1/similar?k=4"):
                started = time.perf_counter()
                try:
                    client.get(path).raise_for_status()
                    latencies.append(time.perf_counter() - started)
                except httpx.HTTPError:
                    failures += 1
            time.sleep(0.25)
    stop.set()
    for thread in threads:
        thread.join()
    answered = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
    return {
        **(percentiles(latencies) if latencies else {}),
        "max_ms": round(max(latencies, default=0) * 1000, 1),
        "failed": failures,
        "probes": len(latencies) + failures,
        "slow_clients": answered,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = make_store(Path(tmp))
        for name, extra in CONFIGS.items():
            with running_service({**env, **extra}) as (url, _, _):
                result = measure(url, args.slow, args.seconds)
            print(f"slow clients={args.slow} {name}: {result}", flush=True)


if __name__ == "__main__":
    main()
