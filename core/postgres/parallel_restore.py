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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from core.errors import PostgresError
from core.postgres.archive import Section, TocEntry
from core.postgres.logical import read_toc, restore_stream, toc_desc
from core.postgres.schema_archive import SchemaArchive, restore_list

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
    """pg_restore one list per process, all at once."""
    def pg_restore(lst: list[str]) -> Callable[[], Awaitable[int]]:
        return lambda: restore_stream(bin_dir, dsn, open_stream(), "\n".join(lst) + "\n")

    await _bounded([pg_restore(lst) for lst in lists], len(lists))


async def parallel_restore(bin_dir: Path, dsn: str, open_stream: StreamFactory, jobs: int,
                           table_bytes: dict[str, int], on_phase: Callable[[str], None] | None = None) -> None:
    """Restore a whole single-stream archive (format 1) into ``dsn`` with up to ``jobs`` pg_restore processes."""
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


async def restore_sections(bin_dir: Path, dsn: str, schema: SchemaArchive, open_full: StreamFactory, jobs: int,
                           table_copies: list[Callable[[], Awaitable[None]]],
                           entries: list[TocEntry] | None = None,
                           on_phase: Callable[[str], None] | None = None) -> None:
    """A format 2 restore: the schema archive's sections (from its TOC) around the tables' own COPY streams.

    ``entries`` (a table restore's selection) default to the whole archive.
    Every step but large objects reads only the archive's header and TOC.
    """
    chosen = list(schema.toc) if entries is None else entries
    pre = [e for e in chosen if e.section is Section.PRE_DATA]
    data = [e for e in chosen if e.section is Section.DATA]
    post_idx = [e for e in chosen if e.section is Section.POST_DATA and e.desc in ("INDEX", "CONSTRAINT")]
    # Partitioned indexes are attached before foreign keys: a key referencing a partitioned table
    # needs its attached index (pg_dump records that dependency).
    attach = [e for e in chosen if e.section is Section.POST_DATA and e.desc == "INDEX ATTACH"]
    early = {e.dump_id for e in (*pre, *data, *post_idx, *attach)}
    # Foreign keys each scan their table (as slow as an index build on a big one), so they run in
    # parallel too, unless one needs an entry of the last step.
    later = {e.dump_id for e in chosen if e.dump_id not in early and e.desc != "FK CONSTRAINT"}
    fks = [e for e in chosen if e.desc == "FK CONSTRAINT" and e.section is Section.POST_DATA
           and not later & set(e.deps)]
    taken = early | {e.dump_id for e in fks}
    rest = [e for e in chosen if e.dump_id not in taken]
    toc_only: StreamFactory = schema.toc_only
    needs_blocks = any(e.had_dumper for e in data)
    steps: list[tuple[str, list[tuple[list[TocEntry], StreamFactory]], list[Callable[[], Awaitable[None]]]]] = [
        ("restore schema", [(pre, toc_only)], []),
        ("restore data", [(data, open_full if needs_blocks else toc_only)], table_copies),
        ("build indexes", [(part, toc_only) for part in _split(post_idx, jobs)], []),
        ("attach indexes", [(attach, toc_only)], []),
        ("foreign keys", [(part, toc_only) for part in split_foreign_keys(fks, schema.toc, jobs)], []),
        ("finish", [(rest, toc_only)], []),
    ]
    for phase, runs, extra in steps:
        runs = [(lst, opener) for lst, opener in runs if lst]
        if not runs and not extra:
            continue
        if on_phase:
            on_phase(phase)
        jobs_here: list[Callable[[], Awaitable[object]]] = [
            _pg_restore(bin_dir, dsn, opener, lst) for lst, opener in runs]
        try:
            await _bounded([*jobs_here, *extra], jobs)
        except PostgresError as exc:
            raise PostgresError(f"{phase}: {exc}", toc_entry=exc.toc_entry) from None


def _split(entries: list[TocEntry], jobs: int) -> list[list[TocEntry]]:
    """Round robin into ``jobs`` lists, each in archive order."""
    return [entries[i::jobs] for i in range(jobs)]


def split_foreign_keys(fks: list[TocEntry], toc: Sequence[TocEntry], jobs: int) -> list[list[TocEntry]]:
    """Foreign keys in up to ``jobs`` lists such that no two lists touch the same table.

    Adding a foreign key locks its table and the table it references (SHARE ROW
    EXCLUSIVE, which conflicts with itself): two keys running at once over the
    same pair in opposite directions deadlock, so keys sharing a table stay in one list.
    """
    by_id = {e.dump_id: e for e in toc}

    def tables(fk: TocEntry) -> set[int]:
        found: set[int] = set()
        for dep in fk.deps:
            entry = by_id.get(dep)
            if entry is None:
                continue
            if entry.desc == "TABLE":
                found.add(dep)
            else:  # the referenced key's constraint or index: its own table
                found.update(d for d in entry.deps if d in by_id and by_id[d].desc == "TABLE")
        return found

    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    # A key whose tables cannot be told goes with all the others of its kind: -1 joins them.
    keys = {fk.dump_id: (tables(fk) or {-1}) for fk in fks}
    for touched in keys.values():
        first, *others = touched
        for t in others:
            parent[root(t)] = root(first)
    groups: dict[int, list[TocEntry]] = {}
    for fk in fks:
        groups.setdefault(root(next(iter(keys[fk.dump_id]))), []).append(fk)
    pos = {fk.dump_id: i for i, fk in enumerate(fks)}
    buckets: list[list[TocEntry]] = [[] for _ in range(max(1, jobs))]
    for group in sorted(groups.values(), key=len, reverse=True):
        min(buckets, key=len).extend(group)
    return [sorted(b, key=lambda e: pos[e.dump_id]) for b in buckets if b]


def _pg_restore(bin_dir: Path, dsn: str, opener: StreamFactory,
                entries: list[TocEntry]) -> Callable[[], Awaitable[int]]:
    return lambda: restore_stream(bin_dir, dsn, opener(), restore_list(entries))


async def _bounded(jobs: list[Callable[[], Awaitable[object]]], width: int) -> None:
    """Run ``jobs``, at most ``width`` at once; on the first failure stop the others, then raise it."""
    gate = asyncio.Semaphore(max(1, width))

    async def one(job: Callable[[], Awaitable[object]]) -> None:
        async with gate:
            await job()

    tasks = [asyncio.ensure_future(one(j)) for j in jobs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
