"""The audit log: a keyed hash chain of security-relevant events, in the catalog.

Each entry records time, operator, host, action, subject, outcome and a
small JSON detail, plus ``prev`` (the MAC of the entry before it) and its
own ``mac``:

    mac = HMAC-SHA256(K, JSON[log_id, seq, ts, operator, host, action, subject, outcome, detail, prev])

where K is derived from the repository key (``derive.AUDIT_MAC``) and the
first entry's ``prev`` is HMAC-SHA256(K, "backstop-audit-genesis:" + log_id).
Without K nobody can recompute a MAC, so an entry edited in SQLite, a
deleted entry (a gap, or a ``prev`` that no longer matches) and a moved entry
(its MAC binds its sequence number) are all detected by :func:`verify_chain`.
Deleting entries from the end leaves a valid shorter chain; the copy in the
repository (``audit_copy``) is what exposes that.

``log_id`` names one chain. A catalog starts a chain on its first entry; a
catalog rebuilt after a loss adopts the chain found in the repository and
continues it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

from core.errors import AuthError

_COLS = "seq, ts, operator, host, action, subject, outcome, detail, prev, mac"
_LOG_ID_KEY = "audit_log_id"


@dataclass(frozen=True)
class AuditEntry:
    """One audit log entry, as stored."""

    seq: int
    ts: float
    operator: str
    host: str
    action: str
    subject: str
    outcome: str
    detail: str  # compact JSON object, exactly as hashed
    prev: str
    mac: str

    @property
    def details(self) -> dict[str, Any]:
        try:
            value = json.loads(self.detail)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def time(self) -> str:
        return datetime.fromtimestamp(self.ts, timezone.utc).isoformat(timespec="seconds")

    def to_json(self) -> dict[str, Any]:
        """For `audit list --json` and the repository copy: every stored field, detail as an object."""
        return {"seq": self.seq, "time": self.time, "ts": self.ts, "operator": self.operator, "host": self.host,
                "action": self.action, "subject": self.subject, "outcome": self.outcome, "detail": self.details,
                "detail_json": self.detail, "prev": self.prev, "mac": self.mac}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "AuditEntry":
        return cls(int(doc["seq"]), float(doc["ts"]), str(doc["operator"]), str(doc["host"]), str(doc["action"]),
                   str(doc["subject"]), str(doc["outcome"]), str(doc["detail_json"]), str(doc["prev"]),
                   str(doc["mac"]))


def _hmac(key: bytes, msg: str) -> str:
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def genesis(key: bytes, log_id: str) -> str:
    """The ``prev`` of a chain's first entry."""
    return _hmac(key, f"backstop-audit-genesis:{log_id}")


def entry_mac(key: bytes, log_id: str, seq: int, e: AuditEntry) -> str:
    """The MAC an entry with ``e``'s content must carry at position ``seq``."""
    return _hmac(key, json.dumps([log_id, seq, e.ts, e.operator, e.host, e.action, e.subject, e.outcome, e.detail,
                                  e.prev], ensure_ascii=False, separators=(",", ":")))


@dataclass(frozen=True)
class VerifyReport:
    """Result of checking a chain: ok, or the first bad entry and why."""

    entries: int
    first_bad: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_chain(key: bytes, log_id: str, entries: Sequence[AuditEntry]) -> VerifyReport:
    """Walk the chain in sequence order and name the first entry that breaks it."""
    prev = genesis(key, log_id)
    expected = 1
    for e in entries:
        if e.seq != expected:
            return VerifyReport(len(entries), expected,
                                f"audit entry #{expected} is missing: it was deleted "
                                f"(entry #{e.seq} follows #{expected - 1})")
        if not hmac.compare_digest(entry_mac(key, log_id, e.seq, e), e.mac):
            # A MAC that fits another position means the entry was moved there.
            moved = next((s for s in range(1, len(entries) + 2)
                          if s != e.seq and hmac.compare_digest(entry_mac(key, log_id, s, e), e.mac)), None)
            if moved is not None:
                return VerifyReport(len(entries), e.seq,
                                    f"audit entry #{e.seq} holds the content of entry #{moved}: "
                                    "the log was reordered")
            return VerifyReport(len(entries), e.seq,
                                f"audit entry #{e.seq} ({e.time}, {e.action}) was altered: its keyed hash does not match")
        if not hmac.compare_digest(e.prev, prev):
            return VerifyReport(len(entries), e.seq,
                                f"audit entry #{e.seq} does not follow entry #{e.seq - 1}: "
                                "the chain is broken (an entry was deleted, inserted or reordered)")
        prev = e.mac
        expected += 1
    return VerifyReport(len(entries))


