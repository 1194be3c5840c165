"""Wake the resident pusher the moment PostgreSQL marks a WAL file ready (Linux inotify).

PostgreSQL creates ``archive_status/NAME.ready`` and then wakes its
archiver, which starts ``archive_command`` for that file. A pusher that
only scanned the directory every ``SCAN_INTERVAL_S`` would start most
pushes after the call had already asked for them; watching the directory
lets the push run while the call is still starting up (about 50 ms of
Python start-up), so the call mostly finds it done.

Three libc calls through ctypes: no dependency for them, and where inotify
is missing (not Linux, or the watch limit reached) :func:`open_watch`
returns None and the pusher keeps scanning on its timer.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

from core.libc import libc as own_libc

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
# A .ready file is created (open+close) or renamed into place; PostgreSQL does the former.
_IN_CREATE, _IN_MOVED_TO, _IN_CLOSE_WRITE = 0x100, 0x80, 0x8
_MASK = _IN_CREATE | _IN_MOVED_TO | _IN_CLOSE_WRITE


class DirWatch:
    """An inotify descriptor watching directories for new files; readable when something arrived."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc = libc
        self.fd = fd
        self.watched: set[Path] = set()

    def add(self, directory: Path) -> bool:
        """Watch ``directory`` (again is a no-op); False when it cannot be watched (missing, no permission)."""
        if directory in self.watched:
            return True
        if self._libc.inotify_add_watch(self.fd, os.fsencode(directory), _MASK) < 0:
            return False
        self.watched.add(directory)
        return True

    def drain(self) -> None:
        """Read and drop the pending events (the pusher rescans the directories itself)."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self.fd, 65536):
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def open_watch() -> DirWatch | None:
    """A new inotify watch, or None where inotify is not available."""
    libc = own_libc()
    try:
        init = libc.inotify_init1 if libc is not None else None
    except AttributeError:
        init = None
    if libc is None or init is None:
        return None
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    fd = init(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        return None
    return DirWatch(libc, fd)
