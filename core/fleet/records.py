"""An agent's job history, carried to the control plane's catalog so the fleet's KPIs count agents' work.

An agent's engine records its jobs in the agent's own catalog. While it
runs a fleet job the agent also keeps the events its engine publishes (a
:class:`JobLog`); before finishing the attempt it hands them, with the
timings of the restores they made, the verifications and drills they ran, to the control plane through
``fleet.report`` (its role can write nothing else). A scheduler or console
on the control plane then files each report into its catalog
(:func:`file_reports`): job ids are prefixed with the agent's name so no
report can touch a job it did not start; restore timings are taken only
from a restore job, for its own database, verifications only from jobs the
report started, and drills only by id, read and MAC-checked from their
sealed copies in the repository.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.errors import BackstopError
from core.events import JobEvent, JobFinished, JobStarted, JobWarning, PhaseChanged, Progress

if TYPE_CHECKING:
    from core.catalog.base import Catalog
    from core.context import EngineContext
    from core.fleet.queue import AgentReport, ControlPlane

log = logging.getLogger("backstop.fleet")

_EVENT_TYPES: dict[str, type[JobEvent]] = {c.__name__: c for c in (JobStarted, PhaseChanged, Progress, JobWarning,
                                                                      JobFinished)}
_OUTCOMES = ("succeeded", "failed", "abandoned")
# A report is short: a job's phases, warnings and outcome (progress only as it last stood).
MAX_EVENTS = 500


class JobLog:
    """The events the engine publishes during one fleet job (every job it starts, a safety backup included)."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self._progress: dict[str, Progress] = {}

    def __call__(self, ev: JobEvent) -> None:
        if isinstance(ev, Progress):
            self._progress[ev.job_id] = ev  # only the last one is kept: where the job stood
            return
        if isinstance(ev, JobFinished) and ev.job_id in self._progress:
            self.events.append(self._progress.pop(ev.job_id))
        if len(self.events) < MAX_EVENTS or isinstance(ev, (JobStarted, JobFinished)):
            self.events.append(ev)

    def job_ids(self) -> set[str]:
        """The engine jobs started during the fleet job."""
        return {e.job_id for e in self.events if isinstance(e, JobStarted)}

    def report(self, catalog: Catalog) -> dict[str, Any]:
        """The report for ``fleet.report``: the events, and the restores those jobs recorded in ``catalog``."""
        ids = self.job_ids()
        restores = [r.to_json() for r in catalog.restores(limit=50) if r.job_id in ids]
        checks = [v.to_json() for v in catalog.verifications(limit=200) if v.job_id in ids]
        since = min((e.ts for e in self.events), default=None)
        # Drill reports carry no job id: the ones that started while this fleet job ran.
        drills = [] if since is None else [d.id for d in catalog.drills(since=since - 1.0, limit=20)]
        events = [*self.events, *self._progress.values()]
        return {"events": [{"job_id": e.job_id, "ts": e.ts, "type": e.type, "payload": e.payload()} for e in events],
                "restores": restores, "verifications": checks, "drills": drills}


def decode_event(raw: dict[str, Any]) -> JobEvent:
    """One reported event back as a typed event; ValueError when it is not one we know."""
    cls = _EVENT_TYPES.get(str(raw.get("type")))
    if cls is None:
        raise ValueError(f"unknown event type {raw.get('type')!r}")
    payload = raw.get("payload")
    if not isinstance(payload, dict):
        raise ValueError("an event without a payload")
    names = {f.name for f in dataclasses.fields(cls)} - {"job_id", "ts"}
    try:
        ev = cls(str(raw["job_id"]), ts=float(raw["ts"]), **{k: v for k, v in payload.items() if k in names})
    except (KeyError, TypeError) as exc:
        raise ValueError(f"a malformed {cls.__name__}: {exc}") from None
    if isinstance(ev, JobFinished) and ev.outcome not in _OUTCOMES:
        raise ValueError(f"outcome {ev.outcome!r}")
    return ev


@dataclass
class Filed:
    """What filing reports added: jobs, and the drills to adopt from the repository (:func:`file_and_adopt`)."""

    jobs: int = 0
    drills: list[str] = field(default_factory=list)


