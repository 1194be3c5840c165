"""`backstop forget`: delete snapshots from every target and the catalog (their data stays until prune)."""

from __future__ import annotations

from core.context import EngineContext
from core.errors import UsageError
from core.jobs import run_job
from core.repository import gc
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Guard


async def forget_snapshots(ctx: EngineContext, refs: list[str], who: Identity | None = None) -> list[str]:
    """Delete snapshots from every target and the catalog; returns their ids."""
    if not refs:
        raise UsageError("name at least one snapshot to forget")
    who = who or default_identity()
    snaps = [await ctx.find_snapshot(r) for r in refs]
    ids = list(dict.fromkeys(s.id for s in snaps))
    subject = ", ".join(f"{s.short_id} ({s.db} {s.finished_at})" for s in snaps)
    async with Guard(ctx).action(who, Action.SNAPSHOT_FORGET, subject, lock=("shared", "forget")) as acting:
        async with run_job(ctx.bus, "forget", None, f"forget {len(ids)} snapshot(s)") as job:
            removed = await gc.forget(acting.repo, ids)
            for sid in removed:
                ctx.catalog.delete_snapshot(sid)
            job.result = {"forgotten": removed}
        acting.detail["snapshots"] = removed
    return removed
