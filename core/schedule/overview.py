"""Each schedule's next run and last run, as `schedule list` and the console's Settings screen show them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.catalog.base import Catalog
from core.records import ScheduleRun
from core.schedule.config import ScheduleConfig
from core.schedule.slots import next_run


@dataclass(frozen=True)
class ScheduleStatus:
    """One configured schedule, when it runs next (inside its window) and how its newest slot went."""

    schedule: ScheduleConfig
    next_run: datetime | None  # UTC, jitter included; None: no slot inside the window in the next 1,000
    last: ScheduleRun | None  # the newest slot anyone claimed or recorded (missed ones too)

    @property
    def next_local(self) -> datetime | None:
        """The next run in the schedule's own time zone (what its cron expression is written in)."""
        return None if self.next_run is None else self.next_run.astimezone(self.schedule.zone)

    @property
    def last_outcome(self) -> str:
        """'never run', or the newest slot's state with its error."""
        if self.last is None:
            return "never run"
        return self.last.state + (f": {self.last.error}" if self.last.error else "")

    def to_json(self) -> dict[str, Any]:
        s, run = self.schedule, self.last
        return {
            "name": s.name, "action": s.action, "db": s.db, "cron": s.cron, "timezone": s.timezone,
            "window": s.window, "next_run": None if self.next_run is None else self.next_run.isoformat(),
            "last_slot": None if run is None else run.slot, "last_state": None if run is None else run.state,
            "last_started": None if run is None else run.started_at,
            "last_finished": None if run is None else run.finished_at,
            "last_error": None if run is None else run.error,
        }


def schedule_overview(schedules: Sequence[ScheduleConfig], catalog: Catalog, now: datetime) -> list[ScheduleStatus]:
    """Every schedule in config order with its next run after ``now`` and its newest recorded slot."""
    out = []
    for s in schedules:
        nxt = next_run(s, now)
        last = catalog.schedule_runs(s.name, limit=1)
        out.append(ScheduleStatus(s, None if nxt is None else nxt.run_at, last[0] if last else None))
    return out
