"""Table restore from an awkward schema (tests/fixtures/awkward.py), against real PostgreSQL, through the CLI.

One snapshot serves the whole module. Every table of the schema is restored
on its own into a new database, which must then hold that table as it was:
its rows, row-level security and policies, indexes, triggers, defaults
(each one still works, and sequences continue past the rows), constraints,
comments, grants and, for a partitioned table, every partition with its
rows; a partition comes back attached to its parent, which brings what the
partition inherits from it. Foreign keys to tables not restored are left
out and listed. Then patterns, schemas, exactly quoted names, and a refused
unknown name.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from core.postgres.cluster import LocalCluster
from core.postgres.fingerprint import fingerprint
from core.postgres.names import Relation, show_relation
from psycopg import sql

from tests.fixtures.awkward import (
    FOREIGN_KEYS,
    PARTITIONS,
    TABLES,
    Roles,
    awkward_sql,
    drop_databases,
    drop_roles,
    make_roles,
)
from tests.fixtures.backstop import Setup, local_target, write_setup


@dataclass(frozen=True)
class Source:
    """The awkward database, its one snapshot and what it held."""

    name: str
    dsn: str
    setup: Setup
    roles: Roles
    fp: dict[str, Any]


@pytest.fixture(scope="module")
def source(pg_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    roles = make_roles(pg_cluster.dsn())
    name = f"awt_{uuid.uuid4().hex[:8]}"
    try:
        pg_cluster.create_database(name)
        dsn = pg_cluster.dsn(name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(awkward_sql(roles))
        base = tmp_path_factory.mktemp("table-restore")
        setup = write_setup(base, [local_target(base / "repo")], [{"name": "awk", "dsn": dsn}])
        setup.cli("init", check=True)
        setup.cli("backup", "--db", "awk", check=True)
        yield Source(name, dsn, setup, roles, asyncio.run(fingerprint(dsn)))
    finally:
        drop_databases(pg_cluster.dsn(), name)
        drop_roles(pg_cluster.dsn(), roles)


def _restore(src: Source, into: str, *scope: str) -> dict[str, Any]:
    out = src.setup.cli("restore", "--db", "awk", "--into", into, "--json", *scope)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _key(rel: Relation) -> str:
    return f"{rel[0]}.{rel[1]}"  # how the fingerprint names a table


def _rows(dsn: str, query: str | sql.Composable, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET search_path = pg_catalog")  # definitions print fully qualified
        return conn.execute(query, params).fetchall()


def _tables(dsn: str) -> set[Relation]:
    """Every table and partitioned table of the database."""
    return {(s, t) for s, t in _rows(dsn, """
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')""")}


def _sorted(rows: list[tuple[Any, ...]]) -> list[tuple[str, ...]]:
    return sorted(tuple(str(v) for v in row) for row in rows)


def _shape(dsn: str, rel: Relation, skip_fks_to: frozenset[Relation] = frozenset()) -> dict[str, Any]:
    """What a table restore must bring back of ``rel``, by name (never oids); foreign keys
    referring to ``skip_fks_to`` are left out of the comparison (a restore leaves them out)."""
    oid = sql.SQL("{}::regclass").format(sql.Literal(_quoted(rel)))
    q = _rows
    shape: dict[str, Any] = {
        "rls": q(dsn, sql.SQL("SELECT relrowsecurity, relforcerowsecurity, relkind, pg_get_partkeydef(oid), "
                              "pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = {}").format(oid)),
        "policies": _sorted(q(dsn, "SELECT policyname, permissive, roles::text, cmd, qual, with_check "
                                   "FROM pg_policies WHERE schemaname = %s AND tablename = %s", rel)),
        "indexes": _sorted(q(dsn, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s "
                                  "AND tablename = %s", rel)),
        "triggers": _sorted(q(dsn, sql.SQL("SELECT tgname, pg_get_triggerdef(oid), tgenabled FROM pg_trigger "
                                           "WHERE tgrelid = {} AND NOT tgisinternal").format(oid))),
        "columns": _sorted(q(dsn, sql.SQL(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid), "
            "a.attidentity, a.attgenerated, array(SELECT x::text FROM unnest(a.attacl) x ORDER BY 1) "
            "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = {} AND a.attnum > 0 AND NOT a.attisdropped").format(oid))),
        "constraints": _sorted([r[:3] for r in q(dsn, sql.SQL(
            "SELECT k.conname, k.contype, pg_get_constraintdef(k.oid), n.nspname, c.relname FROM pg_constraint k "
            "LEFT JOIN pg_class c ON c.oid = k.confrelid LEFT JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE k.conrelid = {}").format(oid)) if r[1] != "f" or (r[3], r[4]) not in skip_fks_to]),
        "grants": _sorted(q(dsn, sql.SQL("SELECT x::text FROM pg_class c, unnest(c.relacl) x "
                                         "WHERE c.oid = {}").format(oid))),
        # Comments on the table, its columns, indexes, constraints, triggers and policies.
        "comments": _sorted(q(dsn, sql.SQL("""
            SELECT o.type, o.identity, d.description
            FROM pg_description d, pg_identify_object(d.classoid, d.objoid, d.objsubid) o
            WHERE (d.classoid = 'pg_class'::regclass AND d.objoid = {t})
               OR (d.classoid = 'pg_class'::regclass AND d.objoid IN (SELECT indexrelid FROM pg_index
                                                                     WHERE indrelid = {t}))
               OR (d.classoid = 'pg_constraint'::regclass AND d.objoid IN (SELECT oid FROM pg_constraint
                                                                          WHERE conrelid = {t}))
               OR (d.classoid = 'pg_trigger'::regclass AND d.objoid IN (SELECT oid FROM pg_trigger
                                                                       WHERE tgrelid = {t}))
               OR (d.classoid = 'pg_policy'::regclass AND d.objoid IN (SELECT oid FROM pg_policy
                                                                      WHERE polrelid = {t}))""").format(t=oid))),
        "partitions": _sorted(q(dsn, sql.SQL("SELECT inhrelid::regclass::text FROM pg_inherits "
                                             "WHERE inhparent = {}").format(oid))),
    }
    return shape


