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
    """The statements of ``defn`` with the ``DATABASE <source>`` each names turned into ``DATABASE <target>``.

    Only the first occurrence per statement is the object's name; a comment's
    text may mention the database too and is kept as written.
    """
    pattern = re.compile(r"\bDATABASE " + re.escape(fmt_id(source)) + r"(?=[\s;])")
    return [pattern.sub(lambda _: "DATABASE " + fmt_id(target), s, count=1) for s in split_statements(defn)]


# A string literal ('', E'' with backslash escapes), a quoted identifier, a dollar-quoted string,
# a line comment: the places where a semicolon ends nothing.
_QUOTED = re.compile(
    r"""[Ee]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'"""  # string literals
    r'''|"(?:[^"]|"")*"'''  # a quoted identifier
    r"""|(\$[A-Za-z_0-9]*\$)[\s\S]*?\1|--[^\n]*""")  # a dollar quote, a line comment


def split_statements(text: str) -> list[str]:
    """``text``'s SQL statements, each ending in ``;``, split where a semicolon ends one."""
    out: list[str] = []
    start = pos = 0
    while pos < len(text):
        quoted = _QUOTED.match(text, pos)
        if quoted is not None and quoted.end() > pos:
            pos = quoted.end()
        elif text[pos] == ";":
            out.append(text[start:pos])
            start = pos = pos + 1
        else:
            pos += 1
    out.append(text[start:])
    return [s.strip() + ";" for s in out if re.sub(r"--[^\n]*", "", s).strip()]


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