def file_report(catalog: Catalog, rep: AgentReport, filed: Filed | None = None) -> int:
    """Record one agent's report in ``catalog``; returns how many jobs it added (drills to adopt go in
    ``filed``)."""
    raw = rep.records.get("events")
    events = [decode_event(e) for e in (raw if isinstance(raw, list) else [])]
    prefix = f"{rep.agent}:"
    started = {e.job_id for e in events if isinstance(e, JobStarted)}
    open_jobs: set[str] = set()  # started, not finished yet
    seen: set[str] = set()
    batch: list[JobEvent] = []
    for ev in events:
        if ev.job_id not in started:
            continue  # refers to no job this attempt started: an agent speaks only for its own work
        ev = dataclasses.replace(ev, job_id=prefix + ev.job_id)
        if isinstance(ev, JobStarted):
            ev = dataclasses.replace(ev, host=rep.host or rep.agent)
            if ev.job_id in seen:
                continue  # started twice in one report: the first one stands
            seen.add(ev.job_id)
            open_jobs.add(ev.job_id)
        elif ev.job_id not in open_jobs:
            continue  # after its finish: nothing more to apply
        batch.append(ev)
        if isinstance(ev, JobFinished):
            open_jobs.discard(ev.job_id)
    for jid in sorted(open_jobs):  # started but never finished in the report (the attempt was cut short)
        batch.append(JobFinished(jid, outcome="abandoned",
                                 error=f"agent {rep.agent} stopped reporting before this job ended"))
    try:
        catalog.record_events(batch)  # one transaction: a report is filed whole or not at all
    except sqlite3.IntegrityError:
        log.warning("fleet job %d: agent %s's report names jobs filed before; it was set aside", rep.job, rep.agent)
        return 0
    if rep.kind in ("restore", "drill"):  # a drill's test restore is timed as one (kind 'drill')
        for r in rep.records.get("restores") or []:
            if not isinstance(r, dict) or r.get("db") != rep.target or r.get("job_id") not in started:
                continue
            catalog.add_restore(job_id=prefix + str(r["job_id"]), snapshot_id=str(r["snapshot_id"]), db=rep.target,
                                into=str(r["into"]), tables=[str(t) for t in r.get("tables") or []],
                                started_at=float(r["started_at"]), duration_s=float(r["duration_s"]),
                                nbytes=int(r["bytes"]), ok=bool(r["ok"]), error=r.get("error"),
                                kind="drill" if r.get("kind") == "drill" else "restore", target=r.get("target"))
    for v in rep.records.get("verifications") or []:
        if not isinstance(v, dict) or v.get("job_id") not in started:
            continue
        catalog.add_verification(job_id=prefix + str(v["job_id"]), target=str(v["target"]),
                                 snapshot_id=None if v.get("snapshot_id") is None else str(v["snapshot_id"]),
                                 started_at=float(v["started_at"]), read_data=bool(v["read_data"]),
                                 objects_checked=int(v["objects_checked"]), bytes_read=int(v["bytes_read"]),
                                 problems=[str(p) for p in v.get("problems") or []])
    if filed is not None and rep.kind == "drill":
        filed.drills += [str(d) for d in rep.records.get("drills") or [] if str(d).startswith(f"{rep.target}-")]
    return len(started)


def file_reports(catalog: Catalog, plane: ControlPlane) -> Filed:
    """File every report not filed yet (each once, whichever control-plane process takes it)."""
    filed = Filed()
    while reports := plane.take_reports():
        for rep in reports:
            try:
                filed.jobs += file_report(catalog, rep, filed)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("fleet job %d: agent %s's report is not well formed (%s); it was set aside",
                            rep.job, rep.agent, exc)
    return filed


async def file_and_adopt(ctx: EngineContext, plane: ControlPlane) -> Filed:
    """File the agents' reports, then index the drills they ran from their sealed copies in the repository."""
    from core.drills.seal import adopt

    filed = await asyncio.to_thread(file_reports, ctx.catalog, plane)
    for drill_id in filed.drills:
        try:
            await adopt(ctx, drill_id)
        except BackstopError as exc:
            log.warning("drill %s reported by an agent cannot be adopted: %s", drill_id, exc)
    return filed
