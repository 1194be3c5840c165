"""`backstop repair index`: what damaged or missing index objects listed, rebuilt from the pack headers."""

from __future__ import annotations

from core.context import EngineContext
from core.jobs import run_job
from core.repository.repair_index import IndexRepairReport
from core.repository.repair_index import repair_index as rebuild_index


async def repair_index(ctx: EngineContext, dry_run: bool = False) -> IndexRepairReport:
    """Rebuild the index from the pack headers where index objects are damaged or missing."""
    async with run_job(ctx.bus, "repair", None, "repair index" + (" (dry run)" if dry_run else "")) as job:
        repo = await ctx.open_repository(require_all=True)
        async with repo.lock("exclusive", "repair index"):
            job.phase("read pack headers")
            report = await rebuild_index(repo, dry_run=dry_run)
        job.result = report.to_json()
        return report
