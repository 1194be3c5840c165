"""A restore asked for at the control plane (CLI or console), run by the agent beside the database.

The control plane resolves the snapshot in its own catalog, and for a
restore over an existing database checks the operator's one-time code
itself (the gate and audit log are the control plane's; an agent's role
cannot read the operators). The job then carries that approval: the agent
records it as the reason it may overwrite, and never sees a code.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import AgentJobFailed, ConfigError
from core.fleet.queue import FleetJob
from core.fleet.records import file_and_adopt
from core.fleet.routing import control_plane, pick_agent
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Guard

if TYPE_CHECKING:
    from core.context import EngineContext


@dataclass(frozen=True)
class RestoreOrder:
    """What an operator asked for: a snapshot of ``db`` into ``into`` (over it when ``overwrite``)."""

    db: str
    into: str
    snapshot: str = "latest"
    tables: tuple[str, ...] = ()
    overwrite: bool = False
    target: str | None = None  # the storage target the planner chose: read first there, others if it fails


async def dispatch_restore(ctx: EngineContext, order: RestoreOrder, who: Identity | None = None) -> FleetJob:
    """Queue the restore for the agent serving ``order.db`` (after the code check, when destructive)."""
    plane = control_plane(ctx, "a restore by an agent")
    agent = pick_agent(await asyncio.to_thread(plane.agents), order.db, time.time())
    if agent is None:
        raise ConfigError(f"no live agent serves database {order.db}; start `backstop agent` on its host "
                          "(`backstop agents` shows the last heartbeats)")
    snap = await ctx.find_snapshot(order.snapshot, order.db)
    args: dict[str, Any] = {"restore": {"db": order.db, "into": order.into, "snapshot": snap.id,
                                        "tables": list(order.tables), "overwrite": order.overwrite,
                                        "target": order.target}}
    if not order.overwrite:
        jid = await asyncio.to_thread(plane.enqueue, agent.name, "restore", order.db, args, max_attempts=1)
    else:
        who = who or default_identity()
        subject = f"{order.db} snapshot {snap.short_id} over database {order.into} (by agent {agent.name})"
        async with Guard(ctx).action(who, Action.RESTORE_OVERWRITE, subject, require_all=False) as acting:
            args["approved_by"] = (f"operator {who.operator}: one-time code checked by the control plane"
                                   f" ({ctx.config.catalog.url.split('@')[-1].split('?')[0]})")
            jid = await asyncio.to_thread(plane.enqueue, agent.name, "restore", order.db, args, max_attempts=1)
            acting.detail.update(agent=agent.name, fleet_job=jid, dispatched=True)
    assert jid is not None
    job = await asyncio.to_thread(plane.job, jid)
    assert job is not None
    return job


async def wait_for_job(ctx: EngineContext, job_id: int, poll_s: float = 0.5,
                       on_progress: Any = None) -> FleetJob:
    """Wait for a fleet job to end (reporting its progress); a failed job raises AgentJobFailed."""
    plane = control_plane(ctx, "a restore by an agent")
    while True:
        job = await asyncio.to_thread(plane.job, job_id)
        if job is None:
            raise ConfigError(f"fleet job {job_id} vanished from the control plane")
        if on_progress is not None and job.progress:
            on_progress(job)
        if job.state in ("succeeded", "failed", "cancelled"):
            # The agent's report (its job and restore timings) goes into this catalog's history now.
            await file_and_adopt(ctx, plane)
        if job.state == "succeeded":
            return job
        if job.state in ("failed", "cancelled"):
            raise AgentJobFailed(f"agent {job.agent}: {job.error or job.state}")
        await asyncio.sleep(poll_s)
