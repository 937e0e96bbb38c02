"""Write access: ``Authorization: Bearer <API_KEY>``; with no key configured writes are off."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, request

from lookalike.errors import LookalikeError
from service.resources import get_resources

View = TypeVar("View", bound=Callable)


class Unauthorized(LookalikeError):
    status = 401
    code = "unauthorized"


class WritesDisabled(LookalikeError):
    status = 403
    code = "writes_disabled"


def require_api_key(view: View) -> View:
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        check_write_access(request.headers.get("Authorization", ""))
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def protect_reads(app: Flask) -> None:
    """With PROTECT_READS=true, every /v1 request needs the API key (not health, metrics, docs)."""

    @app.before_request
    def require_key_for_v1() -> None:
        if get_resources().settings.protect_reads and request.path.startswith("/v1/"):
            check_write_access(request.headers.get("Authorization", ""))


def check_write_access(authorization: str) -> None:
    """The bearer-key check (writes always; reads when PROTECT_READS is set)."""
    settings = get_resources().settings
    if settings.api_key is None:
        if settings.allow_unauthenticated_writes:
            return
        raise WritesDisabled(
            "writes are disabled: set API_KEY on the server and send 'Authorization: Bearer <key>' "
            "(or ALLOW_UNAUTHENTICATED_WRITES=true for local development)"
        )
    scheme, _, token = authorization.partition(" ")
    expected = settings.api_key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <API_KEY>'")
