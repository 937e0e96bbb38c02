"""The embedded store's lock after kill -9: no leftover process keeps it (issue 12, defect 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ingest.__main__ import main as ingest_main
from lookalike.errors import StoreLocked
from lookalike.settings import Settings
from lookalike.store import VectorStore
from tests.conftest import ENGINES, TEST_MODEL


def children_of(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(name))
    return found


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "QDRANT_PATH": str(settings.qdrant_path),
        "CATALOGUE_DIR": str(settings.catalogue_dir),
        "MODEL_NAME": TEST_MODEL,
        "MODEL_PRETRAINED": "",
        "EMBEDDED_ENGINE": settings.embedded_engine,
        "INGEST_ERROR_REPORT": str(settings.ingest_error_report),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        **extra,
    }


SLOW_INGEST = textwrap.dedent(
    """
    import sys, time
    from ingest.decode import DecodeDataset
    from ingest.__main__ import main

    original = DecodeDataset.__getitem__

    def slow(self, index):
        time.sleep(0.5)
        return original(self, index)

    DecodeDataset.__getitem__ = slow
    sys.exit(main(["--no-progress"]))
    """
)


@pytest.mark.parametrize("engine", ENGINES)
def test_kill_9_while_decoding_leaves_no_worker_and_no_lock(settings: Settings, monkeypatch, capsys):
    env = env_of(settings, DECODE_WORKERS="2", BATCH_SIZE="2")
    run = subprocess.Popen([sys.executable, "-c", SLOW_INGEST], env=env)
    try:
        assert wait_for(lambda: len(children_of(run.pid)) >= 2, 120), "decode workers never started"
        workers = children_of(run.pid)
        time.sleep(1.0)  # workers busy decoding, the queue filling
        os.kill(run.pid, signal.SIGKILL)
        run.wait(10)
        assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10), (
            "workers outlived ingest"
        )
    finally:
        if run.poll() is None:
            run.kill()
    for name, value in env_of(settings, DECODE_WORKERS="0").items():
        monkeypatch.setenv(name, value)
    assert ingest_main(["--no-progress"]) == 0
    assert "items=12" in capsys.readouterr().out


HOLD_THEN_FORK = textwrap.dedent(
    """
    import os, sys, time
    from lookalike.settings import Settings
    from lookalike.store import VectorStore

    store = VectorStore.from_settings(Settings())
    child = os.fork()
    if child == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1), os.dup2(devnull, 2)  # the test reads the holder's output to its end
        time.sleep(30)  # a forked helper that lives on
        os._exit(0)
    print(child, flush=True)
    os._exit(0)  # the holder dies without releasing anything
    """
)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_forked_child_does_not_keep_the_store_locked(settings: Settings):
    run = subprocess.run([sys.executable, "-c", HOLD_THEN_FORK], env=env_of(settings), capture_output=True, text=True)
    child = int(run.stdout.split()[0])
    try:
        assert Path(f"/proc/{child}").exists()
        VectorStore.from_settings(settings).close()  # not "in use by another process"
    finally:
        os.kill(child, signal.SIGKILL)


HOLD_AS_DEAD_PID = textwrap.dedent(
    """
    import fcntl, sys, time
    lock = open(sys.argv[1], "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)
    lock.seek(0); lock.truncate(); lock.write(sys.argv[2] + " python -m ingest\\n"); lock.flush()
    print("locked", flush=True)
    time.sleep(30)
    """
)


def test_a_lock_whose_recorded_holder_is_gone_is_named_as_such(settings: Settings):
    """On the default engine (Edge), whose lock records its holder's pid."""
    settings.qdrant_path.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AS_DEAD_PID, str(settings.qdrant_path / ".lock"), dead.stdout.strip()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLocked, match="no longer exists"):
            VectorStore.from_settings(settings)
    finally:
        holder.kill()
        holder.wait()


KILL_AT = textwrap.dedent(
    """
    import os, signal, sys
    import ingest.decode as decode
    import ingest.pipeline as pipeline
    from lookalike.store import VectorStore
    from ingest.__main__ import main

    moment = os.environ["KILL_AT"]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def after(owner, name, condition=lambda calls: True):
        original, calls = getattr(owner, name), []

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            calls.append(1)
            if condition(len(calls)):
                die()
            return result

        setattr(owner, name, wrapped)

    if moment == "collection-created":
        after(VectorStore, "ensure_collection")
    elif moment == "decoding":  # a decode worker kills ingest while the workers are busy
        original = decode.DecodeDataset.__getitem__
        def getitem(self, index):
            if index == 6:
                os.kill(os.getppid(), signal.SIGKILL)
            return original(self, index)
        decode.DecodeDataset.__getitem__ = getitem
    elif moment == "first-batch":
        after(VectorStore, "upsert", lambda calls: calls == 1)
    elif moment == "index-build":
        after(VectorStore, "item_ids")  # the prune pass, before the HNSW build
    elif moment == "api-items":
        after(pipeline, "sync_uploads")
    sys.exit(main(["--no-progress", "--prune"]))
    """
)


@pytest.mark.parametrize("moment", ["collection-created", "decoding", "first-batch", "index-build", "api-items"])
def test_kill_9_at_any_moment_then_a_rerun_finishes(settings: Settings, monkeypatch, capsys, moment):
    env = env_of(settings, DECODE_WORKERS="2", BATCH_SIZE="2", KILL_AT=moment)
    killed = subprocess.run([sys.executable, "-c", KILL_AT], env=env, capture_output=True, text=True, timeout=180)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    for name, value in env_of(settings, DECODE_WORKERS="2").items():
        monkeypatch.setenv(name, value)
    assert ingest_main(["--no-progress", "--prune"]) == 0  # at once: no "store in use"
    assert "items=12" in capsys.readouterr().out
