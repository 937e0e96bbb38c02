"""Structured logging: one JSON object per line, with the ``extra`` fields of each call.

Every entry point calls `configure_logging` once; modules just use ``logging.getLogger``.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each line, not as it was when logging was configured: a
    command run in-process (tests capture and then close its stderr) leaves no dead stream behind."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # always sys.stderr


def configure_logging(level: str = "INFO", filters: tuple[logging.Filter, ...] = ()) -> None:
    """Send JSON lines to stderr (stdout stays free for a command's own output)."""
    handler = StderrHandler()
    for log_filter in filters:
        handler.addFilter(log_filter)
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def json_formatter() -> logging.Formatter:
    """One JSON object a record: time, level, logger, message and the call's ``extra`` fields."""
    return JsonFormatter("{asctime}{levelname}{name}{message}", style="{", rename_fields={"levelname": "level"})
