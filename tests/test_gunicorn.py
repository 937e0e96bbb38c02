"""The real server (gunicorn, service/gunicorn.conf.py): it keeps answering while slow clients
hold connections (issue 12, defect 11), what it refuses before Flask sees a request is answered
in the API's JSON error shape too, and what it acknowledged outlives a killed worker."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import httpx
import pytest

from bench.server import children, running_service, wait_until_answering
from lookalike.store import VectorStore
from service.gunicorn_worker import JsonLogger
from tests.conftest import (
    API_KEY,
    HEADER_TOO_LARGE,
    MALFORMED,
    REQUEST_LINE_TOO_LONG,
    TEST_MODEL,
    draw_item,
    image_bytes,
    raw_request,
)

SLOW_CLIENTS = 20


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


def test_twenty_slow_clients_do_not_stall_the_service_and_get_408(gunicorn_server):
    port, url = gunicorn_server
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


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (REQUEST_LINE_TOO_LONG, "414 URI Too Long", "uri_too_long"),
        (HEADER_TOO_LARGE, "431 Request Header Fields Too Large", "request_header_fields_too_large"),
        (MALFORMED, "400 Bad Request", "bad_request"),
    ],
    ids=["request-line-too-long", "header-too-large", "malformed"],
)
def test_requests_gunicorn_refuses_get_json_errors(gunicorn_server, request_bytes, status, code):
    port, _ = gunicorn_server
    status_line, headers, body = raw_request(port, request_bytes)
    assert status_line == f"HTTP/1.1 {status}"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["message"].startswith(status.split(" ", 1)[1])


def test_a_request_line_over_gunicorns_default_limit_reaches_the_app(gunicorn_server):
    _, url = gunicorn_server
    padding = "&".join(["category=" + "x" * 60] * 90)  # 6,300 bytes: over gunicorn's 4,094, under 8,190
    answer = httpx.get(f"{url}/healthz?{padding}", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"


def test_what_the_api_acknowledged_outlives_its_worker_killed(tmp_path, settings, encoder):
    """`kill -9` of the worker right after its answers: every acknowledged PUT is there when the new
    worker starts, every acknowledged DELETE stays gone (the embedded store keeps nothing unwritten)."""
    store = VectorStore.from_settings(settings)
    store.ensure_collection(encoder.dim, encoder.identity)
    store.close()
    env = {
        "QDRANT_PATH": str(settings.qdrant_path),
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "MODEL_NAME": TEST_MODEL,
        "MODEL_PRETRAINED": "",
        "MODEL_CHECKPOINT": "",
        "API_KEY": API_KEY,
    }
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with running_service(env, timeout_s=120) as (url, _, master):
        for n, category in enumerate(["red_round", "blue_bar", "green_square"]):
            photo = {"image": ("p.png", io.BytesIO(image_bytes(draw_item(category, n))))}
            put = httpx.put(f"{url}/v1/items/new-{n}", data={"category": category}, files=photo, headers=auth)
            assert put.status_code == 201, put.text
        assert httpx.delete(f"{url}/v1/items/new-1", headers=auth).status_code == 200
        (worker,) = children(master.pid)
        os.kill(worker, signal.SIGKILL)
        wait_until_answering(f"{url}/readyz", master, timeout_s=120)
        assert children(master.pid) != [worker]  # served by a new worker
        assert [httpx.get(f"{url}/v1/items/new-{n}").status_code for n in range(3)] == [200, 404, 200]
        assert [r["id"] for r in httpx.get(f"{url}/v1/items/new-0/similar").json()["results"]] == ["new-2"]


@pytest.mark.parametrize("target", ["/healthz?q=a\\b", '/healthz?q=","status":500,"x":"\\', "/v1/items/caf\u00e9"])
def test_every_access_log_line_is_json(tmp_path, target):
    """gunicorn's access_log_format escaped quotes only: a backslash in a URL gave a line that is
    not JSON (and one of text and quotes could read as other fields)."""
    from gunicorn.config import Config

    config = Config()
    config.set("accesslog", str(tmp_path / "access.log"))
    logger = JsonLogger(config)
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": target, "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.1"}
    response = SimpleNamespace(status="200 OK", sent=16, headers=[("X-Request-ID", "5f0c")])
    logger.access(response, SimpleNamespace(headers=[]), environ, timedelta(milliseconds=4))

    (line,) = (tmp_path / "access.log").read_text().splitlines()
    assert json.loads(line) == {
        "remote": "10.0.0.1",
        "request": f"GET {target} HTTP/1.1",
        "status": 200,
        "bytes": 16,
        "ms": 4,
        "request_id": "5f0c",  # as the app's log lines of that request name it
    }


def test_gunicorns_own_log_lines_are_json(tmp_path):
    """Its error log ("Booting worker with pid: ...") was plain text among the service's JSON lines."""
    from gunicorn.config import Config

    config = Config()
    config.set("errorlog", str(tmp_path / "error.log"))
    JsonLogger(config).info("Booting worker with pid: %s", 4242)

    (line,) = (tmp_path / "error.log").read_text().splitlines()
    assert {"level": "INFO", "message": "Booting worker with pid: 4242"}.items() <= json.loads(line).items()
