"""The C library's own functions for the few Linux calls Python's ``os`` lacks (inotify, sync_file_range).

Through ctypes: no dependency for a handful of calls, and callers fall back
to plain Python where a function is missing (another OS, another libc).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from functools import cache
from typing import cast


@cache
def libc() -> ctypes.CDLL | None:
    """This process's own symbols (libc is among them), errno kept; None where they cannot be loaded."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_SYNC_FILE_RANGE_WRITE = 2


@cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    lib = libc() if sys.platform == "linux" else None
    fn = getattr(lib, "sync_file_range", None) if lib is not None else None
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to disk without waiting (Linux sync_file_range; elsewhere nothing).

    A hint: its result is not checked, the final fsync is what makes the file durable and reports errors.
    """
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
