"""The fleet's job queue, seen from each side: the control plane queues and reaps, an agent claims, reports
and finishes (only through the functions its role may call: core/catalog/pg_fleet.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from core.catalog.pg_fleet import ADVISORY_LOCK_FUNCTIONS, AGENT_GROUP
from core.errors import ConfigError


@dataclass(frozen=True)
class FleetJob:
    """One queued, running or finished job of an agent."""

    id: int
    agent: str
    kind: str
    target: str
    args: dict[str, Any]
    state: str
    attempt: int
    lease_token: str | None
    error: str | None
    result: dict[str, Any] | None = None
    reason: str | None = None  # why an agent asked for it (the threshold that fired)
    progress: dict[str, Any] | None = None  # as the agent last reported it (phase, bytes_done, bytes_total, rate)
    created_at: float | None = None
    heartbeat_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True)
class AgentRow:
    """An agent as the control plane knows it."""

    name: str
    role: str
    host: str | None
    version: str | None
    databases: list[str]  # what it may serve (set at registration); jobs are routed by these
    heartbeat_at: datetime | None
    reported: list[str] = field(default_factory=list)  # what its own config says it serves

    @property
    def mismatch(self) -> list[str]:
        """Databases the agent's config names but it was not registered for (it gets no jobs for them)."""
        return [d for d in self.reported if d not in self.databases]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "role": self.role, "host": self.host, "version": self.version,
                "databases": self.databases, "reported_databases": self.reported,
                "heartbeat_at": self.heartbeat_at.isoformat() if self.heartbeat_at else None}


@dataclass(frozen=True)
class OpenRun:
    """A scheduled run the control plane may have to settle (see FleetRunner's housekeeping)."""

    name: str
    slot: str
    state: str
    holder: str
    claimed_at: float


@dataclass(frozen=True)
class AgentReport:
    """What an agent's engine recorded during one attempt of a job (core/fleet/records.py files it)."""

    id: int
    job: int
    attempt: int
    agent: str
    host: str | None
    kind: str  # the fleet job's kind and target: what the report may speak about
    target: str
    records: dict[str, Any]


_JOB_FIELDS = ("id", "agent", "kind", "target", "args", "state", "attempt", "lease_token", "error", "result",
               "reason", "progress")
_JOB_TIMES = ("created_at", "heartbeat_at", "finished_at")


def _job_cols(table: str = "") -> str:
    """The columns _job reads, of ``table`` when one is joined."""
    p = f"{table}." if table else ""
    return ", ".join([*(p + f for f in _JOB_FIELDS), *(f"extract(epoch FROM {p}{f})" for f in _JOB_TIMES)])


_JOB_COLS = _job_cols()


def _job(r: tuple[Any, ...]) -> FleetJob:
    return FleetJob(int(r[0]), r[1], r[2], r[3], dict(r[4] or {}), r[5], int(r[6]),
                    None if r[7] is None else str(r[7]), r[8], r[9], r[10], r[11],
                    *(None if v is None else float(v) for v in r[12:15]))


