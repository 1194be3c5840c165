"""The SQLite catalog's security tables: operators, the audit log, security settings.

Only storage lives here. The keyed MACs, the sealed TOTP secrets and the
audit chain's rules are core/security's; it hands over finished rows and
entries. What must be atomic against other processes runs inside
``BEGIN IMMEDIATE``, which SQLite grants one writer at a time: two
processes appending to the audit chain, or checking codes for one operator,
are serialised.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from core.records import AuditEntry, OperatorRow

_AUDIT_COLS = "seq, ts, operator, host, action, subject, outcome, detail, prev, mac"
_OPERATOR_COLS = "name, role, secret_sealed, created_at, created_by, last_step, failures, locked_until, mac"
# The audit chain's id is kept in security_state under this key.
AUDIT_LOG_ID_KEY = "audit_log_id"


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (BEGIN IMMEDIATE): writers in other processes wait their turn."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _entry(r: Sequence[Any]) -> AuditEntry:
    return AuditEntry(int(r[0]), float(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]), str(r[7]),
                      str(r[8]), str(r[9]))


def _entry_values(e: AuditEntry) -> tuple[object, ...]:
    return (e.seq, e.ts, e.operator, e.host, e.action, e.subject, e.outcome, e.detail, e.prev, e.mac)


class _OperatorSlot:
    """An operator's row inside the caller's BEGIN IMMEDIATE transaction."""

    def __init__(self, db: sqlite3.Connection, name: str, row: OperatorRow | None) -> None:
        self._db, self._name, self._row = db, name, row

    @property
    def row(self) -> OperatorRow | None:
        return self._row

    def put(self, row: OperatorRow) -> None:
        if row.name != self._name:
            raise ValueError(f"operator slot of {self._name!r} cannot write the row of {row.name!r}")
        self._db.execute(f"INSERT OR REPLACE INTO operators ({_OPERATOR_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                         row.values())
        self._row = row

    def delete(self) -> None:
        self._db.execute("DELETE FROM operators WHERE name=?", (self._name,))
        self._row = None


class SecurityTables:
    """Operators, the audit log and security settings of an SQLite catalog (mixed into SqliteCatalog)."""

    _db: sqlite3.Connection

    # -- security settings ----------------------------------------------------------------

    def security_value(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM security_state WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_security_value(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO security_state (key, value) VALUES (?, ?)", (key, value))

    # -- the audit log ------------------------------------------------------------------------

    def audit_log_id(self) -> str | None:
        return self.security_value(AUDIT_LOG_ID_KEY)

    def audit_is_empty(self) -> bool:
        return self.audit_log_id() is None and self._db.execute("SELECT 1 FROM audit_log LIMIT 1").fetchone() is None

    def audit_append(self, build: Callable[[str, tuple[int, str] | None], AuditEntry], *,
                     start_log_id: str) -> AuditEntry:
        with transaction(self._db):
            log_id = self.audit_log_id()
            if log_id is None:
                log_id = start_log_id
                self._db.execute("INSERT INTO security_state (key, value) VALUES (?, ?)", (AUDIT_LOG_ID_KEY, log_id))
            last = self._db.execute("SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            entry = build(log_id, (int(last[0]), str(last[1])) if last else None)
            self._db.execute(f"INSERT INTO audit_log ({_AUDIT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                             _entry_values(entry))
        return entry

    def audit_insert(self, entries: Sequence[AuditEntry]) -> None:
        with transaction(self._db):
            self._db.executemany(f"INSERT INTO audit_log ({_AUDIT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                 [_entry_values(e) for e in entries])

    def audit_adopt(self, log_id: str, entries: Sequence[AuditEntry]) -> bool:
        with transaction(self._db):
            if not self.audit_is_empty():
                return False
            self._db.execute("INSERT INTO security_state (key, value) VALUES (?, ?)", (AUDIT_LOG_ID_KEY, log_id))
            self._db.executemany(f"INSERT INTO audit_log ({_AUDIT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                 [_entry_values(e) for e in entries])
        return True

    def audit_discard(self) -> int:
        with transaction(self._db):
            (n,) = self._db.execute("SELECT count(*) FROM audit_log").fetchone()
            self._db.execute("DELETE FROM audit_log")
            self._db.execute("DELETE FROM security_state WHERE key=?", (AUDIT_LOG_ID_KEY,))
        return int(n)

    def audit_entries(self, since: float | None = None, limit: int | None = None,
                      after_seq: int = 0) -> list[AuditEntry]:
        sql = f"SELECT {_AUDIT_COLS} FROM audit_log WHERE seq > ?"
        args: list[object] = [after_seq]
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT ?) AS newest ORDER BY seq"
            args.append(limit)
        else:
            sql += " ORDER BY seq"
        return [_entry(r) for r in self._db.execute(sql, args)]

    def audit_first(self, action: str, outcome: str) -> AuditEntry | None:
        row = self._db.execute(f"SELECT {_AUDIT_COLS} FROM audit_log WHERE action=? AND outcome=? ORDER BY seq LIMIT 1",
                               (action, outcome)).fetchone()
        return _entry(row) if row else None

    def audit_last(self) -> AuditEntry | None:
        row = self._db.execute(f"SELECT {_AUDIT_COLS} FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        return _entry(row) if row else None

    def audit_entry(self, seq: int) -> AuditEntry | None:
        row = self._db.execute(f"SELECT {_AUDIT_COLS} FROM audit_log WHERE seq=?", (seq,)).fetchone()
        return _entry(row) if row else None

    # -- operators --------------------------------------------------------------------------------

    def operator_rows(self) -> list[OperatorRow]:
        return [OperatorRow(*r) for r in self._db.execute(f"SELECT {_OPERATOR_COLS} FROM operators ORDER BY name")]

    def operator_row(self, name: str) -> OperatorRow | None:
        row = self._db.execute(f"SELECT {_OPERATOR_COLS} FROM operators WHERE name=?", (name,)).fetchone()
        return OperatorRow(*row) if row else None

    def operator_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM operators").fetchone()[0])

    @contextmanager
    def operator_update(self, name: str) -> Iterator[_OperatorSlot]:
        with transaction(self._db):
            yield _OperatorSlot(self._db, name, self.operator_row(name))

    def insert_operators_if_empty(self, rows: Sequence[OperatorRow]) -> bool:
        with transaction(self._db):
            if self.operator_count():
                return False
            self._db.executemany(f"INSERT OR REPLACE INTO operators ({_OPERATOR_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                                 [r.values() for r in rows])
        return True

    def delete_operators(self) -> None:
        self._db.execute("DELETE FROM operators")
