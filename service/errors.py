"""Every error leaves the service as ``{"error": {"code", "message"}}`` with a fitting status.

Views raise domain errors or abort; they never catch. Anything unexpected is logged with its
traceback and answered with a bare 500 that reveals nothing.
"""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from lookalike.errors import DiskFull, LookalikeError, StoreUnavailable
from lookalike.files import is_disk_full
from service.observability import current_request_id

log = logging.getLogger(__name__)
RETRY_AFTER_S = "5"


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    """The one error shape; it names the request id so a client report can be matched to the logs."""
    error = {"code": code, "message": message}
    request_id = current_request_id()
    if request_id is not None:
        error["request_id"] = request_id
    return jsonify(error=error), status


def error_code(name: str) -> str:
    """An HTTP reason phrase as an error code: "URI Too Long" -> ``uri_too_long``."""
    return re.sub(r"[^a-z]+", "_", name.lower()).strip("_") or "error"


def add_security_headers(response: Response) -> Response:
    """Every answer: browsers must take the declared type as it is (no sniffing an image into HTML)."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def register_error_handlers(app: Flask) -> None:
    app.after_request(add_security_headers)

    @app.errorhandler(LookalikeError)
    def domain_error(e: LookalikeError) -> tuple[Response, int]:
        response, status = error_response(e.status, e.code, e.message)
        if isinstance(e, StoreUnavailable):
            response.headers["Retry-After"] = RETRY_AFTER_S
        level = logging.ERROR if status >= 500 else logging.INFO
        log.log(
            level, "request failed", extra={"path": request.path, "status": status, "code": e.code, "reason": e.message}
        )
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> tuple[Response, int]:
        code = error_code(e.name or "error")
        response, status = error_response(e.code or 500, code, e.description or e.name)
        log.info("request failed", extra={"path": request.path, "status": status, "code": code})
        if e.code == 405 and e.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(e.valid_methods)  # type: ignore[attr-defined]
        return response, status

    @app.errorhandler(OSError)
    def os_error(e: OSError) -> tuple[Response, int]:
        """A full disk is the server's condition to report (507), not a bug; any other is a 500."""
        if is_disk_full(e):
            return domain_error(DiskFull("the server's disk is full: retry once space is freed"))
        return unexpected_error(e)

    @app.errorhandler(Exception)
    def unexpected_error(e: Exception) -> tuple[Response, int]:
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(500, "internal_error", "internal error; it has been logged")
