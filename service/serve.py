"""``lookalike-serve``: run the API under gunicorn with the project's config (service/gunicorn.conf.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONFIG = Path(__file__).with_name("gunicorn.conf.py")


def main() -> None:
    """Replace this process with gunicorn; extra arguments are passed on (e.g. ``--bind``)."""
    gunicorn = Path(sys.executable).with_name("gunicorn")
    os.execv(gunicorn, [str(gunicorn), "-c", str(CONFIG), *sys.argv[1:], "service:create_app()"])


if __name__ == "__main__":
    main()
