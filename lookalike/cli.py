"""Argument types shared by the command-line entry points.

A bad option value (``--batch-size 0``, ``--workers -1``) is refused by argparse itself: exit 2
with one line naming the option, before any model or store is opened.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable


def _number(kind: type, minimum: float | None, maximum: float | None, exclusive_min: bool = False) -> Callable:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        too_small = minimum is not None and (value <= minimum if exclusive_min else value < minimum)
        if too_small or (maximum is not None and value > maximum):
            low = "" if minimum is None else f"{'>' if exclusive_min else '>='} {minimum:g}"
            high = "" if maximum is None else f"<= {maximum:g}"
            raise argparse.ArgumentTypeError(
                f"{value} is out of range: must be {' and '.join(filter(None, (low, high)))}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid ... value" message
    return parse


def program(module: str) -> str:
    """The name a command was run by, for its usage line: ``lookalike-ingest`` as a console script,
    ``python -m ingest`` as a module."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return f"python -m {module}" if name in ("", "__main__.py", "-c") or name.endswith(".py") else name


def description(docstring: str | None) -> str:
    """A module docstring's first line as help text: without reST's double backquotes."""
    return (docstring or "").strip().splitlines()[0].replace("``", "")


def int_range(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An integer between ``minimum`` and ``maximum`` (inclusive)."""
    return _number(int, minimum, maximum)


def positive_float(maximum: float | None = None) -> Callable[[str], float]:
    """A finite number above 0."""
    return _number(float, 0.0, maximum, exclusive_min=True)


def float_range(minimum: float, maximum: float) -> Callable[[str], float]:
    """A finite number between ``minimum`` and ``maximum`` (inclusive)."""
    return _number(float, minimum, maximum)


def float_list(minimum: float, maximum: float) -> Callable[[str], list[float]]:
    """Comma-separated numbers, each between ``minimum`` and ``maximum``; empty = none."""
    one = float_range(minimum, maximum)

    def parse(text: str) -> list[float]:
        return [one(part.strip()) for part in text.split(",") if part.strip()]

    parse.__name__ = "list"
    return parse