def _quoted(rel: Relation) -> str:
    """``"schema"."table"``: text for ::regclass and pg_get_serial_sequence."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in rel)


def _defaults_still_work(dsn: str, rel: Relation) -> None:
    """Each default of ``rel`` evaluates in the restored database (its functions and sequences are
    there); one drawn from a sequence lies beyond every value the column already holds."""
    table = sql.Identifier(*rel)
    cols = _rows(dsn, sql.SQL("""
        SELECT a.attname, pg_get_expr(d.adbin, d.adrelid), a.attidentity <> '',
               pg_get_serial_sequence({lit}, a.attname) IS NOT NULL OR pg_get_expr(d.adbin, d.adrelid) ~ 'nextval'
               OR pg_get_expr(d.adbin, d.adrelid) ~ 'next_'
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = {lit}::regclass AND a.attnum > 0 AND NOT a.attisdropped
          AND (d.adbin IS NOT NULL OR a.attidentity <> '')""").format(
        lit=sql.Literal(_quoted(rel))))
    for column, expr, identity, sequenced in cols:
        if identity:
            seq = _rows(dsn, "SELECT pg_get_serial_sequence(%s, %s)", (_quoted(rel), column))[0][0]
            value = _rows(dsn, "SELECT nextval(%s::regclass)", (seq,))[0][0]
        else:
            value = _rows(dsn, "SELECT " + expr)[0][0]  # type: ignore[operator]  # the server's own text
        if sequenced:
            held = [r[0] for r in _rows(dsn, sql.SQL("SELECT {} FROM {}").format(sql.Identifier(column), table))]
            assert value not in held, (rel, column, value)
            if isinstance(value, int):
                assert all(value > v for v in held if v is not None), (rel, column, value)


def _expected_left_out(restored: set[Relation], homes: set[Relation]) -> list[str]:
    """Constraint names of foreign keys defined on ``homes`` whose referenced table is not restored."""
    return sorted(con for table, con, ref in FOREIGN_KEYS if table in homes and ref not in restored)


def _parents(rel: Relation) -> set[Relation]:
    return {parent for parent, parts in PARTITIONS.items() if rel in parts}


@pytest.mark.parametrize("table", TABLES, ids=[_key(t) for t in TABLES])
async def test_each_table_restores_with_everything_it_has(table: Relation, source: Source,
                                                         pg_cluster: LocalCluster) -> None:
    into = f"{source.name}_{TABLES.index(table)}"
    res = _restore(source, into, "--table", show_relation(table))
    dsn = pg_cluster.dsn(into)
    loaded = {table, *PARTITIONS.get(table, ())}
    parents = _parents(table)  # a partition comes attached to its parent (empty but for it)
    assert _tables(dsn) == loaded | parents
    assert sorted(res["tables"]) == sorted(show_relation(t) for t in loaded)
    # Foreign keys to tables not restored, and only those, are left out and listed.
    left_out = _expected_left_out(loaded, {table} | parents | loaded)
    assert sorted(item.rsplit(" ", 1)[-1] for item in res["left_out"]) == left_out, res["left_out"]

    restored = await fingerprint(dsn)
    for t in loaded - set(PARTITIONS):  # a partitioned table holds no rows of its own: its partitions do
        assert restored["tables"][_key(t)] == source.fp["tables"][_key(t)], t
        assert restored["tables"][_key(t)]["rows"] > 0, t
    # Every sequence that came back is where it was: nextval continues from the snapshot's value.
    for seq, state in restored["sequences"].items():
        assert state == source.fp["sequences"][seq], seq
    not_restored = frozenset({ref for _, _, ref in FOREIGN_KEYS} - loaded)
    for t in loaded:
        assert _shape(dsn, t, not_restored) == _shape(source.dsn, t, not_restored), t
    for t in parents:  # the parent as it was, with the one partition restored
        got, want = _shape(dsn, t, not_restored), _shape(source.dsn, t, not_restored)
        assert got.pop("partitions") == [(_key(table),)]
        want.pop("partitions")
        assert got == want, t
    for t in loaded:
        _defaults_still_work(dsn, t)
    # Nothing but what the tables need: no view over them, no function of another table's rows.
    assert not _rows(dsn, "SELECT 1 FROM pg_class WHERE relkind IN ('v', 'm') AND relnamespace <> ALL("
                          "ARRAY['pg_catalog'::regnamespace, 'information_schema'::regnamespace])")
    assert not _rows(dsn, "SELECT 1 FROM pg_proc WHERE proname IN ('claim_label', 'account_label')")
    pg_cluster.drop_database(into)


async def test_pattern_brings_tables_and_the_keys_between_them(source: Source, pg_cluster: LocalCluster) -> None:
    into = f"{source.name}_pat"
    res = _restore(source, into, "--pattern", "ledger.acc*", "--pattern", "ledger.cl?ims")
    dsn = pg_cluster.dsn(into)
    both = {("ledger", "accounts"), ("ledger", "claims")}
    assert _tables(dsn) == both and sorted(res["tables"]) == ["ledger.accounts", "ledger.claims"]
    assert res["left_out"] == []  # accounts -> claims and claims -> accounts both came back
    fks = _rows(dsn, "SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f' ORDER BY 1")
    assert fks == [("accounts_main_claim_fk", True), ("claims_account_id_fkey", True)]
    for t in both:
        assert _shape(dsn, t) == _shape(source.dsn, t), t
    restored = await fingerprint(dsn)
    assert {k: restored["tables"][k] for k in ("ledger.accounts", "ledger.claims")} == {
        k: source.fp["tables"][k] for k in ("ledger.accounts", "ledger.claims")}

    into = f"{source.name}_pat2"
    res = _restore(source, into, "--pattern", "ledger.entr*")
    entries = {("ledger", "entries"), *PARTITIONS[("ledger", "entries")]}
    assert _tables(pg_cluster.dsn(into)) == entries
    assert [i.rsplit(" ", 1)[-1] for i in res["left_out"]] == ["entries_claim_id_fkey"]


async def test_schema_restore_brings_every_table_of_it(source: Source, pg_cluster: LocalCluster) -> None:
    into = f"{source.name}_sch"
    res = _restore(source, into, "--schema", "ledger")
    dsn = pg_cluster.dsn(into)
    ledger = {t for t in TABLES if t[0] == "ledger"}
    assert _tables(dsn) == ledger
    assert res["left_out"] == []
    restored = await fingerprint(dsn)
    for t in ledger:
        if t not in PARTITIONS:
            assert restored["tables"][_key(t)] == source.fp["tables"][_key(t)], t
        assert _shape(dsn, t) == _shape(source.dsn, t), t
    # Every foreign key between them came back, validated against the rows.
    fks = _rows(dsn, "SELECT count(*) FILTER (WHERE convalidated), count(*) FROM pg_constraint WHERE contype = 'f' "
                     "AND conparentid = 0")
    assert fks == [(len(FOREIGN_KEYS), len(FOREIGN_KEYS))]


@pytest.mark.parametrize(("typed", "table"), [
    ("public.x", ("public", "x")),
    ("PUBLIC.X", ("public", "x")),  # unquoted names fold to lower case, as in PostgreSQL
    ('public."x y"', ("public", "x y")),
    ('public."Tab le""q"', ("public", 'Tab le"q')),
    ('"public"."dotted.name"', ("public", "dotted.name")),
])
def test_table_names_match_exactly_as_quoted(typed: str, table: Relation, source: Source,
                                             pg_cluster: LocalCluster) -> None:
    into = f"{source.name}_q{uuid.uuid4().hex[:6]}"
    res = _restore(source, into, "--table", typed)
    assert _tables(pg_cluster.dsn(into)) == {table}
    assert res["tables"] == [show_relation(table)]
    pg_cluster.drop_database(into)


@pytest.mark.parametrize("scope", [
    ["--table", "public.nope"],
    ["--table", "public.X Y"],  # "x y" exists only quoted
    ["--table", 'public."x'],
    ["--table", "ledger.claims", "--table", "ledger.claim"],
    ["--pattern", "ledger.zz*"],
    ["--schema", "Ledger"],
])
def test_unknown_table_is_refused_and_nothing_created(scope: list[str], source: Source,
                                                      pg_cluster: LocalCluster) -> None:
    into = f"{source.name}_no{uuid.uuid4().hex[:6]}"
    out = source.setup.cli("restore", "--db", "awk", "--into", into, *scope)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("backstop: "), out.stderr
    assert _rows(pg_cluster.dsn(), "SELECT 1 FROM pg_database WHERE datname = %s", (into,)) == []


def test_fixture_tables_are_the_database_tables(source: Source) -> None:
    """The fixture's list of tables is complete, so every table really is tried above."""
    assert _tables(source.dsn) == set(TABLES)
