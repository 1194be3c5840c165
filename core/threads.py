"""Worker-thread jobs awaited from asyncio, and never abandoned halfway.

``loop.run_in_executor`` lets a cancelled caller go on while its job still
runs; when the job writes into a file descriptor, the caller's cleanup
(closing it, the kernel handing the number to another file at once) races
with it. :func:`run_to_end` waits for the job instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")


async def run_to_end(pool: Executor, fn: Callable[..., T], *args: Any,
                     undo: Callable[[T], object] | None = None) -> T:
    """``fn(*args)`` in ``pool``; when the caller is cancelled, return only once ``fn`` has stopped.

    ``undo(result)`` releases what a job made when it finished after its caller had given up (a descriptor
    it opened, for instance).
    """
    job = pool.submit(fn, *args)
    try:
        return await asyncio.wrap_future(job)
    except BaseException:
        if not job.cancel():
            concurrent.futures.wait([job])  # at most one job's work, on the cancelled path only
            if undo is not None and not job.cancelled() and job.exception() is None:
                undo(job.result())
        raise
