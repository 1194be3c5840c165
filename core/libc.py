"""The C library's own functions for the few Linux calls Python's ``os`` lacks (inotify, sync_file_range).

Through ctypes: no dependency for a handful of calls, and callers fall back
to plain Python where a function is missing (another OS, another libc).
"""

from __future__ import annotations

import ctypes
from functools import cache


@cache
def libc() -> ctypes.CDLL | None:
    """This process's own symbols (libc is among them), errno kept; None where they cannot be loaded."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
