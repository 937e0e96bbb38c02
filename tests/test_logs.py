"""Structured logs: one JSON object per line on stderr."""

from __future__ import annotations

import io
import json
import logging
import sys

from lookalike.logs import configure_logging


def test_logs_are_json_lines_on_whatever_stderr_is_now(monkeypatch):
    """A command run in-process (tests) configures logging on a captured stderr that is later
    closed: the next line must go to the stderr of that moment, not fail on the closed stream."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("INFO")
    logging.getLogger("t").info("one", extra={"item_id": "a"})
    first_text = first.getvalue()
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("t").info("two")
    assert json.loads(first_text)["item_id"] == "a"
    assert json.loads(second.getvalue())["message"] == "two"
