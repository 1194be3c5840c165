"""`backstop catalog migrate --to postgresql://...`: move an SQLite catalog into PostgreSQL for a fleet.

Every table is copied as it is (ids, the audit chain, sealed operator
secrets, drill reports with their MACs) in one PostgreSQL transaction: the
destination ends up with all of it or with nothing. The SQLite file is left
as it was, so going back is editing ``catalog.url`` back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.catalog.sqlite import SqliteCatalog
from core.catalog.sqlite_schema import TABLES
from core.errors import ConfigError


@dataclass
class MigrateResult:
    """What was copied where."""

    url: str
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def migrate_catalog(source: SqliteCatalog, url: str) -> MigrateResult:
    """Copy every row of ``source`` into the (empty) PostgreSQL catalog at ``url``."""
    from psycopg import sql

    from core.catalog.postgres import PostgresCatalog, is_postgres_url, redacted

    if not is_postgres_url(url):
        raise ConfigError(f"--to {url!r}: expected postgresql://user@host:port/dbname")
    t0 = time.monotonic()
    dest = PostgresCatalog(url)
    result = MigrateResult(redacted(url))
    try:
        conn = dest.connection.raw  # type: ignore[attr-defined]
        busy = [t for t in TABLES if conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
            sql.Identifier(t))).fetchone()[0]]
        if busy:
            raise ConfigError(f"the catalog at {redacted(url)} already holds rows ({', '.join(busy)}): migrate into"
                              " an empty database, or point catalog.url at it if it is already the fleet's catalog")
        src = source.connection
        with conn.transaction():
            for table in TABLES:
                cols = [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]
                # snapshots keep their rowids: the console's listing order breaks ties by it.
                select = (["rowid"] if table == "snapshots" else []) + cols
                names = sql.SQL(", ").join(sql.Identifier(c) for c in select)
                copy = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), names)
                n = 0
                with conn.cursor() as cur, cur.copy(copy) as out:
                    rows = src.execute(f'SELECT {", ".join(select)} FROM "{table}" ORDER BY rowid')
                    while batch := rows.fetchmany(5000):
                        for row in batch:
                            out.write_row(row)
                        n += len(batch)
                result.rows[table] = n
            # Identity columns continue after the copied ids.
            for table, column in conn.execute(
                    "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema ="
                    " current_schema() AND is_identity = 'YES'").fetchall():
                conn.execute(sql.SQL("SELECT setval(pg_get_serial_sequence({}, {}), coalesce(max({}), 0) + 1, false)"
                                     " FROM {}").format(sql.Literal(table), sql.Literal(column),
                                                        sql.Identifier(column), sql.Identifier(table)))
        for table, n in result.rows.items():
            got = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
            if got != n:
                raise ConfigError(f"catalog migrate: {table} has {got} rows in {redacted(url)}, {n} were copied")
    finally:
        dest.close()
    result.seconds = time.monotonic() - t0
    return result
