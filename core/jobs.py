"""A running job: the one place that turns work into events on the bus."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from core.errors import BackstopError, error_target
from core.events import EventBus, JobFinished, JobStarted, JobWarning, PhaseChanged, Progress, RateMeter


class Job:
    """Handle a job's code uses to report phase, progress and warnings."""

    def __init__(self, bus: EventBus, kind: str, db: str | None) -> None:
        self.bus = bus
        self.id = uuid.uuid4().hex[:12]
        self.kind = kind
        self.db = db
        self.phase_name = "starting"
        self.result: dict[str, object] = {}
        self.warnings: list[str] = []
        self._meter = RateMeter()

    def phase(self, name: str) -> None:
        """Enter a new phase (dump, upload, verify, restore, ...)."""
        self.phase_name = name
        self._meter = RateMeter()
        self.bus.publish(PhaseChanged(self.id, phase=name))

    def progress(self, done: int, total: int | None) -> None:
        """Report bytes done (and the expected total, if known) in the current phase."""
        self.bus.publish(Progress(self.id, phase=self.phase_name, bytes_done=done, bytes_total=total,
                                  rate=self._meter.update(done)))

    def warn(self, message: str) -> None:
        """Something the operator should see that did not stop the job."""
        self.warnings.append(message)
        self.bus.publish(JobWarning(self.id, message=message))


def failure_facts(exc: BaseException) -> dict[str, object]:
    """What a failed job keeps in its result for the failure insights: the error's class and the target it blames."""
    facts: dict[str, object] = {"error_class": type(exc).__name__}
    target = error_target(exc)
    if target is not None:
        facts["target"] = target
    return facts


@asynccontextmanager
async def run_job(bus: EventBus, kind: str, db: str | None, description: str) -> AsyncIterator[Job]:
    """Publish start and finish (with outcome) around a block of work."""
    job = Job(bus, kind, db)
    bus.publish(JobStarted(job.id, kind=kind, db=db, description=description))
    try:
        yield job
    except BackstopError as exc:
        bus.publish(JobFinished(job.id, outcome="failed", error=str(exc), result=failure_facts(exc)))
        raise
    except (asyncio.CancelledError, KeyboardInterrupt):
        bus.publish(JobFinished(job.id, outcome="abandoned", error="interrupted (SIGTERM or Ctrl-C); cleaned up"))
        raise
    except BaseException as exc:
        # Unexpected errors and cancellation still close the job record.
        bus.publish(JobFinished(job.id, outcome="failed", error=f"{type(exc).__name__}: {exc}",
                                result=failure_facts(exc)))
        raise
    bus.publish(JobFinished(job.id, outcome="succeeded", result=job.result))
