"""A comparable digest of a database's contents and schema.

Two databases with the same fingerprint hold the same rows, sequence states,
large objects and schema objects. Everything is identified by name, never by
oid, so a database restored elsewhere compares equal to its source. Owners
are left out (a restore may run as another role); grants are kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from contextlib import AsyncExitStack
from typing import Any

import psycopg
from psycopg import sql

from core.errors import PostgresError
from core.postgres.tools import dsn_label, first_line

# Row text depends on these settings; pin them so both sides render alike.
_SESSION_SETTINGS = (
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET TimeZone = 'UTC'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
    "SET lc_monetary = 'C'",
    "SET search_path = pg_catalog",
)

_USER_NS = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"


def _acl(column: str) -> str:
    """An ACL as sorted text: its order depends on the order grants were made in."""
    return (
        f"CASE WHEN {column} IS NOT NULL THEN "
        f"ARRAY(SELECT a::text FROM unnest({column}) a ORDER BY a::text COLLATE \"C\") END"
    )


_TABLES = f"""
SELECT n.nspname, c.relname, pg_relation_size(c.oid), c.relkind = 'm' AND NOT c.relispopulated
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't' AND {_USER_NS}
"""

_SEQUENCES = f"""
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND c.relpersistence <> 't' AND {_USER_NS}
"""

# One query per kind of schema object; rows are sorted in Python, so the
# queries need no ORDER BY. ACL arrays are sorted because their order
# depends on the order the grants were made in.
_SCHEMA_QUERIES: dict[str, str] = {
    "schemas": f"""
        SELECT n.nspname, {_acl('n.nspacl')} FROM pg_namespace n WHERE {_USER_NS}""",
    "relations": f"""
        SELECT n.nspname, c.relname, c.relkind, c.relpersistence, c.relrowsecurity,
               c.reloptions, {_acl('c.relacl')}, pg_get_partkeydef(c.oid),
               pg_get_expr(c.relpartbound, c.oid), c.relkind = 'm' AND NOT c.relispopulated
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c', 'S') AND {_USER_NS}""",
    "columns": f"""
        SELECT n.nspname, c.relname,
               row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum), a.attname,
               format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               {_acl('a.attacl')}, co.collname
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE a.attnum > 0 AND NOT a.attisdropped
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c') AND {_USER_NS}""",
    "constraints": f"""
        SELECT n.nspname, coalesce(c.relname, t.typname), k.conname, k.contype,
               pg_get_constraintdef(k.oid), k.convalidated
        FROM pg_constraint k
        JOIN pg_namespace n ON n.oid = k.connamespace
        LEFT JOIN pg_class c ON c.oid = k.conrelid
        LEFT JOIN pg_type t ON t.oid = k.contypid
        WHERE k.contype <> 'n' AND {_USER_NS}""",
    "indexes": f"""
        SELECT n.nspname, c.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NS}""",
    "types": f"""
        SELECT n.nspname, t.typname, t.typtype,
               CASE t.typtype WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
               t.typnotnull, t.typdefault,
               (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                FROM pg_enum e WHERE e.enumtypid = t.oid),
               {_acl('t.typacl')}
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE {_USER_NS}
          AND (t.typtype IN ('e', 'd', 'r', 'm')
               OR (t.typtype = 'b' AND t.typcategory <> 'A')
               -- composite types made by CREATE TYPE, not the row types of tables
               OR (t.typtype = 'c' AND EXISTS (
                   SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c')))""",
    "views": f"""
        SELECT n.nspname, c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND {_USER_NS}""",
    "functions": f"""
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prokind,
               CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END,
               {_acl('p.proacl')}
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {_USER_NS} AND NOT EXISTS (
            SELECT 1 FROM pg_depend d
            WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')""",
    "triggers": f"""
        SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND {_USER_NS}""",
    "policies": f"""
        SELECT n.nspname, c.relname, p.polname, p.polcmd, p.polpermissive,
               ARRAY(SELECT CASE r WHEN 0 THEN 'public' ELSE r::regrole::text END
                     FROM unnest(p.polroles) r),
               pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
        FROM pg_policy p
        JOIN pg_class c ON c.oid = p.polrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NS}""",
    "sequence_options": """
        SELECT schemaname, sequencename, data_type::text, start_value, min_value, max_value,
               increment_by, cycle, cache_size
        FROM pg_sequences WHERE schemaname !~ '^pg_' AND schemaname <> 'information_schema'""",
    # Comments on user objects (oids below 16384 belong to initdb). Large
    # objects are left out: their identity is their oid.
    "comments": """
        SELECT o.type, o.identity, d.description
        FROM pg_description d, pg_identify_object(d.classoid, d.objoid, d.objsubid) o
        WHERE d.objoid >= 16384 AND d.classoid <> 'pg_largeobject'::regclass""",
    "extensions": "SELECT extname FROM pg_extension",
    "default_privileges": f"""
        SELECT pg_get_userbyid(d.defaclrole), coalesce(n.nspname, ''), d.defaclobjtype,
               {_acl('d.defaclacl')}
        FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace""",
}

_LARGE_OBJECTS = sql.Composed([sql.SQL(
    "COPY (SELECT encode(sha256(lo_get(m.oid)), 'hex') FROM pg_largeobject_metadata m ORDER BY 1) TO STDOUT")])


def _normalise(value: Any) -> Any:
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, (str, int, bool, float)) or value is None:
        return value
    return str(value)


def _digest_rows(rows: list[tuple[Any, ...]]) -> str:
    lines = sorted(json.dumps([_normalise(v) for v in row], ensure_ascii=False) for row in rows)
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


