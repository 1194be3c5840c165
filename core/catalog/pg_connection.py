"""A PostgreSQL connection that speaks the part of sqlite3's interface the catalog uses.

The catalog's classes are written against ``sqlite3.Connection``:
``execute``/``executemany`` with ``?`` placeholders, cursors to iterate or
``fetchone``, explicit ``BEGIN IMMEDIATE``/``COMMIT``/``ROLLBACK``, and
sqlite3's exception classes. This adapter gives them the same on
PostgreSQL (statements rewritten by :mod:`core.catalog.pg_dialect`), so
both back ends run the same code and the same SQL.

Errors are raised as sqlite3's DB-API classes (``IntegrityError`` for a
broken constraint, ``OperationalError`` for a missing table or a lost
server) because that is what the shared code catches; the message is
PostgreSQL's. A connection lost outside a transaction is reopened once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.adapt import Dumper, Loader
from psycopg.pq import TransactionStatus

from core.catalog.pg_dialect import WRITE_LOCK_KEY, translate
from core.postgres.tools import first_line


class _NumericLoader(Loader):
    """numeric (sum and avg of integers) as int when whole, else float: what SQLite returns."""

    def load(self, data: Any) -> int | float:
        d = Decimal(bytes(data).decode())
        return int(d) if d == d.to_integral_value() else float(d)


class _BoolAsIntDumper(Dumper):
    """Python booleans as 0/1: the catalog's flag columns are integers, as in SQLite."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


def _map_error(exc: psycopg.Error) -> sqlite3.Error:
    message = first_line(exc)
    if isinstance(exc, psycopg.errors.IntegrityError):
        return sqlite3.IntegrityError(message)
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn
                  | psycopg.errors.UndefinedFunction | psycopg.errors.InsufficientPrivilege):
        return sqlite3.OperationalError(message)
    if isinstance(exc, psycopg.InterfaceError):
        return sqlite3.ProgrammingError(message)
    return sqlite3.DatabaseError(message)


class PgCursor:
    """The rows of one statement (a psycopg cursor seen as an sqlite3 one)."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cur.fetchone() if self._cur.description else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall() if self._cur.description else []

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        return self._cur.fetchmany(size) if self._cur.description else []

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


class PgConnection:
    """One psycopg connection in autocommit mode, used as the catalog's sqlite3 connection."""

    def __init__(self, url: str, *, read_only: bool = False,
                 keys: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self.url = url
        self.read_only = read_only
        self._keys = dict(keys or {})
        self._lock = threading.RLock()
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10, application_name="backstop")
        except psycopg.Error as exc:
            raise _map_error(exc) from None
        conn.adapters.register_loader("numeric", _NumericLoader)
        conn.adapters.register_dumper(bool, _BoolAsIntDumper)
        conn.execute("SET TIME ZONE 'UTC'")
        if self.read_only:
            conn.execute("SET default_transaction_read_only = on")
        return conn

    @property
    def raw(self) -> psycopg.Connection[Any]:
        """The psycopg connection itself (schema work, LISTEN)."""
        return self._conn

    @property
    def in_transaction(self) -> bool:
        return self._conn.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, args: Sequence[object] = ()) -> PgCursor:
        """Run one statement written for SQLite."""
        word = sql.strip().upper()
        if word == "BEGIN IMMEDIATE":
            return self._begin_immediate()
        stmt = translate(sql, self._keys)
        with self._lock:
            if self._conn.closed and not self.in_transaction:
                self._conn = self._connect()
            try:
                return PgCursor(self._conn.execute(stmt.sql.encode(), stmt.args(args)))
            except psycopg.OperationalError as exc:
                if not self._conn.closed or word.startswith(("COMMIT", "ROLLBACK")):
                    raise _map_error(exc) from None
                # The server went away between statements: reconnect once (outside a transaction only).
                self._conn = self._connect()
                try:
                    return PgCursor(self._conn.execute(stmt.sql.encode(), stmt.args(args)))
                except psycopg.Error as again:
                    raise _map_error(again) from None
            except psycopg.Error as exc:
                raise _map_error(exc) from None

    def _begin_immediate(self) -> PgCursor:
        # SQLite's BEGIN IMMEDIATE admits one writing transaction at a time, and the code relies on it
        # (the audit chain's next link, an operator's failure count): the same on PostgreSQL by a lock.
        self.execute("BEGIN")
        return self.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        """Run one statement once per row."""
        stmt = translate(sql, self._keys)
        with self._lock:
            try:
                with self._conn.cursor() as cur:
                    cur.executemany(stmt.sql.encode(), [stmt.args(r) for r in rows])
            except psycopg.Error as exc:
                raise _map_error(exc) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
