"""The real server (gunicorn, service/gunicorn.conf.py): it keeps answering while slow clients
hold connections (issue 12, defect 11), and what it refuses before Flask sees a request is
answered in the API's JSON error shape too."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_MODEL

ROOT = Path(__file__).resolve().parent.parent
SLOW_CLIENTS = 20


@pytest.fixture
def server(tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "BIND": f"127.0.0.1:{port}",
        "QDRANT_PATH": str(tmp_path / "qdrant"),
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "MODEL_NAME": TEST_MODEL,
        "MODEL_PRETRAINED": "",
        "MODEL_CHECKPOINT": "",
        "REQUEST_BODY_TIMEOUT_S": "3",
        "LOG_LEVEL": "WARNING",
    }
    gunicorn = Path(sys.executable).parent / "gunicorn"
    process = subprocess.Popen(
        [str(gunicorn), "-c", "service/gunicorn.conf.py", "--access-logfile", "/dev/null", "service:create_app()"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, "gunicorn exited"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield port, url
    finally:
        process.terminate()
        process.wait(30)


def drip(port: int, answers: list[bytes], stop: threading.Event) -> None:
    """A client that sends a body one byte a second, and records what the server answered."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n")
        sock.sendall(b"Content-Length: 100000\r\n\r\n")
        sock.settimeout(1.0)
        while not stop.is_set():
            try:
                sock.sendall(b"x")
                answers.append(sock.recv(100) or b"closed")
                return
            except TimeoutError:
                continue
            except OSError:
                answers.append(b"closed")
                return


def test_twenty_slow_clients_do_not_stall_the_service_and_get_408(server):
    port, url = server
    answers: list[bytes] = []
    stop = threading.Event()
    clients = [threading.Thread(target=drip, args=(port, answers, stop)) for _ in range(SLOW_CLIENTS)]
    for client in clients:
        client.start()
    time.sleep(1.0)  # every slow client connected and sending
    try:
        for _ in range(5):
            assert httpx.get(f"{url}/healthz", timeout=3).status_code == 200
            time.sleep(0.2)
        deadline = time.monotonic() + 20
        while len(answers) < SLOW_CLIENTS and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert len(answers) == SLOW_CLIENTS
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[:3]


def raw_request(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send bytes as they are (httpx would refuse some of them); the status line, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (
            b"GET /v1/items:random?" + b"&".join([b"category=" + b"x" * 60] * 150) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            "414 URI Too Long",
            "uri_too_long",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n",
            "431 Request Header Fields Too Large",
            "request_header_fields_too_large",
        ),
        (b"GARBAGE\r\n\r\n", "400 Bad Request", "bad_request"),
    ],
    ids=["request-line-too-long", "header-too-large", "malformed"],
)
def test_requests_gunicorn_refuses_get_json_errors(server, request_bytes, status, code):
    port, _ = server
    status_line, headers, body = raw_request(port, request_bytes)
    assert status_line == f"HTTP/1.1 {status}"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["message"].startswith(status.split(" ", 1)[1])


def test_a_request_line_over_gunicorns_default_limit_reaches_the_app(server):
    _, url = server
    padding = "&".join(["category=" + "x" * 60] * 90)  # 6,300 bytes: over gunicorn's 4,094, under 8,190
    answer = httpx.get(f"{url}/healthz?{padding}", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"