class ControlPlane:
    """The queue as the catalog's owner uses it (daemon, console, CLI): agents, queueing, reaping."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def register_agent(self, name: str, role: str, databases: list[str]) -> None:
        """Let the login role ``role`` act as agent ``name`` for ``databases`` (the role must be in the
        backstop_agent group); registering again replaces both."""
        self._conn.execute("INSERT INTO fleet.agents (name, role, databases) VALUES (%s, %s, %s) ON CONFLICT (name)"
                           " DO UPDATE SET role = EXCLUDED.role, databases = EXCLUDED.databases",
                           (name, role, json.dumps(sorted(set(databases)))))

    def create_agent_role(self, role: str) -> None:
        """Create a login role for an agent in the agent group (needs CREATEROLE; password set separately)."""
        try:
            self._conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(sql.Identifier(role),
                                                                              sql.Identifier(AGENT_GROUP)))
        except psycopg.errors.InsufficientPrivilege:
            raise ConfigError(f"cannot create the role {role!r}: the catalog's owner lacks CREATEROLE; create it as"
                              f" an administrator (CREATE ROLE {role} LOGIN IN ROLE {AGENT_GROUP})") from None

    def privilege_problems(self) -> list[str]:
        """What the agents' group may do beyond calling its functions, one line each with the fix."""
        row = self._conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (AGENT_GROUP,)).fetchone()
        if row is None:
            return [f"the role {AGENT_GROUP} is missing: create it as an administrator (CREATE ROLE {AGENT_GROUP}"
                    " NOLOGIN) and run backstop again (README, \"A fleet\", step 1)"]
        allowed = [r[0] for r in self._conn.execute(
            "SELECT f FROM unnest(%s::text[]) WITH ORDINALITY AS u(f, i)"
            " WHERE has_function_privilege(%s, f, 'EXECUTE') ORDER BY i",
            (list(ADVISORY_LOCK_FUNCTIONS), AGENT_GROUP))]
        if not allowed:
            return []
        return [f"agents may take advisory locks ({allowed[0]} and {len(allowed) - 1} more), so one could hold the"
                " catalog's write lock or the daemons' leader lock: as an administrator, in this database, REVOKE"
                " EXECUTE on them FROM PUBLIC and GRANT it to the catalog's owner (README, \"A fleet\", step 1)"]

    def agents(self) -> list[AgentRow]:
        """Every registered agent, by name."""
        return [AgentRow(r[0], r[1], r[2], r[3], list(r[4] or []), r[5], list(r[6] or [])) for r in self._conn.execute(
            "SELECT name, role, host, version, databases, heartbeat_at, reported_databases FROM fleet.agents"
            " ORDER BY name")]

    def enqueue(self, agent: str, kind: str, target: str, args: dict[str, Any] | None = None, *,
                schedule: str | None = None, slot: datetime | None = None, max_attempts: int = 3,
                retry_delay_s: float = 30.0) -> int | None:
        """Queue a job for ``agent``; a scheduled slot already queued returns None (once per slot)."""
        row = self._conn.execute(
            "INSERT INTO fleet.jobs (agent, kind, target, args, schedule, slot, max_attempts, retry_delay)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, make_interval(secs => %s)) ON CONFLICT (schedule, slot)"
            " WHERE schedule IS NOT NULL DO NOTHING RETURNING id",
            (agent, kind, target, json.dumps(args or {}), schedule, slot, max_attempts, retry_delay_s)).fetchone()
        return None if row is None else int(row[0])

    def job(self, job_id: int) -> FleetJob | None:
        """One job by id."""
        r = self._conn.execute(f"SELECT {_JOB_COLS} FROM fleet.jobs WHERE id = %s", (job_id,)).fetchone()
        return None if r is None else _job(r)

    def jobs(self, limit: int = 200) -> list[FleetJob]:
        """The newest jobs, newest first."""
        return [_job(r) for r in self._conn.execute(
            f"SELECT {_JOB_COLS} FROM fleet.jobs ORDER BY id DESC LIMIT %s", (limit,))]

    def unsettled_runs(self) -> list[tuple[OpenRun, FleetJob | None]]:
        """Scheduled runs still open (waiting, running), or abandoned though their fleet job ended, each with
        the job queued for its slot (the catalog's schedule_runs live in the same database)."""
        cols = _job_cols("j")
        rows = self._conn.execute(
            f"SELECT r.name, r.slot, r.state, r.holder, r.claimed_at, {cols} FROM schedule_runs r"
            " LEFT JOIN fleet.jobs j ON j.schedule = r.name AND abs(extract(epoch FROM j.slot) - r.due) < 0.001"
            " WHERE r.state IN ('waiting', 'running')"
            "    OR (r.state = 'abandoned' AND j.state IN ('succeeded', 'failed', 'cancelled'))"
            " ORDER BY r.due").fetchall()
        return [(OpenRun(r[0], r[1], r[2], r[3], float(r[4])), None if r[5] is None else _job(r[5:])) for r in rows]

    def take_reports(self, limit: int = 50) -> list[AgentReport]:
        """Agents' reports not filed yet, each marked filed as it is taken (by one taker only: SKIP LOCKED)."""
        rows = self._conn.execute(
            "UPDATE fleet.reports r SET recorded_at = now() FROM fleet.jobs j, fleet.agents a"
            " WHERE r.id IN (SELECT id FROM fleet.reports WHERE recorded_at IS NULL ORDER BY id LIMIT %s"
            "                FOR UPDATE SKIP LOCKED)"
            "   AND j.id = r.job AND a.name = r.agent"
            " RETURNING r.id, r.job, r.attempt, r.agent, a.host, j.kind, j.target, r.records", (limit,)).fetchall()
        return [AgentReport(int(r[0]), int(r[1]), int(r[2]), r[3], r[4], r[5], r[6], dict(r[7] or {}))
                for r in sorted(rows)]

    def reap(self, grace_s: float = 10.0) -> list[int]:
        """Requeue or fail the running jobs whose agent stopped renewing their lease; their ids."""
        return [int(r[0]) for r in self._conn.execute("SELECT fleet.reap(make_interval(secs => %s))", (grace_s,))]


class AgentSession:
    """The queue as one agent's role sees it: claim, heartbeat, finish, and its own presence."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def claim(self, lease_s: float = 60.0) -> FleetJob | None:
        """The next job for this agent (marked running with a fresh lease token), or None."""
        r = self._conn.execute(f"SELECT {_JOB_COLS} FROM fleet.claim(make_interval(secs => %s))",
                               (lease_s,)).fetchone()
        return None if r is None else _job(r)

    def heartbeat(self, job: FleetJob, progress: dict[str, Any], lease_s: float = 60.0) -> bool:
        """Renew the lease and report progress; False means the lease is lost and the work must stop."""
        row = self._conn.execute("SELECT fleet.heartbeat(%s, %s, %s, make_interval(secs => %s))",
                                 (job.id, job.lease_token, json.dumps(progress), lease_s)).fetchone()
        return bool(row and row[0])

    def finish(self, job: FleetJob, ok: bool, error: str | None = None,
               result: dict[str, Any] | None = None) -> bool:
        """Record the outcome (a failure is requeued while attempts remain); False when the lease was lost."""
        row = self._conn.execute("SELECT fleet.finish(%s, %s, %s, %s, %s)",
                                 (job.id, job.lease_token, ok, error,
                                  None if result is None else json.dumps(result))).fetchone()
        return bool(row and row[0])

    def report(self, job: FleetJob, records: dict[str, Any]) -> bool:
        """Hand the control plane what this attempt's engine recorded (before finishing); False: lease lost."""
        row = self._conn.execute("SELECT fleet.report(%s, %s, %s)",
                                 (job.id, job.lease_token, json.dumps(records, default=str))).fetchone()
        return bool(row and row[0])

    def request(self, kind: str, target: str, why: str, args: dict[str, Any] | None = None) -> int | None:
        """Queue a job for this agent on one of its databases (None: one is queued or running already)."""
        row = self._conn.execute("SELECT fleet.request(%s, %s, %s, %s)",
                                 (kind, target, why, json.dumps(args or {}))).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def beat(self, host: str, version: str, databases: list[str]) -> bool:
        """Say this agent is alive, where, which version, for which databases; False when not registered."""
        row = self._conn.execute("SELECT fleet.beat(%s, %s, %s)", (host, version, json.dumps(databases))).fetchone()
        return bool(row and row[0])