async def _copy_digest(conn: psycopg.AsyncConnection[Any], query: sql.Composed) -> tuple[int, str]:
    """(line count, sha256) of a COPY ... TO STDOUT stream, read chunk by chunk."""
    h = hashlib.sha256()
    lines = 0
    async with conn.cursor() as cur:
        async with cur.copy(query) as copy:
            async for data in copy:
                h.update(data)
                # COPY text format escapes newlines inside values, so raw
                # newlines count rows exactly.
                lines += bytes(data).count(b"\n")
    return lines, h.hexdigest()


async def _connect(dsn: str, snapshot: str | None = None) -> psycopg.AsyncConnection[Any]:
    """A read-only repeatable-read session, optionally on an exported snapshot."""
    conn = await psycopg.AsyncConnection.connect(dsn)
    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
    await conn.set_read_only(True)
    if snapshot is not None:
        # Must be the transaction's first statement; psycopg sends BEGIN first.
        await conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    for setting in _SESSION_SETTINGS:
        await conn.execute(setting)
    return conn


def _table_query(schema: str, name: str) -> sql.Composed:
    # Sorting by the row text in the C collation makes the order independent
    # of physical layout and of the database's collation. ROW(r.*) rather
    # than a bare alias, which a column of that name would shadow.
    return sql.SQL(
        'COPY (SELECT x FROM (SELECT ROW(r.*)::text AS x FROM ONLY {} r) s ORDER BY x COLLATE "C")'
        " TO STDOUT"
    ).format(sql.Identifier(schema, name))


async def _hash_tables(
    conn: psycopg.AsyncConnection[Any], todo: list[tuple[str, str]], out: dict[str, Any]
) -> None:
    """Take tables from ``todo`` until it is empty (shared by all workers)."""
    while todo:
        schema, name = todo.pop(0)
        rows, digest = await _copy_digest(conn, _table_query(schema, name))
        out[f"{schema}.{name}"] = {"rows": rows, "sha256": digest}


async def _other_parts(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    sequences: dict[str, Any] = {}
    cur = await conn.execute(_SEQUENCES)
    for schema, name in sorted(await cur.fetchall()):
        state = await conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
        )
        last_value, is_called = await state.fetchone() or (None, None)
        sequences[f"{schema}.{name}"] = {"last_value": last_value, "is_called": is_called}

    count, digest = await _copy_digest(conn, _LARGE_OBJECTS)

    schema_digests: dict[str, str] = {}
    for kind, query in _SCHEMA_QUERIES.items():
        cur = await conn.execute(query)
        schema_digests[kind] = _digest_rows(await cur.fetchall())
    return {
        "sequences": sequences,
        "large_objects": {"count": count, "sha256": digest},
        "schema": schema_digests,
    }


async def _fingerprint(dsn: str, jobs: int) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        main = await _connect(dsn)
        stack.push_async_callback(main.close)
        cur = await main.execute(_TABLES)
        listed = await cur.fetchall()
        tables: dict[str, Any] = {
            f"{schema}.{name}": {"rows": None, "sha256": None}
            for schema, name, _, unpopulated in listed if unpopulated
        }
        # Biggest first, so the workers finish at about the same time.
        todo = [(schema, name) for schema, name, _, unpopulated in sorted(listed, key=lambda r: -r[2])
                if not unpopulated]
        workers = []
        if jobs > 1 and len(todo) > 1:
            # Helpers import the main session's snapshot: all of them see
            # the database at the same instant.
            cur = await main.execute("SELECT pg_export_snapshot()")
            snapshot = (await cur.fetchone() or ("",))[0]
            for _ in range(min(jobs, len(todo)) - 1):
                helper = await _connect(dsn, snapshot)
                stack.push_async_callback(helper.close)
                workers.append(_hash_tables(helper, todo, tables))

        async def main_work() -> dict[str, Any]:
            parts = await _other_parts(main)
            await _hash_tables(main, todo, tables)
            return parts

        results = await asyncio.gather(main_work(), *workers)
        return {"tables": dict(sorted(tables.items())), **results[0]}


async def fingerprint(dsn: str, *, jobs: int = 2) -> dict[str, Any]:
    """Digest of the database at ``dsn``: compare two with ``==`` or :func:`diff`.

    Shape: ``{"tables": {"schema.table": {"rows", "sha256"}}, "sequences":
    {"schema.seq": {"last_value", "is_called"}}, "large_objects": {"count",
    "sha256"}, "schema": {kind: sha256}}``. Rows are streamed through COPY
    and hashed as they arrive, so table size does not matter for memory;
    ``jobs`` connections share the work on one snapshot. Needs read access
    to everything (connect as a superuser or the owner).
    """
    try:
        return await _fingerprint(dsn, max(1, jobs))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PostgresError(
            f"cannot fingerprint {dsn_label(dsn)}: {first_line(exc)}; "
            "connect as a superuser or the database owner"
        ) from None
    except psycopg.Error as exc:
        raise PostgresError(
            f"cannot fingerprint {dsn_label(dsn)}: {first_line(exc)}; "
            "check that the server is running and the database exists"
        ) from None


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted paths where two fingerprints differ, e.g. ``tables.warranty.claims``."""
    out: list[str] = []
    for section in sorted(set(a) | set(b)):
        left, right = a.get(section, {}), b.get(section, {})
        for key in sorted(set(left) | set(right)):
            if left.get(key) != right.get(key):
                out.append(f"{section}.{key}")
    return out
