"""Point-in-time recovery: the target, the settings that make PostgreSQL recover to it, and what happened.

Three parts, none of which talks to a server:

- :class:`RecoveryTarget` (from the command line's ``--target-*`` options)
  and the ``postgresql.auto.conf`` lines plus ``recovery.signal`` that ask
  PostgreSQL (12 and newer) for archive recovery through ``backstop
  wal-fetch`` up to that target;
- the WAL a recovery needs: which segment, on which timeline, PostgreSQL
  reads for each position (:func:`timeline_chain`, :func:`required_segments`),
  so a gap in the archive is named before anything is written;
- :func:`read_recovery_log`: the server log lines that say where recovery
  stopped, whether it paused, promoted or shut down, or why it failed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from core.errors import UsageError
from core.postgres.wal import format_lsn, is_segment, parse_lsn, parse_segment_name, segment_name

ACTIONS = ("promote", "pause", "shutdown")
# archive_mode of the restored cluster: "off" (the default, as pgBackRest does) or as the backup had it.
ARCHIVE_MODES = ("off", "preserve")
SIGNAL_FILE = "recovery.signal"
AUTO_CONF = "postgresql.auto.conf"
# PostgreSQL's MAXFNAMELEN - 1: the longest restore point name pg_create_restore_point accepts.
MAX_RESTORE_POINT_NAME = 63


@dataclass(frozen=True)
class RecoveryTarget:
    """Where recovery stops: ``kind`` None is the end of the archive.

    ``kind`` is one of time, lsn, xid, name, immediate; ``value`` the text
    written into ``recovery_target_<kind>``; ``time`` and ``lsn`` the parsed
    forms the snapshot chooser compares with. ``timeline`` is
    ``recovery_target_timeline`` ('latest', 'current' or a number).
    """

    kind: str | None = None
    value: str = ""
    time: datetime | None = None
    lsn: int | None = None
    action: str = "promote"
    timeline: str = "latest"

    def describe(self) -> str:
        """The target as an operator would say it."""
        if self.kind is None:
            return "the end of the archive"
        if self.kind == "immediate":
            return "the end of the base backup (consistency)"
        if self.kind == "time" and self.time is not None:
            return f"time {self.time.isoformat()}"
        return f"{self.kind} {self.value}"

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind or "end-of-archive", "value": self.value, "action": self.action,
                "timeline": self.timeline}


def parse_target_time(text: str) -> datetime:
    """An ISO 8601 time; without a UTC offset it is this machine's local time."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--target-time {text!r} is not an ISO 8601 time; write e.g. "
                         "2026-03-14T14:31:07+01:00 (without an offset: this machine's local time)") from None
    return t.astimezone() if t.tzinfo is None else t


def make_target(*, time: str | None = None, lsn: str | None = None, xid: str | None = None,
                name: str | None = None, immediate: bool = False, action: str | None = None,
                timeline: str | None = None) -> RecoveryTarget:
    """Validate the command line's target options (at most one target) into a :class:`RecoveryTarget`."""
    given = [k for k, v in (("time", time), ("lsn", lsn), ("xid", xid), ("name", name)) if v is not None]
    if immediate:
        given.append("immediate")
    if len(given) > 1:
        raise UsageError(f"give one recovery target, not {' and '.join('--target-' + g for g in given)}")
    if action is not None and action not in ACTIONS:
        raise UsageError(f"--target-action {action!r}: expected one of {', '.join(ACTIONS)}")
    if action is not None and not given:
        raise UsageError("--target-action needs a target (--target-time, -lsn, -xid, -name or -immediate); "
                         "recovery to the end of the archive always promotes")
    tl = _timeline(timeline or "latest")
    act = action or "promote"
    if not given:
        return RecoveryTarget(timeline=tl)
    kind = given[0]
    if kind == "time":
        assert time is not None
        t = parse_target_time(time)
        return RecoveryTarget("time", t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00"), time=t,
                              action=act, timeline=tl)
    if kind == "lsn":
        assert lsn is not None
        try:
            value = parse_lsn(lsn)
        except ValueError:
            raise UsageError(f"--target-lsn {lsn!r} is not an LSN; write it as PostgreSQL shows it, "
                             "e.g. 0/3000148") from None
        return RecoveryTarget("lsn", format_lsn(value), lsn=value, action=act, timeline=tl)
    if kind == "xid":
        assert xid is not None
        if not xid.strip().isdigit() or int(xid) < 3:
            raise UsageError(f"--target-xid {xid!r} is not a transaction id; give the number txid_current() "
                             "or pg_current_xact_id() returned (3 or more)")
        return RecoveryTarget("xid", str(int(xid)), action=act, timeline=tl)
    if kind == "name":
        assert name is not None
        if not name or len(name.encode()) > MAX_RESTORE_POINT_NAME:
            raise UsageError(f"--target-name must be 1 to {MAX_RESTORE_POINT_NAME} bytes, the name given to "
                             "pg_create_restore_point()")
        return RecoveryTarget("name", name, action=act, timeline=tl)
    return RecoveryTarget("immediate", "immediate", action=act, timeline=tl)


