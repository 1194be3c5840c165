"""Put a freshly restored database in place of an existing one, keeping the old one.

Renaming a database needs it to have no sessions, and applications
reconnect quickly, so the live database first stops accepting connections,
its sessions are ended, and then both renames run in one transaction: either
the old database is aside and the new one in place, or nothing changed.
The old database is kept (renamed, connections allowed again) for the
operator to inspect or drop.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
from psycopg import sql

from core.errors import PostgresError
from core.postgres.logical import connect, with_dbname
from core.postgres.tools import first_line

_TERMINATE = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
              " WHERE datname = %s AND pid <> pg_backend_pid()")


async def swap_in(dsn: str, live: str, new: str, aside: str, timeout_s: float = 30.0) -> None:
    """Rename ``live`` to ``aside`` and ``new`` to ``live``, atomically."""
    ident = sql.Identifier
    async with await connect(with_dbname(dsn, "postgres"), "the server") as conn:
        try:
            await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident(live)))
        except psycopg.Error as exc:
            raise PostgresError(f"cannot close database {live} to new sessions: {first_line(exc)}; "
                                "the restoring role must own it or be a superuser") from None
        swapped = False
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                await conn.execute(_TERMINATE, (live,))
                try:
                    async with conn.transaction():
                        await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(live), ident(aside)))
                        await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(new), ident(live)))
                    swapped = True
                    break
                except psycopg.errors.ObjectInUse as exc:
                    if time.monotonic() > deadline:
                        raise PostgresError(f"database {live} still has sessions after {timeout_s:.0f}s: "
                                            f"{first_line(exc)}; nothing was replaced") from None
                    await asyncio.sleep(0.2)
                except psycopg.Error as exc:
                    raise PostgresError(f"cannot swap {new} in for {live}: {first_line(exc)}; "
                                        "nothing was replaced") from None
        finally:
            # Whichever name the old database has now, it accepts connections again.
            kept = aside if swapped else live
            try:
                await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(kept)))
            except psycopg.Error:
                pass  # best effort; the operator is told where the old database is
