"""Alerts for the dashboard: what needs an operator's attention, most urgent first.

Pure functions over facts the engine gathers from the catalog. Each alert
says what is wrong and what to do, in one line, and carries a severity word
so it reads the same without colour (NO_COLOR terminals, screen readers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from core.format import utc
from core.records import JobRecord, VerificationRecord

Level = Literal["critical", "warning", "info"]
_ORDER = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Alert:
    """One thing that needs attention."""

    level: Level
    # failed-job, missed-run, never-verified, damaged-copy, target-unhealthy, stale-backup, wal-lag, settings-pending,
    # target-errors, target-no-write, missing-copy
    kind: str
    message: str
    at: float | None = None  # when it happened (epoch seconds), if known


def iso_to_epoch(iso: str) -> float:
    """Catalog timestamps (ISO 8601 with offset) as epoch seconds."""
    return datetime.fromisoformat(iso).timestamp()


def _hhmm(ts: float) -> str:
    # UTC, like every time the console and the CLI show.
    return utc(ts, "%m-%d %H:%M UTC")


def build_alerts(*, now: float, recent_jobs: Sequence[JobRecord],
                 never_verified: tuple[int, Sequence[tuple[str, str, str]]],
                 damaged: Sequence[VerificationRecord], target_checks: Mapping[str, VerificationRecord],
                 configured_targets: Sequence[str], latest_backup: Mapping[str, str], configured_dbs: Sequence[str],
                 missed_runs: Sequence[tuple[str, float]] = (), wal_lag_s: Mapping[str, float] | None = None,
                 pending_settings: Sequence[str] = (), extra: Sequence[Alert] = (),
                 stale_after_s: float = 26 * 3600, wal_lag_limit_s: float = 300, failed_window_s: float = 86_400,
                 limit: int = 50) -> list[Alert]:
    """All alerts, most urgent first (then newest first); ``extra``: alerts computed elsewhere (targets' health)."""
    out: list[Alert] = list(extra)
    for j in recent_jobs:
        if j.state in ("failed", "abandoned") and j.started_at >= now - failed_window_s:
            what = j.description or f"{j.kind} of {j.db}"
            level: Level = "critical" if j.kind in ("backup", "restore") else "warning"
            out.append(Alert(level, "failed-job", f"{what} failed at {_hhmm(j.finished_at or j.started_at)}: "
                                                  f"{(j.error or 'no error recorded').splitlines()[0]}", j.finished_at))
    for db, due in missed_runs:
        out.append(Alert("critical", "missed-run", f"scheduled backup of {db} due {_hhmm(due)} never started", due))
    for name in configured_targets:
        chk = target_checks.get(name)
        if chk is not None and not chk.ok:
            first = chk.problems[0] if chk.problems else "problems found"
            out.append(Alert("critical", "target-unhealthy",
                             f"target {name} failed its last check ({_hhmm(chk.finished_at)}): {first}; "
                             "run `backstop check --read-data`", chk.finished_at))
    for v in damaged:
        out.append(Alert("critical", "damaged-copy",
                         f"snapshot {str(v.snapshot_id)[:8]} is damaged on target {v.target}; "
                         "restores read the other copy; repair with `backstop check --read-data`", v.finished_at))
    count, examples = never_verified
    if count:
        ex = ", ".join(f"{sid[:8]} ({db})" for sid, db, _ in examples[:3])
        out.append(Alert("warning", "never-verified",
                         f"{count} snapshot(s) of the last 30 days never verified, e.g. {ex}; verify from screen 3"))
    for db in configured_dbs:
        last = latest_backup.get(db)
        if last is None:
            out.append(Alert("warning", "stale-backup", f"database {db} has no snapshot yet; run a backup"))
        elif now - iso_to_epoch(last) > stale_after_s:
            hours = (now - iso_to_epoch(last)) / 3600
            out.append(Alert("warning", "stale-backup", f"newest snapshot of {db} is {hours:.0f} h old",
                             iso_to_epoch(last)))
    if pending_settings:
        out.append(settings_alert(pending_settings))
    # The recovery-point age (the WAL archive's lag) plugs in here.
    for db, lag in (wal_lag_s or {}).items():
        alert = recovery_point_alert(lag, wal_lag_limit_s, f"WAL archive of {db}", now)
        if alert is not None:
            out.append(alert)
    out.sort(key=lambda a: (_ORDER[a.level], -(a.at or 0.0)))
    return out[:limit]


def recovery_point_alert(age_s: float | None, limit_s: float, what: str, now: float) -> Alert | None:
    """A critical alert when the newest recoverable moment is older than ``limit_s`` (None otherwise).

    ``what`` names that moment (the newest archived WAL segment, or the newest
    snapshot when no WAL is archived): it is what a lost primary takes with it.
    """
    if age_s is None or age_s <= limit_s:
        return None
    return Alert("critical", "wal-lag",
                 f"recovery point is {age_s / 60:.0f} min old ({what}), past the {limit_s / 60:.0f} min limit: a lost "
                 "primary would take that much with it; check `backstop wal status` and archive_command",
                 now - age_s)


def settings_alert(sections: Sequence[str]) -> Alert:
    """A warning that edited schedules/retention/encryption settings wait for approval (the old ones apply)."""
    return Alert("warning", "settings-pending",
                 f"settings changed in the config wait for approval ({', '.join(sections)}); the approved ones stay "
                 "in force: run `backstop settings diff`, then `backstop settings approve`")


def missing_copy_alerts(lacking: Mapping[str, int]) -> list[Alert]:
    """A warning per target that lacks snapshots (a quorum write left it out, or it was added later)."""
    return [Alert("warning", "missing-copy",
                  f"target {target} lacks {n} snapshot(s) the other targets hold: a quorum write left it out or it "
                  "is new; run `backstop sync` (or schedule the sync action)")
            for target, n in sorted(lacking.items())]
