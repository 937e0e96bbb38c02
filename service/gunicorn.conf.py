"""gunicorn settings for ``gunicorn -c service/gunicorn.conf.py 'service:create_app()'``.

Embedded Qdrant (no QDRANT_URL) allows one process per store directory, so it runs one worker
with threads; with a Qdrant server, WEB_CONCURRENCY workers each hold their own model copy.
"""

import os
import shutil
import sys
import tempfile

from lookalike.errors import LookalikeError
from lookalike.settings import Settings
from lookalike.store import open_embedded

#: The metric files' folder this config made, not one the operator gave.
OWN_METRICS_DIR = "LOOKALIKE_OWN_METRICS_DIR"

try:
    _settings = Settings.from_env()
except LookalikeError as e:  # one line, not gunicorn's "Failed to read config file" and a traceback
    print(f"lookalike: error: {e.message}", file=sys.stderr)
    sys.exit(2)

bind = _settings.bind
# gthread, with the requests gunicorn refuses itself (too long, malformed) answered in JSON too.
worker_class = "service.gunicorn_worker.JsonErrorWorker"
# gunicorn's largest request line (its default is 4094): query strings carry lists (`exclude`,
# `category`); nginx's default buffers (deploy/nginx.conf) allow as much.
limit_request_line = 8190
# Threads wait on the inference thread, the store and slow networks, not on the CPU: 32 keep the
# service answering while 20 slow clients each hold one (bench/slow_clients.py; with 4 every probe
# failed). A body must still arrive within REQUEST_BODY_TIMEOUT_S (service/body_deadline.py).
threads = _settings.threads
workers = 1 if _settings.embedded else _settings.web_concurrency
if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Metrics of all workers in shared files, so that any worker's /metrics sums them (set before
    # the workers import prometheus_client; see service/observability.py). A folder of our own is
    # removed when the master exits (`on_exit`); the name survives a reload (HUP) in the environment.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lookalike-metrics-")
    os.environ[OWN_METRICS_DIR] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
timeout = _settings.timeout  # model load at worker start on a small CPU
graceful_timeout = 30
accesslog = "-"
logger_class = "service.gunicorn_worker.JsonLogger"  # its own lines and the access log as JSON


def on_starting(server) -> None:
    """Fail at once, in words, if the embedded store is held by another process."""
    if not _settings.embedded:
        return
    try:
        open_embedded(_settings.qdrant_path, _settings.embedded_engine).close()
    except LookalikeError as e:
        raise SystemExit(f"lookalike: cannot start: {e.message}") from None


def child_exit(server, worker) -> None:
    """A dead worker's live gauges must not linger in the shared metric files."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


def on_exit(server) -> None:
    """The metric files' folder made at start goes with the master: each start made one in /tmp."""
    if own := os.environ.get(OWN_METRICS_DIR):
        shutil.rmtree(own, ignore_errors=True)
