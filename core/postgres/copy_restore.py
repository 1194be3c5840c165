"""Loading a table's rows from its stored COPY stream (format 2 snapshots): `COPY ... FROM STDIN`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
from psycopg import sql

from core.errors import PostgresError
from core.postgres.logical import connect
from core.postgres.snapshot import column_list, copy_settings
from core.postgres.tools import first_line


async def copy_in(dsn: str, relation: list[str], columns: list[str], encoding: str,
                  stream: AsyncIterator[bytes]) -> int:
    """Feed ``stream`` (a table's COPY text) into ``relation`` of the database at ``dsn``; returns the bytes fed."""
    schema, name = relation
    stmt = sql.SQL("COPY {}{} FROM STDIN").format(sql.Identifier(schema, name), column_list(columns))
    fed = 0
    conn = await connect(dsn, "the database being restored")
    try:
        for setting in copy_settings(encoding):
            await conn.execute(setting)
        async with conn.cursor().copy(stmt) as copy:
            async for piece in stream:
                await copy.write(piece)
                fed += len(piece)
    except psycopg.Error as exc:
        raise PostgresError(f"loading the rows of {schema}.{name} failed: {first_line(exc)}") from None
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()  # stops the stream's read-ahead from the repository
        await conn.close()
    return fed
