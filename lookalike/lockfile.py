"""The embedded store's one-process lock, made safe against forked children and dead holders.

An embedded store directory belongs to one process. Its lock is an ``flock`` on ``<dir>/.lock``
(qdrant-client's local mode takes the same kind on the same file). ``flock`` locks belong to the
open file, which a ``fork`` shares with the child: a decode worker forked by ingest would keep the
store locked after ingest itself was killed. So every fork closes its copy of a store lock at once
(`os.register_at_fork`), and the holder's pid and command are written into the lock file, so a
refusal can say who holds the store, or that the holder no longer exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path

LOCK_FILE = ".lock"
#: Lock files this process holds or may hold (a store opened by qdrant-client's local mode too).
_LOCK_PATHS: set[str] = set()


def register_lock_path(path: Path) -> None:
    """Remember a store lock file, so that forked children drop their copy of its lock."""
    _LOCK_PATHS.add(os.path.realpath(path))


def _drop_inherited_locks() -> None:
    """In a freshly forked child: point every fd that refers to a store lock file at /dev/null.

    The parent keeps its lock (its own fd still refers to the locked open file); the child simply
    no longer shares it, so it cannot hold the store once the parent is gone.
    """
    if not _LOCK_PATHS:
        return
    with contextlib.suppress(OSError):
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
        null = os.open(os.devnull, os.O_RDWR)
        try:
            for fd in fds:
                with contextlib.suppress(OSError):
                    if fd != null and os.readlink(f"/proc/self/fd/{fd}") in _LOCK_PATHS:
                        os.dup2(null, fd)  # keeps the number valid for Python's file object
        finally:
            os.close(null)


os.register_at_fork(after_in_child=_drop_inherited_locks)


class StoreLockBusy(Exception):
    """The lock is held; ``holder`` describes by whom, as far as the lock file tells."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


class ProcessLock:
    """An exclusive, non-blocking lock on ``<directory>/.lock`` for the life of this object."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        register_lock_path(self.path)
        self._file = self.path.open("a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = describe_holder(self.path)
            self._file.close()
            raise StoreLockBusy(holder) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()} {' '.join(sys.argv)[:200]}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


def describe_holder(path: Path) -> str:
    """Who holds the lock, from the pid its holder wrote: alive, gone, or unknown."""
    try:
        pid_text, _, command = path.read_text().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return "another process"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return (
            f"a process left behind by pid {pid} ({command.strip()}), which no longer exists: "
            f"find it with `fuser -v {path}` and stop it"
        )
    except PermissionError:
        pass
    return f"pid {pid} ({command.strip()})"
