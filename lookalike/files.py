"""Writing files so that a full disk is an error that names itself, never a half-written file.

A full disk surfaces as `DiskFull` (507 from the API, exit 2 from the commands): files are
written whole or not at all, and the embedded engine's writes are refused while there is too
little space to make them safely (`ensure_free_space`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lookalike.errors import DiskFull, LookalikeError

log = logging.getLogger(__name__)
MIB = 2**20


def is_disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: Path, error: OSError | None = None) -> DiskFull:
    """The `DiskFull` for a failed write to ``path`` (the full path goes to the log, not to clients)."""
    log.warning("disk full", extra={"path": str(path), "reason": error.strerror if error else None})
    return DiskFull(f"the disk is full (writing {path.name}): free some space and retry")


def command_error(error: OSError) -> LookalikeError:
    """A file error as a command reports it in one line: a full disk, or what failed on which file."""
    if is_disk_full(error):
        return disk_full(Path(error.filename or "."), error)
    return LookalikeError(f"{error.strerror or error}" + (f": {error.filename}" if error.filename else ""))


def stop_message(error: LookalikeError | OSError) -> str:
    """What a command prints when ``error`` stops it (a file error as `command_error` words it)."""
    return (command_error(error) if isinstance(error, OSError) else error).message


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` in one step, on disk when this returns: a reader (or a restart
    after a crash or a power cut) sees the old file or the new one. On failure the temporary file
    goes too; a full disk is a `DiskFull`."""
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(name, path)
            sync_directory(path.parent)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(path, e) from e
        raise


def sync_directory(directory: Path) -> None:
    """Put a rename in ``directory`` on disk: until its directory is synced, a power cut can undo it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def whole_or_not(target: Path) -> Iterator[Path]:
    """A hidden sibling of ``target`` to fill; once filled, every file in it is synced and it is
    renamed to ``target``, which so appears whole, on disk, or not at all. On failure it goes."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a run killed before its cleanup
    try:
        partial.mkdir(parents=True)
        yield partial
        for folder, _, files in os.walk(partial):
            for name in files:
                with open(os.path.join(folder, name), "rb") as f:
                    os.fsync(f.fileno())
            sync_directory(Path(folder))
        partial.rename(target)
        sync_directory(target.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def ensure_free_space(path: Path, needed: int, what: str, error: type[LookalikeError] = DiskFull) -> None:
    """``error`` (`DiskFull`) unless the disk holding ``path`` has ``needed`` bytes free for ``what``."""
    free = free_bytes(path)
    if free < needed:
        log.warning("refused: disk nearly full", extra={"path": str(path), "free_mib": free // MIB, "what": what})
        raise error(
            f"{what} needs {-(-needed // MIB)} MiB free on its disk, which has {free // MIB} MiB: "
            "free some space and retry (what was written before stays)"
        )


def on_tmpfs(path: Path, mounts: Path = Path("/proc/self/mounts")) -> bool:
    """Whether ``path`` lies on a tmpfs (the longest mount point above it; False without /proc)."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return False
    resolved, best, kind = str(path.resolve()), "", ""
    for fields in (line.split() for line in lines):
        mount = fields[1].replace("\\040", " ") if len(fields) > 2 else ""
        if mount and (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, kind = mount, fields[2]
    return kind == "tmpfs"


def unallocated_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` that are holes (sparse), which a write may fill."""
    sizes = (p.stat() for p in folder.rglob("*") if p.is_file())
    return sum(max(0, s.st_size - s.st_blocks * 512) for s in sizes)
