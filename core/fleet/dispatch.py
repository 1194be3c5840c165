"""The daemon's runner on a PostgreSQL catalog: each scheduled run is queued for an agent, not run here.

The scheduler still claims each (schedule, slot) in the catalog, so a slot
runs once however many daemons share the catalog; this runner hands the
claimed run to the agent that serves the run's database, waits for the
outcome while reaping jobs whose agent went silent, and indexes a
snapshot the agent reports from the repository's own manifest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from core.errors import AgentJobFailed, CatalogError, ConfigError
from core.fleet.queue import ControlPlane, FleetJob
from core.fleet.records import file_and_adopt
from core.fleet.routing import pick_agent
from core.postgres.tools import first_line
from core.schedule.config import ScheduleConfig

if TYPE_CHECKING:
    from core.catalog.base import Catalog
    from core.engine import Engine

log = logging.getLogger("backstop.daemon")

# A scheduled run claimed by another daemon that queued no fleet job this long after: that daemon is gone.
ORPHAN_AFTER_S = 300.0


def schedule_args(schedule: ScheduleConfig) -> dict[str, object]:
    """A schedule as a job's JSON arguments, in the config's own forms (durations as seconds)."""
    return {k: v.total_seconds() if isinstance(v, timedelta) else v
            for k, v in schedule.model_dump(exclude_defaults=True).items()}


def run_result(job: FleetJob) -> dict[str, object]:
    """A succeeded fleet job as its scheduled run records it: where it ran, which attempt, what it reported."""
    return {"agent": job.agent, "job": job.id, "attempt": job.attempt, **(job.result or {})}


def settle_runs(catalog: Catalog, plane: ControlPlane, holder: str, now: float) -> int:
    """Scheduled runs a daemon left open (killed, or its host gone, where its pid cannot be checked) or
    abandoned while its agent went on, take their fleet job's outcome; a run another daemon claimed but
    never queued is abandoned after ORPHAN_AFTER_S. Returns how many were settled."""
    n = 0
    for run, job in plane.unsettled_runs():
        if run.holder == holder and run.state != "abandoned":
            continue  # this daemon's own run in progress: its waiter settles it
        if job is None:
            if run.state == "abandoned" or now - run.claimed_at < ORPHAN_AFTER_S:
                continue
            state = "abandoned" if run.state == "running" else "missed"
            catalog.update_schedule_run(
                run.name, run.slot, state, error=f"the daemon that claimed it ({run.holder}) stopped before"
                " handing it to an agent")
        elif job.state == "succeeded":
            catalog.update_schedule_run(run.name, run.slot, "succeeded", result=run_result(job))
        elif job.state in ("failed", "cancelled"):
            catalog.update_schedule_run(run.name, run.slot, "failed",
                                        error=f"agent {job.agent}: {job.error or job.state}")
        else:
            continue  # still queued or running: whoever waits for it, or a later pass, settles it
        log.warning("schedule %s slot %s: settled as the fleet saw it (claimed by %s)", run.name, run.slot,
                    run.holder)
        n += 1
    return n


class FleetRunner:
    """Queues each scheduled run for an agent and waits for it (the scheduler's Runner on a fleet)."""

    def __init__(self, engine: Engine, *, poll_s: float = 1.0, reap_grace_s: float = 5.0,
                 max_attempts: int = 3, retry_delay_s: float = 30.0) -> None:
        self.engine = engine
        self.poll_s = poll_s
        self.reap_grace_s = reap_grace_s
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self._conn: psycopg.Connection[Any] | None = None
        # Succeeded jobs whose snapshot is known to be indexed: not looked up again every few seconds.
        self._indexed: set[int] = set()

    def _plane(self) -> ControlPlane:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.engine.config.catalog.url, autocommit=True, connect_timeout=10,
                                         application_name="backstop-daemon")
        return ControlPlane(self._conn)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    async def housekeep(self, holder: str | None = None) -> None:
        """Take back jobs whose agent went silent, file the agents' job history, settle the scheduled runs a
        vanished daemon left open (``holder``: this daemon's scheduler), and index the snapshots of jobs
        nobody waited for (an agent's own requests, when a threshold fired)."""
        try:
            await self._housekeep(holder)
        except psycopg.Error as exc:
            raise CatalogError(f"the control plane: {first_line(exc)}") from None

    async def _housekeep(self, holder: str | None) -> None:
        plane = await asyncio.to_thread(self._plane)
        for gone in await asyncio.to_thread(plane.reap, self.reap_grace_s):
            log.warning("fleet job %d: its agent stopped reporting; retried or failed by policy", gone)
        await file_and_adopt(self.engine.ctx, plane)
        if holder is not None:
            await asyncio.to_thread(settle_runs, self.engine.catalog, plane, holder, time.time())
        for job in await asyncio.to_thread(plane.jobs, 200):
            sid = (job.result or {}).get("snapshot") if job.state == "succeeded" else None
            if not isinstance(sid, str) or job.id in self._indexed:
                continue
            if not self.engine.catalog.has_snapshot(sid):
                from core.ops.rebuild import index_snapshot

                await index_snapshot(self.engine.ctx, sid)
                log.info("indexed snapshot %s from fleet job %d (%s)", sid[:8], job.id, job.reason or job.kind)
            self._indexed.add(job.id)

    async def run(self, schedule: ScheduleConfig, slot: datetime) -> dict[str, object]:
        """Queue the run for its agent, wait for the outcome; returns the agent's result (and what was indexed)."""
        plane = await asyncio.to_thread(self._plane)
        agents = await asyncio.to_thread(plane.agents)
        agent = pick_agent(agents, schedule.db, time.time())
        if agent is None:
            where = f"database {schedule.db}" if schedule.db else "the repository"
            raise ConfigError(f"schedule {schedule.name}: no live agent serves {where}; start `backstop agent` on"
                              " its host (`backstop agents` shows the last heartbeats)")
        args = {"schedule": schedule_args(schedule), "slot": slot.isoformat()}
        jid = await asyncio.to_thread(plane.enqueue, agent.name, schedule.action, schedule.db or f"@{schedule.action}",
                                      args, schedule=schedule.name, slot=slot, max_attempts=self.max_attempts,
                                      retry_delay_s=self.retry_delay_s)
        if jid is None:
            raise ConfigError(f"schedule {schedule.name}: the slot {slot.isoformat()} is queued already")
        log.info("%s: queued as fleet job %d for agent %s", schedule.name, jid, agent.name)
        while True:
            for gone in await asyncio.to_thread(plane.reap, self.reap_grace_s):
                log.warning("fleet job %d: its agent stopped reporting; retried or failed by policy", gone)
            job = await asyncio.to_thread(plane.job, jid)
            if job is None:
                raise ConfigError(f"fleet job {jid} vanished from the control plane")
            if job.state == "succeeded":
                break
            if job.state in ("failed", "cancelled"):
                raise AgentJobFailed(f"agent {job.agent}: {job.error or job.state} (attempt {job.attempt})")
            await asyncio.sleep(self.poll_s)
        await file_and_adopt(self.engine.ctx, plane)
        result = run_result(job)
        sid = (job.result or {}).get("snapshot")
        if isinstance(sid, str):
            from core.ops.rebuild import index_snapshot

            await index_snapshot(self.engine.ctx, sid)
        return result
