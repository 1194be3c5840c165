"""`backstop agent`: beside each database, take the jobs the control plane queues for this host and run them.

The agent connects to the control plane as its own role (``fleet.agent``,
``fleet.control_plane``), which may only call the queue's functions: say
it is alive (with its host, version and databases), claim its next job,
renew the job's lease with progress, finish it, and ask for a snapshot
when a threshold fires. The work runs through this host's own Engine (its
repository and its local catalog). A heartbeat that comes back refused
means the control plane took the job back (the lease lapsed): the work is
cancelled here at once, so a job never runs in two places.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from core import __version__
from core.catalog.pg_fleet import AGENT_CHANNEL_PREFIX
from core.errors import BackstopError, ConfigError
from core.events import JobEvent, Progress
from core.fleet.queue import AgentSession, FleetJob
from core.fleet.records import JobLog
from core.fleet.thresholds import Activity, BaselineStore, crossed, sample
from core.postgres.tools import first_line
from core.schedule.actions import EngineRunner
from core.schedule.config import ScheduleConfig

if TYPE_CHECKING:
    from core.config import FleetConfig
    from core.engine import Engine

log = logging.getLogger("backstop.agent")


def _job_schedule(job: FleetJob) -> ScheduleConfig:
    """The schedule a queued job carries (a threshold's request: a backup of its database)."""
    raw = job.args.get("schedule")
    if isinstance(raw, dict):
        return ScheduleConfig.model_validate(raw)
    return ScheduleConfig(name=f"{job.kind}-{job.target}", action=job.kind, cron="0 0 * * *",  # type: ignore[arg-type]
                          db=None if job.target.startswith("@") else job.target,
                          type=job.args.get("type", "logical"))


class Agent:
    """One host's agent: presence, claiming, running with heartbeats, and (optionally) thresholds."""

    def __init__(self, engine: Engine, fleet: FleetConfig, *, once: bool = False) -> None:
        self.engine = engine
        self.fleet = fleet
        self.once = once
        self.databases = [d.name for d in engine.config.databases]
        self._stop = asyncio.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._progress: dict[str, object] = {}
        self._baselines: BaselineStore | None = None
        if fleet.thresholds is not None:
            from core.config import default_data_dir

            state = fleet.state_dir or default_data_dir()
            self._baselines = BaselineStore(Path(state) / f"agent-{fleet.agent}.baselines.json")

    def _session(self) -> AgentSession:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.fleet.control_plane, autocommit=True, connect_timeout=10,
                                         application_name=f"backstop-agent {self.fleet.agent}")
        return AgentSession(self._conn)

    def stop(self) -> None:
        """Finish the job in hand's bookkeeping and leave (SIGTERM)."""
        self._stop.set()

    async def _beat(self) -> None:
        ok = await asyncio.to_thread(self._session().beat, socket.gethostname(), __version__, self.databases)
        if not ok:
            raise ConfigError(f"fleet.agent: the control plane has no agent {self.fleet.agent!r} for this role;"
                              " register it there (README, \"A fleet\")")

    async def _listen(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self.fleet.control_plane, autocommit=True, connect_timeout=10)
        await conn.execute(f'LISTEN "{AGENT_CHANNEL_PREFIX}{self.fleet.agent}"')
        return conn

    async def run(self) -> int:
        """Until SIGTERM (or, with ``once``, until no job is waiting): beat, claim, run; exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            await self._beat()
            listener = await self._listen()
        except psycopg.Error as exc:
            raise ConfigError(f"fleet.control_plane: cannot reach the control plane as this agent's role:"
                              f" {first_line(exc)}") from None
        log.info("agent %s started for %s (pid %s)", self.fleet.agent, ", ".join(self.databases) or "no databases",
                 os.getpid())
        try:
            while not self._stop.is_set():
                try:
                    job = await asyncio.to_thread(self._session().claim, self.fleet.lease_s)
                    if job is not None:
                        await self._run(job)
                        continue
                    if self.once:
                        break
                    await self._idle(listener)
                except psycopg.Error as exc:
                    # The control plane restarted or the network dropped: keep trying; a job in hand was
                    # given up (its lease lapses and the control plane retries it).
                    log.warning("the control plane is unreachable (%s); trying again in %.0f s",
                                first_line(exc), self.fleet.poll_s)
                    await self._pause(self.fleet.poll_s)
                    await listener.close()
                    listener = await self._reconnect_listener()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await listener.close()
            if self._conn is not None:
                self._conn.close()
            log.info("agent %s stopped", self.fleet.agent)
        return 0

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _reconnect_listener(self) -> psycopg.AsyncConnection[Any]:
        while True:
            try:
                return await self._listen()
            except psycopg.Error as exc:
                if self._stop.is_set():
                    raise ConfigError(f"stopped while the control plane was unreachable: {exc}") from None
                await self._pause(self.fleet.poll_s)

    async def _idle(self, listener: psycopg.AsyncConnection[Any]) -> None:
        """Wait for a notification, the fallback poll, the next heartbeat or a stop, whichever comes first."""
        wait = min(self.fleet.poll_s, self.fleet.heartbeat_s)

        async def notified() -> None:
            async for _ in listener.notifies(timeout=wait, stop_after=1):
                return

        stop = asyncio.ensure_future(self._stop.wait())
        note = asyncio.ensure_future(notified())
        try:
            await asyncio.wait({stop, note}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (stop, note):
                t.cancel()
            await asyncio.gather(stop, note, return_exceptions=True)
        await self._beat()
        await self._watch()

    async def _watch(self) -> None:
        """Ask for a backup of each database whose activity crossed a threshold since its last snapshot."""
        limits = self.fleet.thresholds
        if self._baselines is None or limits is None:
            return
        for db in self.engine.config.databases:
            try:
                now = await sample(db.dsn)
            except BackstopError as exc:
                log.warning("thresholds: cannot look at %s: %s", db.name, exc)
                continue
            base = self._baselines.get(db.name)
            fired = crossed(limits, base, now, self._last_success(db.name))
            if base is None:
                self._baselines.set(db.name, now)  # counted from here
            if fired is None:
                continue
            jid = await asyncio.to_thread(self._session().request, "backup", db.name, fired.reason,
                                          {"type": "logical", "threshold": fired.threshold})
            if jid is not None:
                log.info("thresholds: asked for a backup of %s (job %d): %s", db.name, jid, fired.reason)

    def _last_success(self, db: str) -> float | None:
        snaps = self.engine.catalog.snapshots(db)
        if not snaps:
            return None
        return datetime.fromisoformat(snaps[-1].finished_at).timestamp()

    async def _execute(self, job: FleetJob, slot: datetime) -> dict[str, object]:
        if job.kind == "restore":
            return await self._restore(job)
        if job.kind == "drill":
            from core.ops.rebuild import learn_snapshots

            # Another host may have taken the snapshot to drill: this catalog learns it from the repository.
            await learn_snapshots(self.engine.ctx, job.target)
        return await EngineRunner(self.engine).run(_job_schedule(job), slot)

    async def _restore(self, job: FleetJob) -> dict[str, object]:
        """A restore the control plane queued (and, over a database, approved after checking the code)."""
        order = job.args["restore"]
        sid = str(order["snapshot"])
        if not self.engine.catalog.has_snapshot(sid):
            from core.ops.rebuild import index_snapshot

            await index_snapshot(self.engine.ctx, sid)  # taken by another host: this catalog learns it
        if order.get("overwrite"):
            # The control plane checked the code and keeps the audit log: this host writes no second one.
            over = await self.engine.restore_over(order["db"], order["into"], sid,
                                                  target=order.get("target"),
                                                  approved_by=str(job.args.get("approved_by") or "") or None,
                                                  audited_elsewhere=True)
            return {"into": order["into"], "snapshot": sid, "replaced": over.replaced_by_restore,
                    "kept_aside": over.aside, "duration_s": round(over.restore.duration_s, 3)}
        res = await self.engine.restore(order["db"], order["into"], sid, list(order.get("tables") or []) or None,
                                        target=order.get("target"))
        return {"into": res.into, "snapshot": res.snapshot_id, "tables": res.tables, "bytes": res.bytes,
                "duration_s": round(res.duration_s, 3)}

    def _on_event(self, ev: JobEvent) -> None:
        if isinstance(ev, Progress):
            self._progress = {"phase": ev.phase, "bytes_done": ev.bytes_done, "bytes_total": ev.bytes_total,
                              "rate": ev.rate}

    async def _run(self, job: FleetJob) -> None:
        """Run one claimed job, renewing its lease; cancel it if the control plane took it back."""
        log.info("job %d: %s of %s (attempt %d)%s", job.id, job.kind, job.target, job.attempt,
                 f", because {job.reason}" if job.reason else "")
        self._progress = {}
        before = await self._activity(job)
        unsubscribe = self.engine.bus.subscribe(self._on_event)
        history = JobLog()
        unlog = self.engine.bus.subscribe(history)
        slot = datetime.fromisoformat(str(job.args["slot"])) if "slot" in job.args else datetime.now(UTC)
        work = asyncio.ensure_future(self._execute(job, slot))
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait({work, stopping}, timeout=self.fleet.heartbeat_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if work in done:
                    break
                if stopping in done:
                    log.warning("job %d: stopping (SIGTERM); the job is handed back to be retried", job.id)
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
                    await self._report(job, history)
                    await asyncio.to_thread(self._session().finish, job, False,
                                            "the agent was stopped in the middle of the job", None)
                    return
                try:
                    alive = await asyncio.to_thread(self._session().heartbeat, job, dict(self._progress),
                                                    self.fleet.lease_s)
                except psycopg.Error as exc:
                    # Without a renewed lease the control plane will hand the job to another attempt: stop now
                    # rather than risk running it twice.
                    log.error("job %d: cannot renew its lease (%s)", job.id, first_line(exc))
                    alive = False
                if not alive:
                    log.error("job %d: the lease is lost; stopping the work here (it is retried by policy)", job.id)
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
                    return
        finally:
            unsubscribe()
            unlog()
            stopping.cancel()
        await self._report(job, history)
        try:
            result = work.result()
        except Exception as exc:  # noqa: BLE001 - whatever broke, the job is reported failed, not left to the reaper
            if not isinstance(exc, BackstopError):
                log.exception("job %d failed unexpectedly", job.id)
            log.error("job %d failed: %s", job.id, exc)
            await asyncio.to_thread(self._session().finish, job, False, first_line(exc),
                                    {"error_class": type(exc).__name__})
            return
        await asyncio.to_thread(self._session().finish, job, True, None, _json_safe(result))
        if before is not None and self._baselines is not None:
            self._baselines.set(job.target, before)  # thresholds count from the snapshot's start
        log.info("job %d succeeded", job.id)

    async def _report(self, job: FleetJob, history: JobLog) -> None:
        """Hand the control plane this attempt's job history (its KPIs count it); the job's outcome does not
        depend on it."""
        try:
            if not await asyncio.to_thread(self._session().report, job, history.report(self.engine.catalog)):
                log.warning("job %d: the control plane took no report (the lease is gone)", job.id)
        except psycopg.Error as exc:
            log.warning("job %d: could not report its history to the control plane: %s", job.id, first_line(exc))

    async def _activity(self, job: FleetJob) -> Activity | None:
        """The database's activity as a backup of it starts (the next thresholds count from there)."""
        if self._baselines is None or job.kind != "backup":
            return None
        db = next((d for d in self.engine.config.databases if d.name == job.target), None)
        if db is None:
            return None
        try:
            return await sample(db.dsn)
        except BackstopError:
            return None


def _json_safe(value: dict[str, object]) -> dict[str, object]:
    import json

    return json.loads(json.dumps(value, default=str))


async def run_agent(config_path: str | None, once: bool = False) -> int:
    """`backstop agent`: the Engine for this host's config, and the agent loop around it."""
    from core.config import parse_config, read_config
    from core.engine import Engine

    data, path = read_config(config_path)
    config = parse_config(data, path)
    if config.fleet is None:
        raise ConfigError(f"{path}: fleet: is missing; an agent needs fleet.agent and fleet.control_plane")
    engine = Engine(config, config_path=path, config_source=(data, path))
    try:
        await engine.apply_settings()
        return await Agent(engine, config.fleet, once=once).run()
    finally:
        await engine.close()
