"""Pure time arithmetic of schedules: slots, windows, jitter and the deadline after which a slot is missed.

All times going in and out are aware datetimes in UTC; the cron expression
and the window are read in the schedule's own time zone, so a slot at 02:30
Europe/Berlin moves with daylight saving time: on the spring-forward night
it runs at 03:00 (the local time does not exist), on the fall-back night
once, at the first 02:30 (cronsim's rules).

A slot's deadline is the earliest of: the end of its window (when it has
one), the slot plus ``misfire`` (when it has none; 1 h by default), and the
next slot. A slot not started by then is missed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cronsim import CronSim

from core.schedule.config import ScheduleConfig


@dataclass(frozen=True)
class Slot:
    """One cron time of a schedule, when it runs (with jitter) and until when it may start."""

    at: datetime  # the cron time (UTC)
    run_at: datetime  # at + this slot's jitter
    deadline: datetime  # not started by then: missed

    @property
    def key(self) -> str:
        """The slot as the catalog names it (ISO 8601 UTC, seconds)."""
        return slot_key(self.at)


def slot_key(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def slots_after(s: ScheduleConfig, after: datetime) -> Iterator[datetime]:
    """The schedule's cron times strictly after ``after``, in UTC, for ever."""
    for local in CronSim(s.cron, after.astimezone(s.zone)):
        yield local.astimezone(UTC)


def next_slot(s: ScheduleConfig, after: datetime) -> datetime:
    """The first cron time strictly after ``after`` (UTC)."""
    return next(slots_after(s, after))


def in_window(s: ScheduleConfig, at: datetime) -> bool:
    """Whether ``at`` lies inside the schedule's window (always, without one)."""
    w = s.window_times
    if w is None:
        return True
    start, end = w
    t = at.astimezone(s.zone).time()
    return start <= t < end if start < end else (t >= start or t < end)


def window_end(s: ScheduleConfig, at: datetime) -> datetime | None:
    """When the window occurrence holding ``at`` closes (UTC), None without a window or outside it."""
    w = s.window_times
    if w is None or not in_window(s, at):
        return None
    start, end = w
    local = at.astimezone(s.zone)
    day = local.date()
    if start > end and local.time() >= start:
        day += timedelta(days=1)  # the window crosses midnight: it closes tomorrow
    return datetime.combine(day, end, tzinfo=s.zone).astimezone(UTC)


def jitter_offset(name: str, at: datetime, jitter: timedelta) -> timedelta:
    """A delay in [0, jitter) fixed by (schedule name, slot): every scheduler computes the same one."""
    if jitter <= timedelta(0):
        return timedelta(0)
    h = int.from_bytes(hashlib.blake2b(f"{name}|{slot_key(at)}".encode(), digest_size=8).digest(), "big")
    return timedelta(seconds=int(h % int(jitter.total_seconds() or 1)))


def plan_slot(s: ScheduleConfig, at: datetime) -> Slot | None:
    """The slot at cron time ``at``: None when it falls outside the schedule's window (it is not run)."""
    if not in_window(s, at):
        return None
    follow = next_slot(s, at)
    end = window_end(s, at)
    deadline = min(end if end is not None else at + s.misfire, follow)
    run_at = at + jitter_offset(s.name, at, s.jitter)
    if run_at >= deadline:  # jitter longer than the window: start at the latest moment still inside it
        run_at = max(at, deadline - timedelta(seconds=1))
    return Slot(at, run_at, deadline)


def next_run(s: ScheduleConfig, after: datetime) -> Slot | None:
    """The next slot after ``after`` that will run (inside its window); None if none in the next 1,000 slots."""
    for i, at in enumerate(slots_after(s, after)):
        if i >= 1000:
            return None
        slot = plan_slot(s, at)
        if slot is not None:
            return slot
    return None
