"""The ``schedules:`` section of the config: one entry per timed action.

Kept free of ``core.config`` imports (that module imports this one). Rules
that need the rest of the config (the database exists, names are unique)
are :func:`check_schedules`, which ``BackstopConfig`` calls.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ACTIONS = ("backup", "verify", "retention", "key-rotation", "drill", "sync", "archive")
Action = Literal["backup", "verify", "retention", "key-rotation", "drill", "sync", "archive"]
# Actions that act on one configured database (``db:`` required).
DB_ACTIONS = ("backup", "drill")
# A drill schedule without ``cron``: quarterly, 02:00 on the first of January, April, July and October.
DRILL_CRON = "0 2 1 1,4,7,10 *"

_WINDOW_RE = re.compile(r"^\s*([01]\d|2[0-3]):([0-5]\d)\s*-\s*([01]\d|2[0-3]):([0-5]\d)\s*$")
_SAMPLE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
# Same forms as core.config.parse_duration (which cannot be imported here: core.config imports this module).
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(value: object) -> object:
    if isinstance(value, (timedelta, int, float)) and not isinstance(value, bool):
        return value if isinstance(value, timedelta) else timedelta(seconds=value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a duration like 10m, 1h or 30s, got {value!r}")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def parse_window(text: str) -> tuple[time, time]:
    """``"01:00-05:00"`` as (start, end) local times; the end may be earlier (the window crosses midnight)."""
    m = _WINDOW_RE.match(text)
    if not m:
        raise ValueError(f"expected a window like \"01:00-05:00\" (HH:MM-HH:MM, 24-hour), got {text!r}")
    start, end = time(int(m.group(1)), int(m.group(2))), time(int(m.group(3)), int(m.group(4)))
    if start == end:
        raise ValueError(f"window {text!r} is empty: start and end are the same time")
    return start, end


class ScheduleConfig(BaseModel):
    """One schedule: ``{name, action, cron, [db, type, window, timezone, jitter, sample, misfire, snapshot,
    target]}`` (a drill's ``cron`` defaults to :data:`DRILL_CRON`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    action: Action
    # Five fields (minute hour day month weekday), or six with seconds first; cronsim's dialect.
    cron: str
    db: str | None = None
    # Backups: logical (pg_dump-like) or physical (the database's whole cluster).
    type: Literal["logical", "physical"] = "logical"
    # Local times (in ``timezone``) a run may start in; slots outside it are skipped, a slot not started
    # before its window closes is recorded as missed.
    window: str | None = None
    # IANA time zone the cron expression and the window are read in.
    timezone: str = "UTC"
    # Each slot starts up to this much later, by an offset fixed per (schedule, slot): spreads load.
    jitter: timedelta = timedelta(0)
    # Verify: "5%" of the snapshots per run (least recently verified first), or "all".
    sample: str | None = None
    # Without a window: a slot not started within this (or before the next slot) is missed.
    misfire: timedelta = timedelta(hours=1)
    # Drill: which snapshot (the newest, or a random one within the retention window; default latest) and
    # which target to read from (default: rotate, the target drilled longest ago first).
    snapshot: Literal["latest", "random"] | None = None
    target: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drill_cron(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("action") == "drill" and data.get("cron") is None:
            return {**data, "cron": DRILL_CRON}
        return data

    @field_validator("jitter", "misfire", mode="before")
    @classmethod
    def _durations(cls, v: object) -> object:
        return _duration(v)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        # Imported here: every command loads the config, and wal-push (which PostgreSQL waits on) never
        # needs cron or time zones.
        from cronsim import CronSim, CronSimError

        try:
            CronSim(v, datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError as exc:
            raise ValueError(f"not a valid cron expression {v!r}: {exc}") from None
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None:
            parse_window(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}: expected an IANA name such as Europe/Berlin or UTC") from None
        return v

    @field_validator("sample")
    @classmethod
    def _sample(cls, v: str | None) -> str | None:
        if v is None or v.strip() == "all":
            return v
        m = _SAMPLE_RE.match(v)
        if not m or not 0 < float(m.group(1)) <= 100:
            raise ValueError(f"expected a share like 5% (above 0, at most 100) or \"all\", got {v!r}")
        return v

    @model_validator(mode="after")
    def _fits_action(self) -> ScheduleConfig:
        if self.action in DB_ACTIONS and self.db is None:
            raise ValueError(f"action {self.action} needs db: the configured database it works on")
        if self.sample is not None and self.action != "verify":
            raise ValueError("sample applies to action verify only")
        for key in ("snapshot", "target"):
            if getattr(self, key) is not None and self.action != "drill":
                raise ValueError(f"{key} applies to action drill only")
        if self.misfire <= timedelta(0):
            raise ValueError("misfire must be a positive duration")
        return self

    @property
    def zone(self) -> ZoneInfo:
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)

    @property
    def window_times(self) -> tuple[time, time] | None:
        return None if self.window is None else parse_window(self.window)

    @property
    def sample_share(self) -> float:
        """The share of snapshots a verify run reads (1.0: all)."""
        if self.sample is None or self.sample.strip() == "all":
            return 1.0
        m = _SAMPLE_RE.match(self.sample)
        assert m is not None
        return float(m.group(1)) / 100


def check_schedules(schedules: Sequence[ScheduleConfig], databases: Sequence[str],
                    targets: Sequence[str] | None = None) -> None:
    """Cross-checks with the rest of the config: unique names, configured databases (ValueError naming the key)."""
    seen: set[str] = set()
    for i, s in enumerate(schedules):
        if s.name in seen:
            raise ValueError(f"schedules.{i}.name: duplicate schedule name {s.name!r}")
        seen.add(s.name)
        if s.db is not None and s.db not in databases:
            known = ", ".join(databases) or "none"
            raise ValueError(f"schedules.{i}.db: no database named {s.db!r} in databases (configured: {known})")
        if targets is not None and s.target is not None and s.target not in targets:
            known = ", ".join(targets) or "none"
            raise ValueError(f"schedules.{i}.target: no target named {s.target!r} in targets (configured: {known})")
