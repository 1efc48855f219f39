"""One writer per data root: an exclusive ``fcntl.flock`` on ``<data root>/.lock``.

A run (the nightly flow, or a command that stores results) holds the lock from start to
end, so two runs never score the same inputs twice or meet on DuckDB's own file lock.
The kernel drops the lock when its process ends, however it ends (SIGKILL included), so
no stale lock is left to clean up. The file holds who took the lock (pid, host, since,
what), for the message a second run gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from semisynth.errors import DataRootLocked, NotWritable, write_refused

LOCK_NAME = ".lock"
_POLL_S = 0.2
_log = logging.getLogger(__name__)


# Lock files this process holds -> [open descriptor, how many `with` blocks hold it]: the
# process is the writer, so a flow run inside `nightly.run` re-enters the lock `run` took.
_held: dict[Path, list[int]] = {}
_held_guard = threading.Lock()


def lock_path(root: Path) -> Path:
    return Path(root) / LOCK_NAME


def holder(root: Path) -> dict:
    """Who holds (or last held) the data root's lock, as it wrote itself down; {} if
    unknown."""
    try:
        return json.loads(lock_path(root).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info:
        return "another process"
    return (f"{info.get('by') or 'another run'} (pid {info.get('pid')} on {info.get('host')}, "
            f"since {info.get('since')})")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _acquire(path: Path, wait_s: float) -> int:
    """An open descriptor of ``path`` holding the exclusive lock, within ``wait_s``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    except OSError as exc:  # the first write of every run: a read-only root is found here
        if write_refused(exc):
            raise NotWritable("the data root", path.parent, exc,
                              "a run writes its warehouse, shards and lock there: name a "
                              "writable one (--data-root DIR)") from exc
        raise
    deadline = time.monotonic() + wait_s
    warned = False
    while not _try_lock(fd):
        if time.monotonic() >= deadline:
            os.close(fd)
            raise DataRootLocked(
                f"the data root {path.parent} is in use by {_describe(holder(path.parent))}; "
                f"gave up after waiting {wait_s:g} s (one run at a time per data root; "
                "--set lock_wait_s=SECONDS waits longer)")
        if not warned:
            _log.warning("waiting up to %g s for the data root lock %s, held by %s", wait_s,
                         path, _describe(holder(path.parent)))
            warned = True
        time.sleep(_POLL_S)
    return fd


def _write_holder(fd: int, by: str) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "by": by,
            "since": datetime.now(UTC).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


@contextlib.contextmanager
def data_root_lock(root: Path, wait_s: float, by: str) -> Iterator[Path]:
    """Hold the data root's lock for the block; ``by`` says what holds it (shown to a run
    that waits). Waits up to ``wait_s`` seconds for another holder to finish, then raises
    DataRootLocked. Re-entrant within a process. Yields the lock file's path."""
    path = lock_path(Path(root).resolve())
    with _held_guard:
        if path in _held:
            _held[path][1] += 1
        else:
            fd = _acquire(path, wait_s)
            _write_holder(fd, by)
            _held[path] = [fd, 1]
    try:
        yield path
    finally:
        with _held_guard:
            _held[path][1] -= 1
            if _held[path][1] == 0:
                os.close(_held.pop(path)[0])  # closing the descriptor releases the lock
