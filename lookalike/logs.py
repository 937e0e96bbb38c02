"""Structured logging: one JSON object per line, with the ``extra`` fields of each call.

Every entry point calls `configure_logging` once; modules just use ``logging.getLogger``.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


def configure_logging(level: str = "INFO", filters: tuple[logging.Filter, ...] = ()) -> None:
    """Send JSON lines to stderr (stdout stays free for a command's own output)."""
    handler = logging.StreamHandler(sys.stderr)
    for log_filter in filters:
        handler.addFilter(log_filter)
    handler.setFormatter(
        JsonFormatter("{asctime}{levelname}{name}{message}", style="{", rename_fields={"levelname": "level"})
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