def _canonical(detail: dict[str, Any] | None) -> str:
    return json.dumps(detail or {}, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


class AuditLog:
    """The ``audit_log`` table. Reading needs no key; appending and verifying do."""

    def __init__(self, conn: sqlite3.Connection, key: bytes | None = None) -> None:
        self._db = conn
        self._key = key

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction, taken at once (BEGIN IMMEDIATE): concurrent appenders are serialised."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _need_key(self) -> bytes:
        if self._key is None:
            raise AuthError("the audit log needs the repository key; open the repository first")
        return self._key

    @property
    def log_id(self) -> str | None:
        row = self._db.execute("SELECT value FROM security_state WHERE key=?", (_LOG_ID_KEY,)).fetchone()
        return str(row[0]) if row else None

    def is_empty(self) -> bool:
        return self.log_id is None and self._db.execute("SELECT 1 FROM audit_log LIMIT 1").fetchone() is None

    def append(self, operator: str, host: str, action: str, subject: str, outcome: str,
               detail: dict[str, Any] | None, ts: float) -> AuditEntry:
        """Add one entry at the end of the chain (atomic against other processes)."""
        key = self._need_key()
        with self._tx():
            log_id = self.log_id
            if log_id is None:
                log_id = uuid.uuid4().hex
                self._db.execute("INSERT INTO security_state (key, value) VALUES (?, ?)", (_LOG_ID_KEY, log_id))
            last = self._db.execute("SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, genesis(key, log_id))
            draft = AuditEntry(seq, float(ts), operator, host, action, subject, outcome, _canonical(detail), prev, "")
            entry = AuditEntry(**{**draft.__dict__, "mac": entry_mac(key, log_id, seq, draft)})
            self._db.execute(f"INSERT INTO audit_log ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)", _row(entry))
        return entry

    def entries(self, since: float | None = None, limit: int | None = None, after_seq: int = 0) -> list[AuditEntry]:
        """Entries in sequence order (optionally from a time on, or after a sequence number; the newest ``limit``)."""
        sql = f"SELECT {_COLS} FROM audit_log WHERE seq > ?"
        args: list[object] = [after_seq]
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT ?) ORDER BY seq"
            args.append(limit)
        else:
            sql += " ORDER BY seq"
        return [_entry(r) for r in self._db.execute(sql, args)]

    def first(self, action: str, outcome: str) -> AuditEntry | None:
        """The earliest entry with this action and outcome (e.g. the first enrolment)."""
        row = self._db.execute(f"SELECT {_COLS} FROM audit_log WHERE action=? AND outcome=? ORDER BY seq LIMIT 1",
                               (action, outcome)).fetchone()
        return _entry(row) if row else None

    def last(self) -> AuditEntry | None:
        """The newest entry of the chain."""
        row = self._db.execute(f"SELECT {_COLS} FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        return _entry(row) if row else None

    def entry(self, seq: int) -> AuditEntry | None:
        row = self._db.execute(f"SELECT {_COLS} FROM audit_log WHERE seq=?", (seq,)).fetchone()
        return _entry(row) if row else None

    def extend(self, entries: Iterable[AuditEntry]) -> int:
        """Append entries of this chain that another copy holds beyond the catalog's end, checked first."""
        log_id = self.log_id
        if log_id is None:
            raise AuthError("the catalog has no audit log to extend")
        new = sorted(entries, key=lambda e: e.seq)
        report = verify_chain(self._need_key(), log_id, [*self.entries(), *new])
        if not report.ok:
            raise AuthError(f"the repository's entries do not continue the catalog's audit log: {report.problem}")
        with self._tx():
            self._db.executemany(f"INSERT INTO audit_log ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                 [_row(e) for e in new])
        return len(new)

    def discard(self) -> int:
        """Drop the catalog's chain (before adopting the repository's); returns how many entries it had."""
        with self._tx():
            (n,) = self._db.execute("SELECT count(*) FROM audit_log").fetchone()
            self._db.execute("DELETE FROM audit_log")
            self._db.execute("DELETE FROM security_state WHERE key=?", (_LOG_ID_KEY,))
        return int(n)

    def verify(self) -> VerifyReport:
        """Check the catalog's chain."""
        log_id = self.log_id
        entries = self.entries()
        if log_id is None:
            if entries:
                return VerifyReport(len(entries), entries[0].seq,
                                    "the audit log's chain id is missing from the catalog (edited outside backstop)")
            return VerifyReport(0)
        return verify_chain(self._need_key(), log_id, entries)

    def adopt(self, log_id: str, entries: Iterable[AuditEntry]) -> int:
        """Continue a chain found in the repository (the catalog was lost): import it, checked first."""
        entries = sorted(entries, key=lambda e: e.seq)
        report = verify_chain(self._need_key(), log_id, entries)
        if not report.ok:
            raise AuthError(f"the repository's copy of audit log {log_id[:8]} is damaged: {report.problem}")
        with self._tx():
            if not self.is_empty():
                raise AuthError("the catalog already has an audit log; refusing to replace it")
            self._db.execute("INSERT INTO security_state (key, value) VALUES (?, ?)", (_LOG_ID_KEY, log_id))
            self._db.executemany(f"INSERT INTO audit_log ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                 [_row(e) for e in entries])
        return len(entries)


def _row(e: AuditEntry) -> tuple[object, ...]:
    return (e.seq, e.ts, e.operator, e.host, e.action, e.subject, e.outcome, e.detail, e.prev, e.mac)


def _entry(r: Sequence[Any]) -> AuditEntry:
    return AuditEntry(int(r[0]), float(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]), str(r[7]),
                      str(r[8]), str(r[9]))
