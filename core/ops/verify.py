"""Reading one snapshot back from every target that holds it (the console's "verify")."""

from __future__ import annotations

import time

from core.context import EngineContext
from core.jobs import run_job
from core.repository import quarantine
from core.repository.verify import CopyReport, verify_copy


async def verify_snapshot(ctx: EngineContext, snapshot: str) -> list[CopyReport]:
    """Read one snapshot back from every target holding it; results go to the catalog."""
    snap = await ctx.find_snapshot(snapshot)
    async with run_job(ctx.bus, "verify", snap.db, f"verification of snapshot {snap.short_id} of {snap.db}") as job:
        repo = await ctx.open_repository(require_all=False)
        reports = [CopyReport(name, snap.id, time.time(), problems=[f"target '{name}' is unreachable: {msg}"])
                   for name, msg in repo.unreachable.items() if name in snap.targets]
        for st in repo.storages:
            if st.name in snap.targets:
                job.phase(f"read {st.name}")
                reports.append(await verify_copy(repo, st, snap.id, ctx.pool, on_progress=job.progress))
        findings = [f for r in reports for f in r.findings]
        if findings:
            await quarantine.add(repo, findings, "verify")
        for r in reports:
            ctx.catalog.add_verification(job_id=job.id, target=r.target, snapshot_id=snap.id, started_at=r.started_at,
                                         read_data=True, objects_checked=r.objects_checked, bytes_read=r.bytes_read,
                                         problems=r.problems)
            for p in r.problems:
                job.warn(p)
        job.result = {"snapshot": snap.id, "ok": all(r.ok for r in reports),
                      "targets": {r.target: r.ok for r in reports}}
        return reports
