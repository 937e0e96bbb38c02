"""``lookalike-serve``: run the API under gunicorn with the project's config (service/gunicorn.conf.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONFIG = Path(__file__).with_name("gunicorn.conf.py")
USAGE = """usage: lookalike-serve [GUNICORN OPTIONS]

Serve the lookalike API (Flask app service:create_app()) under gunicorn with the project's
config. Settings come from the environment (README: Settings), among them:
  BIND              address to listen on (default 127.0.0.1:8000)
  THREADS           request threads per worker (default 32)
  WEB_CONCURRENCY   workers with a Qdrant server (QDRANT_URL); the embedded store allows one
  TIMEOUT           worker timeout in seconds (default 120)
Any other arguments go to gunicorn as they are (e.g. --bind 0.0.0.0:8000, --log-level debug);
gunicorn --help lists them."""


def main() -> None:
    """Replace this process with gunicorn; extra arguments are passed on (e.g. ``--bind``)."""
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(USAGE)
        return
    gunicorn = Path(sys.executable).with_name("gunicorn")
    os.execv(gunicorn, [str(gunicorn), "-c", str(CONFIG), *sys.argv[1:], "service:create_app()"])


if __name__ == "__main__":
    main()