def _timeline(text: str) -> str:
    t = text.strip().lower()
    if t in ("latest", "current") or (t.isdigit() and int(t) >= 1):
        return t
    raise UsageError(f"--target-timeline {text!r}: expected latest, current or a timeline number")


# -- settings ------------------------------------------------------------------------------------------------


def quote_setting(value: str) -> str:
    """A value as postgresql.conf reads it: single-quoted, quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def recovery_settings(restore_command: str, target: RecoveryTarget, archive_mode: str = "off") -> list[tuple[str, str]]:
    """The ``(name, value)`` settings for archive recovery to ``target``, in writing order."""
    if archive_mode not in ARCHIVE_MODES:
        raise UsageError(f"--archive-mode {archive_mode!r}: expected one of {', '.join(ARCHIVE_MODES)}")
    out = [("restore_command", restore_command)]
    if target.kind == "immediate":
        out.append(("recovery_target", "immediate"))
    elif target.kind is not None:
        out.append((f"recovery_target_{target.kind}", target.value))
    if target.kind is not None:
        out.append(("recovery_target_action", target.action))
    out.append(("recovery_target_timeline", target.timeline))
    if archive_mode == "off":
        # A restored copy must not push its WAL into the archive it came from unless asked
        # (--archive-mode preserve): two clusters of one system identifier would share it.
        out.append(("archive_mode", "off"))
    return out


def write_recovery_files(data_dir: Path, settings: Iterable[tuple[str, str]], note: str,
                         owner: tuple[int, int] | None = None) -> None:
    """Append ``settings`` to postgresql.auto.conf (the last value of a setting wins) and create recovery.signal.

    ``note`` becomes the comment above them; ``owner`` (uid, gid) owns a
    file created here (the server's account when Backstop runs as root).
    """
    lines = [f"# {note}"] + [f"{name} = {quote_setting(value)}" for name, value in settings]
    auto = data_dir / AUTO_CONF
    fd = os.open(auto, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        existing = auto.stat().st_size
        prefix = b"\n" if existing and not _ends_with_newline(auto) else b""
        os.write(fd, prefix + ("\n".join(lines) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(data_dir / SIGNAL_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# -- which WAL a recovery reads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineSpan:
    """A timeline of a recovery's path and the LSN it begins at (0 for the first one)."""

    timeline: int
    begin_lsn: int


def parse_history(text: str) -> list[tuple[int, int]]:
    """A ``<tli>.history`` file's ``(parent timeline, switch point)`` lines, oldest first."""
    out: list[tuple[int, int]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2:
            raise ValueError(f"malformed timeline history line {line!r}")
        out.append((int(parts[0]), parse_lsn(parts[1])))
    return out


def timeline_chain(timeline: int, history: list[tuple[int, int]]) -> list[TimelineSpan]:
    """The timelines a recovery onto ``timeline`` passes through, each with where it begins."""
    spans: list[TimelineSpan] = []
    begin = 0
    for parent, switch in history:
        spans.append(TimelineSpan(parent, begin))
        begin = switch
    spans.append(TimelineSpan(timeline, begin))
    return spans


def timeline_at(chain: list[TimelineSpan], segno: int, seg_size: int) -> int:
    """The timeline PostgreSQL reads segment ``segno`` from: the newest one begun at or before that segment."""
    tli = chain[0].timeline
    for span in chain:
        if span.begin_lsn // seg_size <= segno:
            tli = span.timeline
    return tli


def required_segments(chain: list[TimelineSpan], start_lsn: int, end_segno: int, seg_size: int) -> list[str]:
    """Every segment file recovery reads from the one holding ``start_lsn`` through ``end_segno``."""
    out = []
    for segno in range(start_lsn // seg_size, end_segno + 1):
        tli = timeline_at(chain, segno, seg_size)
        out.append(segment_name(tli, segno * seg_size, seg_size))
    return out


def last_archived_segno(chain: list[TimelineSpan], stored: Mapping[int, set[str]], seg_size: int) -> int | None:
    """The highest segment number the archive holds on the timeline recovery would read it from."""
    best: int | None = None
    for span in chain:
        for name in stored.get(span.timeline, ()):
            if not is_segment(name):
                continue  # history, .partial and .backup files
            tli, segno = parse_segment_name(name, seg_size)
            if tli == timeline_at(chain, segno, seg_size) and (best is None or segno > best):
                best = segno
    return best


# -- what the server log says ---------------------------------------------------------------------------------

_STOPPING = re.compile(r"LOG:\s+(recovery stopping .*)$")
_STOP_TIME = re.compile(r", time (\d{4}-\d\d-\d\d [0-9:.]+(?:[+-]\d\d(?::?\d\d)?)?)")
_REDO_DONE = re.compile(r"redo done at ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")
_LAST_TXN = re.compile(r"last completed transaction was at log time (\S+ \S+)")
_NEW_TLI = re.compile(r"selected new timeline ID: (\d+)")
_FAILURE = re.compile(r"(?:FATAL|PANIC):\s+(.*)$")
# FATALs that concern a client's connection attempt, not recovery.
_CLIENT_FATALS = ("the database system is", "terminating connection", "database \"", "role \"",
                  "password authentication", "no pg_hba.conf entry", "canceling")


@dataclass
class RecoveryLog:
    """What the server log of a recovering cluster says (only lines logged since the start we made)."""

    stopping: str | None = None  # "recovery stopping before commit of transaction 745, time ..."
    stop_time: str | None = None
    paused: bool = False  # "pausing at the end of recovery" / "recovery has paused"
    complete: bool = False  # "archive recovery complete"
    shut_down: bool = False  # "database system is shut down"
    redo_done_lsn: str | None = None
    last_commit_time: str | None = None
    new_timeline: int | None = None
    failure: str | None = None  # the first FATAL/PANIC line of the startup process
    restored: list[str] = field(default_factory=list)  # WAL files fetched from the archive


def read_recovery_log(text: str) -> RecoveryLog:
    """Parse the server log lines written since recovery started."""
    out = RecoveryLog()
    for line in text.splitlines():
        if m := _STOPPING.search(line):
            out.stopping = m.group(1).strip()
            if t := _STOP_TIME.search(line):
                out.stop_time = t.group(1)
        elif "pausing at the end of recovery" in line or "recovery has paused" in line:
            out.paused = True
        elif "archive recovery complete" in line:
            out.complete = True
        elif "database system is shut down" in line:
            out.shut_down = True
        elif m := _REDO_DONE.search(line):
            out.redo_done_lsn = m.group(1)
        elif m := _LAST_TXN.search(line):
            out.last_commit_time = m.group(1)
        elif m := _NEW_TLI.search(line):
            out.new_timeline = int(m.group(1))
        elif 'restored log file "' in line:
            out.restored.append(line.split('restored log file "', 1)[1].split('"', 1)[0])
        elif (m := _FAILURE.search(line)) and out.failure is None:
            msg = m.group(1).strip()
            if not msg.startswith(_CLIENT_FATALS):
                out.failure = msg
    return out
