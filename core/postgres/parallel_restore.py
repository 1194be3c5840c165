"""Whole-database restore with parallel jobs, from archive streams that cannot seek.

`pg_restore -j` needs a seekable file, which would mean staging the whole
dump on disk. Instead the restore runs in sections, each as pg_restore
processes fed their own stream of the archive from the repository:

1. pre-data (schema) in one process;
2. data split into ``jobs`` lists balanced by table size; each process
   reads the whole stream, skipping what is not on its list, so while one
   loads a big table the other is already loading the next;
3. post-data indexes and primary/unique constraints split across ``jobs``
   processes (they need only the archive's TOC, not its data);
4. everything else (foreign keys, triggers, materialized view data, ACLs
   of any section) in one process, last.

Lists keep the archive's order: a pg_restore reading a pipe cannot go back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from core.errors import PostgresError
from core.postgres.logical import read_toc, restore_stream, toc_desc

StreamFactory = Callable[[], AsyncIterator[bytes]]

# Independent of each other once the data is in. "FK CONSTRAINT" and
# "INDEX ATTACH" (partitioned indexes) depend on these, so they come later.
_PARALLEL_POST = ("INDEX ", "CONSTRAINT ")


def _parallel_post(line: str) -> bool:
    desc = toc_desc(line)
    return desc.startswith(_PARALLEL_POST) and not desc.startswith("INDEX ATTACH ")


def _weight(line: str, table_bytes: dict[str, int]) -> int:
    desc = toc_desc(line)
    if desc.startswith("TABLE DATA "):
        parts = desc[len("TABLE DATA "):].split(" ")
        if len(parts) >= 2:
            return table_bytes.get(f"{parts[0]}.{parts[1]}", 0) + 1
    return 1


def split_balanced(lines: list[str], jobs: int, weight: Callable[[str], int]) -> list[list[str]]:
    """Greedy largest-first split into ``jobs`` lists, each kept in archive order."""
    pos = {line: i for i, line in enumerate(lines)}
    buckets: list[list[str]] = [[] for _ in range(jobs)]
    loads = [0] * jobs
    for line in sorted(lines, key=weight, reverse=True):
        k = loads.index(min(loads))
        buckets[k].append(line)
        loads[k] += weight(line)
    return [sorted(b, key=pos.__getitem__) for b in buckets if b]


async def _run_all(bin_dir: Path, dsn: str, open_stream: StreamFactory, lists: list[list[str]]) -> None:
    tasks = [asyncio.ensure_future(restore_stream(bin_dir, dsn, open_stream(), "\n".join(lst) + "\n"))
             for lst in lists]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        # One job failed: stop the others before the caller drops the database.
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def parallel_restore(bin_dir: Path, dsn: str, open_stream: StreamFactory, jobs: int,
                           table_bytes: dict[str, int], on_phase: Callable[[str], None] | None = None) -> None:
    """Restore a whole archive into ``dsn`` with up to ``jobs`` pg_restore processes at once."""
    full = await read_toc(bin_dir, open_stream())
    pre = set(await read_toc(bin_dir, open_stream(), "--section=pre-data"))
    data = set(await read_toc(bin_dir, open_stream(), "--section=data"))
    post_idx = {ln for ln in await read_toc(bin_dir, open_stream(), "--section=post-data")
                if _parallel_post(ln)}
    steps: list[tuple[str, list[list[str]]]] = [
        ("restore schema", [[ln for ln in full if ln in pre]]),
        ("restore data", split_balanced([ln for ln in full if ln in data], jobs, lambda ln: _weight(ln, table_bytes))),
        ("build indexes", split_balanced([ln for ln in full if ln in post_idx], jobs, lambda ln: 1)),
        # Whatever no earlier step took (foreign keys, triggers, ACLs, ...), in archive order.
        ("finish", [[ln for ln in full if ln not in pre and ln not in data and ln not in post_idx]]),
    ]
    for phase, lists in steps:
        lists = [lst for lst in lists if lst]
        if not lists:
            continue
        if on_phase:
            on_phase(phase)
        try:
            await _run_all(bin_dir, dsn, open_stream, lists)
        except PostgresError as exc:
            raise PostgresError(f"{phase}: {exc}") from None
