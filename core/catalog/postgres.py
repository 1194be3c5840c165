"""The catalog on PostgreSQL (``catalog.url: postgresql://...``): shared by the agents and consoles of a fleet.

The behaviour is the SQLite catalog's, by construction: the same classes
run the same SQL over :class:`core.catalog.pg_connection.PgConnection`,
which rewrites it for PostgreSQL. What differs is here: the schema
(:mod:`core.catalog.pg_schema`, versioned migrations run on start), the
read-only connections of the console, and the change feed, which is
``LISTEN`` on a channel every table's trigger notifies (no polling of the
server: a poll only looks at what the socket already received).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from core.catalog import pg_schema
from core.catalog.pg_connection import PgConnection
from core.catalog.sqlite import SqliteCatalog
from core.catalog.sqlite_queries import SqliteQueries
from core.errors import ConfigError
from core.postgres.tools import first_line
from core.records import AuditTable

_URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) catalog URL."""
    return url.startswith(_URL_SCHEMES)


def redacted(url: str) -> str:
    """The URL with any password replaced, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _connect(url: str, *, read_only: bool = False) -> PgConnection:
    import sqlite3

    try:
        return PgConnection(url, read_only=read_only, keys=pg_schema.conflict_keys())
    except sqlite3.Error as exc:
        raise ConfigError(f"catalog.url: cannot reach the catalog at {redacted(url)}: {exc}; check that the server"
                          " runs and that this host's role may log in (pg_hba.conf, password in ~/.pgpass or"
                          " PGPASSWORD)") from None


class PgChangeFeed:
    """Commits to the catalog by anyone, announced by the tables' triggers on a channel this feed listens to."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._pending = False
        self._lock = threading.Lock()
        # close() from another thread ends a wait() at once through this pair (the console quitting).
        self._wake_r, self._wake_w = socket.socketpair()

    def _seen(self, _notify: psycopg.Notify) -> None:
        self._pending = True

    def poll(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                                             application_name="backstop-feed")
                self._conn.add_notify_handler(self._seen)
                self._conn.execute(f"LISTEN {pg_schema.CHANNEL}")
                self._pending = False
                return False  # listening from now on
            # One round trip: the server sends every notification of a commit made before it ahead of the
            # reply, so a change committed before this poll is always seen by it.
            self._conn.execute("SELECT 1")
            changed, self._pending = self._pending, False
            return changed

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a change (True when one came); the console's live view."""
        if self._conn is None and not self.poll():  # the first call starts listening
            return False
        with self._lock:
            if self._closed or self._conn is None:
                return False
            deadline = time.monotonic() + timeout
            while not self._pending:
                left = deadline - time.monotonic()
                # The socket turns readable when the server sends a notification; the round trip hands it over.
                wake = self._wake_r.fileno()
                ready: list[int] = select.select([self._conn.fileno(), wake], [], [], left)[0] if left > 0 else []
                if not ready or wake in ready:
                    break
                self._conn.execute("SELECT 1")
            changed, self._pending = self._pending, False
            return changed

    def close(self) -> None:
        self._closed = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # closed twice: the pair is gone already
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._wake_r.close()
            self._wake_w.close()


class PostgresQueries(SqliteQueries):
    """Read-only access to a PostgreSQL catalog, one connection per thread."""

    def __init__(self, url: str) -> None:
        super().__init__(path=_placeholder_path(url))
        self.url = url

    def _db(self) -> Any:  # a PgConnection, used as the sqlite3 connection of the shared queries
        conn: Any = self._local.conn
        if conn is None:
            conn = _connect(self.url, read_only=True)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def changes(self) -> PgChangeFeed:  # type: ignore[override]
        return PgChangeFeed(self.url)

    def data_version(self) -> int:
        """SQLite's commit counter has no PostgreSQL twin: the change feed (LISTEN) is the way to see commits."""
        raise NotImplementedError("data_version is SQLite's; use changes() on PostgreSQL")

    def has_table(self, name: str) -> bool:
        return pg_schema.has_table(self._db().raw, name)

    def audit_table(self) -> AuditTable | None:
        if not self.has_table("audit_log"):
            return None
        cols = tuple(r[0] for r in self._db().raw.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = 'audit_log' AND column_name <> 'rowid' ORDER BY ordinal_position"))
        return AuditTable("audit_log", cols)


def _placeholder_path(url: str) -> Any:
    from pathlib import Path

    # SqliteQueries keeps a path for messages and its SQLite feed; ours is the URL, never opened as a file.
    return Path(redacted(url).replace("/", "_"))


class PostgresCatalog(SqliteCatalog):
    """The catalog in a PostgreSQL database (``catalog.url: postgresql://user@host:port/dbname``)."""

    def __init__(self, url: str, *, migrate_upto: int | None = None) -> None:
        self.url = url
        self.path = _placeholder_path(url)
        self._db = _connect(url)  # type: ignore[assignment]
        try:
            self.schema_version = pg_schema.migrate(self._db.raw, upto=migrate_upto)  # type: ignore[attr-defined]
        except psycopg.Error as exc:
            raise ConfigError(f"catalog.url: cannot prepare the catalog's schema at {redacted(url)}: "
                              f"{first_line(exc)}") from None
        self._last_progress_row: dict[str, float] = {}

    def open_queries(self) -> PostgresQueries:
        return PostgresQueries(self.url)

    def changes(self) -> PgChangeFeed:  # type: ignore[override]
        return PgChangeFeed(self.url)

    def schema_problems(self) -> list[str]:
        return pg_schema.schema_problems(self._db.raw)  # type: ignore[attr-defined]

    def repair_schema(self) -> list[str]:
        return pg_schema.repair_schema(self._db.raw)  # type: ignore[attr-defined]
