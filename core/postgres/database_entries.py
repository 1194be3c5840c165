"""The database's own settings, comment, grants and owner, re-applied to a restored copy under its new name.

pg_restore applies an archive's DATABASE PROPERTIES (`ALTER DATABASE ... SET`),
database COMMENT and ACL entries only when it creates the database itself
(`--create`), which a restore into a new name cannot use; plain pg_restore
therefore loses them. They name the source database, so each statement is
rewritten for the new name before it runs.
"""

from __future__ import annotations

import re

import psycopg

from core.postgres.archive import fmt_id
from core.postgres.logical import connect, with_dbname
from core.postgres.schema_archive import SchemaArchive
from core.postgres.tools import first_line

_APPLIED = ("DATABASE PROPERTIES", "COMMENT", "ACL", "SECURITY LABEL")


def rewritten(defn: str, source: str, target: str) -> list[str]:
    """The statements of ``defn`` with every ``DATABASE <source>`` turned into ``DATABASE <target>``."""
    pattern = re.compile(r"\bDATABASE " + re.escape(fmt_id(source)) + r"(?=[\s;])")
    text = pattern.sub(lambda _: "DATABASE " + fmt_id(target), defn)
    return [s.strip() + ";" for s in text.split(";\n") if s.strip().rstrip(";")]


async def apply_database_entries(dsn: str, schema: SchemaArchive, into: str) -> list[str]:
    """Run the source database's own statements against ``into``; returns warnings for those that failed."""
    source = schema.header.dbname
    entries = schema.toc.database_entries()
    statements: list[str] = []
    owner = next((e.owner for e in entries if e.desc == "DATABASE" and e.owner), None)
    if owner:
        statements.append(f"ALTER DATABASE {fmt_id(into)} OWNER TO {fmt_id(owner)};")
    for e in entries:
        if e.desc in _APPLIED and e.defn:
            statements += rewritten(e.defn, source, into)
    warnings: list[str] = []
    if not statements:
        return warnings
    conn = await connect(with_dbname(dsn, "postgres"), "the server")
    try:
        for stmt in statements:
            try:
                await conn.execute(stmt.encode())  # statements from the archive, run as they are
            except psycopg.Error as exc:
                warnings.append(f"database setting not restored ({stmt[:80]}): {first_line(exc)}")
    finally:
        await conn.close()
    return warnings
