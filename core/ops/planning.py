"""The restore wizard's facts: snapshots with their checks, target reachability, table lists, past restores."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from core.catalog.base import CatalogQueries
from core.context import EngineContext
from core.errors import BackstopError
from core.ops.coverage import wal_facts
from core.planner import (
    CopyCheck,
    LogicalSnapshot,
    PastRestore,
    PlanningFacts,
    RecoverySource,
    RestorePlan,
    RestoreRequest,
    TargetState,
    physical_source,
    plan,
    with_tables,
)
from core.records import SnapshotRecord
from core.repository.repo import CONFIG_NAME
from core.storage.base import Storage


async def target_states(ctx: EngineContext, timeout_s: float = 5.0) -> list[TargetState]:
    """Each configured target and whether it answers right now."""

    async def probe(st: Storage) -> str:
        try:
            await asyncio.wait_for(st.exists(CONFIG_NAME), timeout_s)
            return ""
        except TimeoutError:
            return f"no answer within {timeout_s:.0f}s"
        except (BackstopError, OSError) as exc:
            return str(exc)

    stores = {s.name: s for s in ctx.storages()}
    details = await asyncio.gather(*(probe(stores[t.name]) for t in ctx.config.targets))
    return [TargetState(t.name, t.type, getattr(t, "region", None), not d, d)
            for t, d in zip(ctx.config.targets, details, strict=True)]


class TableLists:
    """The tables each snapshot holds, from its manifest (cached: manifests never change)."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._cache: dict[str, list[str]] = {}

    async def get(self, snapshot_id: str) -> list[str]:
        if snapshot_id not in self._cache:
            repo = await self.ctx.open_repository(require_all=False)
            self._cache[snapshot_id] = list((await repo.read_manifest(snapshot_id)).tables)
        return self._cache[snapshot_id]


async def plan_restore(ctx: EngineContext, reader: CatalogQueries, tables: TableLists, request: RestoreRequest, *,
                       now: datetime | None = None, targets: list[TargetState] | None = None) -> RestorePlan:
    """Gather the facts (catalog, target reachability, table lists, history) and ask the planner."""
    dbc = ctx.config.database(request.db)
    # Catalog reads go to a thread: this runs on the console's event loop.
    rows = await asyncio.to_thread(reader.latest_snapshots, request.db, 200)
    if request.point.kind == "snapshot" and request.point.snapshot_id:
        chosen = await asyncio.to_thread(reader.snapshot_by_id, request.point.snapshot_id)
        if chosen is not None and chosen.db == request.db and all(r.id != chosen.id for r in rows):
            rows.append(chosen)
    sources: list[LogicalSnapshot] = [
        LogicalSnapshot(r.id, r.db, datetime.fromisoformat(r.started_at), datetime.fromisoformat(r.finished_at),
                        r.size_bytes, r.targets, tuple(CopyCheck(c.target, c.ok, c.read_data, c.at) for c in r.checks))
        for r in rows if r.kind != "physical"]  # a base backup is no source for a restore into a database
    if request.tables:
        # Read table lists newest first until one has every table (a dropped table
        # sends the planner to an older snapshot); unreadable manifests stay unknown.
        for i, s in enumerate(sources[:20]):
            try:
                sources[i] = with_tables(s, await tables.get(s.id))
            except BackstopError:
                continue
            if all(t in (sources[i].tables or ()) for t in request.tables):
                break
    everything: list[RecoverySource] = list(sources)
    # Catalog records of physical snapshots (every database's: a physical restore's history is recognised
    # by its snapshot); the catalog object is used on this thread, as the physical restore does.
    physical = ctx.catalog.snapshots(kind="physical")
    if request.point.kind == "time" and physical:
        everything += await physical_sources(ctx, reader, request.db, [r for r in ctx.catalog.snapshots(request.db)
                                                                       if r.is_physical])
    physical_ids = {r.id for r in physical}
    history = [PastRestore(r.db, r.bytes, r.duration_s, r.ok, r.started_at, r.target, r.kind,
                           physical=r.snapshot_id in physical_ids or r.into.startswith("/"))
               for r in await asyncio.to_thread(lambda: reader.restores(limit=200))]
    states = targets if targets is not None else await target_states(ctx)
    facts = PlanningFacts(everything, states, history, dbc.rto_minutes * 60, now or datetime.now(UTC))
    return plan(request, facts)


async def physical_sources(ctx: EngineContext, reader: CatalogQueries, db: str,
                           records: list[SnapshotRecord]) -> list[RecoverySource]:
    """The database's physical snapshots with the WAL range each reaches (none when nothing is archived)."""
    if not records:
        return []
    try:
        facts, _ = await wal_facts(ctx)
    except BackstopError:
        return []  # no target answers: the logical snapshots are still planned, and the targets' state says why
    if facts is None:
        return []
    checks = await asyncio.to_thread(reader.latest_checks, [r.id for r in records])
    return [physical_source(r, facts, db=db, checks=tuple(CopyCheck(c.target, c.ok, c.read_data, c.at)
                                                          for c in checks.get(r.id, ())))
            for r in records]
