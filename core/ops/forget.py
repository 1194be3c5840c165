"""`backstop forget`: delete snapshots from every target and the catalog (their data stays until prune)."""

from __future__ import annotations

from core.context import EngineContext
from core.errors import UsageError
from core.jobs import run_job
from core.repository import gc
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Acting, Guard


async def forget_snapshots(ctx: EngineContext, refs: list[str], who: Identity | None = None) -> list[str]:
    """Delete snapshots from every target and the catalog; returns their ids."""
    if not refs:
        raise UsageError("name at least one snapshot to forget")
    who = who or default_identity()
    snaps = [await ctx.find_snapshot(r) for r in refs]
    ids = list(dict.fromkeys(s.id for s in snaps))
    subject = ", ".join(f"{s.short_id} ({s.db} {s.finished_at})" for s in snaps)
    async with Guard(ctx).action(who, Action.SNAPSHOT_FORGET, subject, lock=FORGET_LOCK) as acting:
        async with run_job(ctx.bus, "forget", None, f"forget {len(ids)} snapshot(s)") as job:
            removed = await forget_allowed(ctx, acting, ids)
            job.result = {"forgotten": removed}
    return removed


# The lock forgetting takes: shared, so backups and restores go on (their snapshots are not the ones forgotten).
FORGET_LOCK = ("shared", "forget")


async def forget_allowed(ctx: EngineContext, acting: Acting, ids: list[str]) -> list[str]:
    """Inside an allowed SNAPSHOT_FORGET action: delete the snapshots everywhere, then their catalog rows."""
    removed = await gc.forget(acting.repo, ids)
    for sid in removed:
        ctx.catalog.delete_snapshot(sid)
    acting.detail["snapshots"] = removed
    return removed
