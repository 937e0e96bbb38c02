"""deploy/nginx.conf (docker-compose's proxy) in front of the real server: what nginx refuses or
cannot pass on is answered in the API's JSON error shape, and the API's own errors pass through.

Runs the real nginx binary (`make test-tools` installs it) with the file as it ships, only its
upstream and port pointed at this test's gunicorn.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.server import free_port
from tests.conftest import HEADER_TOO_LARGE, MALFORMED, REQUEST_LINE_TOO_LONG, ROOT, raw_request

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx binary (make test-tools installs Debian's)")
SHIPPED = (ROOT / "deploy" / "nginx.conf").read_text()
#: Over the proxy's client_max_body_size (21 MiB), announced by its Content-Length alone.
BODY_TOO_LARGE = b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 23000000\r\n\r\n"


@contextlib.contextmanager
def nginx(upstream_port: int, tmp_path: Path) -> Iterator[int]:
    """nginx with the shipped config, its upstream at ``upstream_port``; yields its own port."""
    port = free_port()
    assert "server api:8000;" in SHIPPED and "listen 8080;" in SHIPPED
    config = SHIPPED.replace("server api:8000;", f"server 127.0.0.1:{upstream_port};")
    (tmp_path / "nginx.conf").write_text(config.replace("listen 8080;", f"listen 127.0.0.1:{port};"))
    (tmp_path / "logs").mkdir()
    directives = f"daemon off; master_process off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/logs/error.log;"
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", directives],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "logs" / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def proxy(gunicorn_server, tmp_path: Path) -> Iterator[int]:
    with nginx(gunicorn_server[0], tmp_path) as port:
        yield port


def test_the_apis_own_errors_pass_through(proxy):
    port = proxy
    answer = httpx.get(f"http://127.0.0.1:{port}/v1/items/nope/image", timeout=10)
    assert answer.headers["content-type"] == "application/json"
    assert "request_id" in answer.json()["error"]  # the API's body, not the proxy's


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (BODY_TOO_LARGE, "413", "request_entity_too_large"),
        (REQUEST_LINE_TOO_LONG, "414", "uri_too_long"),
        (HEADER_TOO_LARGE, "431", "request_header_fields_too_large"),
        (MALFORMED, "400", "bad_request"),
    ],
    ids=["body-too-large", "request-line-too-long", "header-too-large", "malformed"],
)
def test_requests_nginx_refuses_get_json_errors(proxy, request_bytes, status, code):
    port = proxy
    status_line, headers, body = raw_request(port, request_bytes)
    assert status_line.split(" ")[1] == status
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == code


def test_an_unreachable_api_is_a_json_503_to_retry(tmp_path):
    with nginx(free_port(), tmp_path) as port:  # nothing listens upstream
        status_line, headers, body = raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_line.split(" ")[1] == "503"
    assert headers["content-type"] == "application/json" and headers["retry-after"] == "5"
    assert json.loads(body)["error"]["code"] == "unavailable"
