"""gunicorn's threaded worker and access log, in the service's JSON.

gunicorn refuses some requests before Flask sees them: a request line over ``limit_request_line``
(414), headers over their limits (431), a malformed request (400). Its answer is an HTML page,
which a site backend parsing ``{"error": {"code", "message"}}`` cannot read. This worker lets
gunicorn decide the status and log as it always does, then sends that status with a JSON body.
`JsonLogger` writes gunicorn's own log lines as JSON.
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import ThreadWorker

from lookalike.logs import json_formatter
from service.errors import error_code
from service.observability import REQUEST_ID_HEADER


class JsonErrorWorker(ThreadWorker):
    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        answer = _CapturedAnswer()
        super().handle_error(req, answer, addr, exc)  # gunicorn's status choice, logs and access log
        if answer.status is None:  # it wrote nothing
            return
        status, reason = answer.status
        message = f"{reason}: {exc}" if status < 500 else "internal error; it has been logged"
        body = json.dumps({"error": {"code": error_code(reason), "message": message}}).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\n\r\n"
        )
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except OSError:
            self.log.debug("Failed to send error message.")


class _CapturedAnswer:
    """Stands in for the client socket while gunicorn writes its error page: keeps the status."""

    status: tuple[int, str] | None = None

    def gettimeout(self) -> float:
        return 0.0  # "non-blocking already": gunicorn then writes without switching modes

    def sendall(self, data: bytes) -> None:
        _, code, reason = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        self.status = (int(code), reason)


class JsonLogger(Logger):
    """gunicorn's own log lines as JSON, as the service's are: its error log ("Booting worker",
    "Worker timeout") in the service's format, and the access log one object a request, encoded by
    ``json``: gunicorn's ``access_log_format`` escapes quotes only, so a backslash in a request's
    URL made the line invalid JSON for whatever reads the log."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(json_formatter())

    def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        atoms = self.atoms(resp, req, environ, request_time)
        status = str(atoms["s"])
        line = {
            "remote": atoms["h"],
            "request": atoms["r"],
            "status": int(status) if status.isdigit() else status,
            "bytes": atoms["B"],
            "ms": atoms["M"],
        }
        request_id = atoms.get(f"{{{REQUEST_ID_HEADER.lower()}}}o")  # the answer's: the app's log lines name it too
        if request_id:
            line["request_id"] = request_id
        self.access_log.info(json.dumps(line))
