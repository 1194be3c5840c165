"""WAL archiving operations: push one file, fetch one file, and the archive's status.

Push and fetch run as PostgreSQL's archive and restore commands (or inside
the resident pusher and the read-ahead fetcher): they work from the config
and the targets alone and never open the catalog. ``status`` serves
``backstop wal status`` through the Engine.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import BackstopConfig
from core.errors import BackstopError, StorageError, UsageError
from core.postgres.wal import WalNameError, parse_segment_name, wal_file_kind
from core.repository.policy import hold_to_policy, quorum_policy
from core.repository.repo import Repository
from core.repository.wal import (
    PushResult,
    WalArchive,
    WalFile,
    WalNotArchived,
    gaps,
    wal_object_name,
    wal_objects,
)
from core.storage.base import Storage
from core.storage.factory import make_storages
from core.wal.spool import Spool

if TYPE_CHECKING:  # the push and fetch paths must not load the catalog's modules
    from core.context import EngineContext

_PERCENTILES = (50, 90, 99)


async def open_archive(config: BackstopConfig, storages: list[Storage] | None = None,
                       require_all: bool = True) -> WalArchive:
    """The WAL archive of the configured repository (every target must open when ``require_all``).

    ``require_all`` (pushing) under a quorum targets_policy: the targets that
    open must meet it, and a push counts as stored once they do (FORMAT.md 12.4).
    """
    stores = storages if storages is not None else make_storages(config.targets)
    quorum = require_all and quorum_policy(config)
    repo = await Repository.open(stores, config.encryption.passphrase(), require_all and not quorum)
    if quorum:
        hold_to_policy(repo, config)  # the targets left out get what they lack from `backstop sync`
    return WalArchive(repo)


def read_wal_file(path: Path) -> tuple[str, bytes]:
    """(name, bytes) of a WAL file PostgreSQL hands to wal-push; UsageError for anything else."""
    name = path.name
    try:
        wal_file_kind(name)
    except WalNameError as exc:
        raise UsageError(f"wal-push: {exc}; archive_command must be 'backstop wal-push %p'") from None
    try:
        return name, path.read_bytes()
    except OSError as exc:
        raise UsageError(f"wal-push: cannot read {path}: {exc.strerror}; run it as the PostgreSQL server's "
                         "OS user from the data directory (archive_command's %p)") from None


async def push_path(archive: WalArchive, path: Path, spool: Spool | None = None) -> PushResult:
    """Archive the WAL file at ``path``; record it in ``spool`` once it is stored everywhere."""
    name, data = await asyncio.to_thread(read_wal_file, path)  # 16 MiB: not on the pusher's event loop
    result = await archive.push(name, data)
    if spool is not None:
        spool.write_record(name, result.size, result.digest)
    return result


async def push_file(config: BackstopConfig, path: Path, spool: Spool | None = None,
                    storages: list[Storage] | None = None) -> PushResult:
    """Open the repository and archive one WAL file (the fallback when no pusher answers)."""
    archive = await open_archive(config, storages)
    try:
        return await push_path(archive, path, spool)
    finally:
        await _close(archive.repo.storages if storages is None else [])


async def fetch_file(config: BackstopConfig, name: str, dest: Path,
                     storages: list[Storage] | None = None) -> WalFile:
    """Fetch one archived WAL file into ``dest`` (a temporary name, then renamed); WalNotArchived if absent."""
    try:
        object_name = wal_object_name(name)
    except WalNameError as exc:
        raise UsageError(f"wal-fetch: {exc}; restore_command must be 'backstop wal-fetch %f %p'") from None
    stores = storages if storages is not None else make_storages(config.targets)
    try:
        # Answering "not archived" needs no key: the listing decides (and no scrypt is paid for it).
        if not await _exists_anywhere(stores, object_name):
            raise WalNotArchived(name)
        archive = await open_archive(config, stores, require_all=False)
        wf = await archive.read(name)
        write_file(dest, wf.data)
        return wf
    finally:
        await _close(stores if storages is None else [])


async def _exists_anywhere(stores: list[Storage], object_name: str) -> bool:
    """Whether any target holds the object; an error only when no target answered at all."""
    results = await asyncio.gather(*(st.exists(object_name) for st in stores), return_exceptions=True)
    if any(r is True for r in results):
        return True
    failures = [r for r in results if isinstance(r, BaseException)]
    if len(failures) == len(results):
        first = failures[0]
        raise first if isinstance(first, StorageError) else StorageError("all", str(first))
    return False


def write_file(dest: Path, data: bytes) -> None:
    """Write ``dest`` under a temporary name in its directory and rename it into place."""
    tmp = dest.with_name(f".{dest.name}.backstop-tmp.{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError("local", f"cannot write {dest}: {exc.strerror}; restore_command runs as the "
                           "PostgreSQL server's OS user, which must be able to write there") from None


async def _close(stores: list[Storage]) -> None:
    await asyncio.gather(*(s.close() for s in stores), return_exceptions=True)


# -- status -------------------------------------------------------------------------------------------------


@dataclass
class TimelineStatus:
    """The archived WAL of one timeline."""

    timeline: int
    first: str | None
    last: str | None
    segments: int
    gaps: list[tuple[str, str]]
    other_files: list[str]  # history, backup history and .partial files


@dataclass
class WalStatus:
    """``backstop wal status``: what is archived, how fresh, what waits, how fast pushes were."""

    system_identifier: str | None
    wal_segment_size: int | None
    timelines: list[TimelineStatus]
    newest: str | None
    newest_age_s: float | None  # the recovery point a user is exposed to right now
    missing_on: dict[str, int]  # target -> WAL files other targets hold but it lacks
    unreachable: dict[str, str]
    pgdata: str | None
    backlog: list[str] | None  # .ready files waiting to be pushed (None when the data directory is unknown)
    backlog_oldest_age_s: float | None
    latency: dict[str, float] = field(default_factory=dict)  # p50, p90, p99, max, in seconds
    latency_count: int = 0
    pusher_pid: int | None = None
    spool: str | None = None

    def to_json(self) -> dict[str, object]:
        doc = asdict(self)
        doc["timelines"] = [{**asdict(t), "gaps": [list(g) for g in t.gaps]} for t in self.timelines]
        return doc


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99 (nearest rank) and the maximum of ``values``."""
    if not values:
        return {}
    s = sorted(values)
    out = {f"p{p}": s[min(len(s) - 1, max(0, -(-p * len(s) // 100) - 1))] for p in _PERCENTILES}
    out["max"] = s[-1]
    return out


def backlog(pgdata: Path) -> tuple[list[str], float | None]:
    """The WAL files PostgreSQL has marked ready to archive, and the age of the oldest mark."""
    status = pgdata / "pg_wal" / "archive_status"
    try:
        entries = [e for e in os.scandir(status) if e.name.endswith(".ready")]
    except FileNotFoundError:
        raise UsageError(f"{pgdata} is not a PostgreSQL data directory (no pg_wal/archive_status); "
                         "pass the cluster's --pgdata") from None
    except OSError as exc:
        raise UsageError(f"cannot read {status}: {exc.strerror}; run as the PostgreSQL server's OS user") from None
    names = sorted(e.name.removesuffix(".ready") for e in entries)
    oldest = None
    for e in entries:
        try:
            oldest = min(oldest or e.stat().st_mtime, e.stat().st_mtime)
        except OSError:
            continue
    return names, (time.time() - oldest) if oldest is not None else None


async def status(ctx: EngineContext, spool: Spool | None, pgdata: Path | None) -> WalStatus:
    """The archive per timeline (from every reachable target's listing), the backlog and push latencies."""
    repo = await ctx.open_repository(require_all=False)
    archive = WalArchive(repo)
    ident = await archive.identity()
    seg_size = ident.wal_segment_size if ident else None
    listings = await asyncio.gather(*(wal_objects(st) for st in repo.storages), return_exceptions=True)
    unreachable = dict(repo.unreachable)
    per_target: dict[str, set[str]] = {}
    mtimes: dict[str, float] = {}
    for st, lst in zip(repo.storages, listings, strict=True):
        if isinstance(lst, BaseException):
            if not isinstance(lst, BackstopError):
                raise lst
            unreachable[st.name] = str(lst)
            continue
        per_target[st.name] = {n for n, _ in lst}
        for n, info in lst:
            if info.mtime is not None:
                mtimes[n] = max(mtimes.get(n, 0.0), info.mtime)
    union: set[str] = set().union(*per_target.values()) if per_target else set()
    missing_on = {t: len(union - names) for t, names in per_target.items() if union - names}
    timelines = []
    for tli in sorted({int(n[:8], 16) for n in union}):
        names = sorted(n for n in union if int(n[:8], 16) == tli)
        segs = [n for n in names if wal_file_kind(n) == "segment"]
        holes = gaps(segs, seg_size) if seg_size and segs else []
        timelines.append(TimelineStatus(tli, segs[0] if segs else None, segs[-1] if segs else None, len(segs),
                                        holes, [n for n in names if n not in segs]))
    seg_mtimes = {n: t for n, t in mtimes.items() if wal_file_kind(n) in ("segment", "partial")}
    # The furthest point archived (not the last object written: pushes run in parallel).
    newest = max(seg_mtimes, key=segment_sort_key) if seg_mtimes else None
    result = WalStatus(
        system_identifier=str(ident.system_identifier) if ident else None, wal_segment_size=seg_size,
        timelines=timelines, newest=newest,
        newest_age_s=(time.time() - seg_mtimes[newest]) if newest else None,
        missing_on=missing_on, unreachable=unreachable, pgdata=None, backlog=None, backlog_oldest_age_s=None)
    if spool is not None:
        result.spool = spool.root
        lat = [s for _, s, _ in spool.latencies()]
        result.latency, result.latency_count = percentiles(lat), len(lat)
        result.pusher_pid = spool.holder(spool.pusher_lock) if os.path.isdir(spool.root) else None
        if pgdata is None and spool.pgdata():
            pgdata = Path(str(spool.pgdata()))
    if pgdata is not None:
        result.pgdata = str(pgdata)
        result.backlog, result.backlog_oldest_age_s = backlog(pgdata)
    return result


def segment_sort_key(name: str) -> tuple[int, int, str]:
    """Order WAL files as PostgreSQL archives them: history files first, then by timeline and position."""
    if name.endswith(".history"):
        return (0, int(name[:8], 16), name)
    try:
        tli, segno = parse_segment_name(name[:24])
    except WalNameError:
        return (2, 0, name)
    return (1, tli * (1 << 40) + segno, name)
