"""Read every request body within a deadline, so slow clients cannot hold the server's threads.

A gthread worker reads a body on the thread that serves the request: a client that sends one
byte every two seconds holds a thread for as long as it likes, and a few of them stall the
service. This WSGI middleware reads the body before the app sees it, with the socket's
reading side shut at the deadline (``seconds``); a body that is not complete by then gets a 408
and the connection is closed. Bodies the app would refuse anyway (over ``max_bytes``) are left to it.

Only gunicorn hands its socket over (``gunicorn.socket``); elsewhere the body is read as usual.
A buffering reverse proxy in front (docker-compose.yml) is the production answer for slow headers
as well; this keeps the embedded single-process default safe on its own.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)
CHUNK = 64 * 1024


class BodyDeadline:
    def __init__(self, app: Callable, seconds: float, max_bytes: int) -> None:
        self.app = app
        self.seconds = seconds
        self.max_bytes = max_bytes

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        length = _content_length(environ)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not isinstance(sock, socket.socket) or not (length or chunked) or (length or 0) > self.max_bytes:
            return self.app(environ, start_response)
        try:
            body = self._read(environ["wsgi.input"], sock, length)
        except (TimeoutError, OSError):
            log.warning("request body too slow", extra={"path": environ.get("PATH_INFO"), "deadline_s": self.seconds})
            return _timeout(start_response, self.seconds)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)

    def _read(self, stream, sock: socket.socket, length: int | None) -> bytes:
        """The whole body, or `TimeoutError` when it is not in by the deadline.

        A socket timeout bounds one ``recv``, not a body that trickles in a byte at a time; so a
        timer shuts the socket's reading side at the deadline, which ends the blocked read.
        """
        fired = threading.Event()

        def stop_reading() -> None:
            fired.set()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)

        timer = threading.Timer(self.seconds, stop_reading)
        timer.start()
        parts: list[bytes] = []
        left = length if length is not None else self.max_bytes + 1
        try:
            while left > 0:
                chunk = stream.read(min(CHUNK, left))
                if not chunk:
                    break
                parts.append(chunk)
                left -= len(chunk)
        except OSError:
            if not fired.is_set():
                raise
        finally:
            timer.cancel()
        if fired.is_set():
            raise TimeoutError
        return b"".join(parts)


def _content_length(environ: dict) -> int | None:
    try:
        return int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _timeout(start_response: Callable, seconds: float) -> list[bytes]:
    body = json.dumps(
        {"error": {"code": "request_timeout", "message": f"the request body did not arrive within {seconds:g} s"}}
    ).encode()
    start_response(
        "408 Request Timeout",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")],
    )
    return [body]
