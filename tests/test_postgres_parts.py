"""The PostgreSQL parts: binary discovery, private clusters, the data generator, fingerprints."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from core.errors import PostgresError
from core.postgres import tools
from core.postgres.cluster import LocalCluster
from core.postgres.fingerprint import diff, fingerprint
from core.postgres.tools import SERVER_TOOLS, find_bin_dir, server_major, tool_major
from core.sandbox.warranty import SENTINEL, append_claims, generate

MakeDb = Callable[..., tuple[str, str]]


def _fake_bin(root: Path, major: int) -> Path:
    """A bin dir whose pg_dump only reports a version."""
    d = root / f"pg{major}" / "bin"
    d.mkdir(parents=True)
    script = d / "pg_dump"
    script.write_text(f"#!/bin/sh\necho 'pg_dump (PostgreSQL) {major}.3'\n")
    script.chmod(0o755)
    return d


def _one(dsn: str, query: str, params: tuple[object, ...] = ()) -> object:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


# -- tools -------------------------------------------------------------------


async def test_find_bin_dir_matches_the_server(pg_cluster: LocalCluster) -> None:
    major = await server_major(pg_cluster.dsn())
    picked = find_bin_dir(required_major=major)
    assert tool_major(picked) == major
    # Whatever this machine has: the first installation of the server's own major
    # wins (system packages before pgserver's bundled binaries).
    same = [d for d in tools._candidates(tools.CLIENT_TOOLS) if tool_major(d) == major]
    assert same and picked == same[0]


def test_find_bin_dir_prefers_equal_then_smallest_newer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d14, d15, d16, d17 = (_fake_bin(tmp_path, m) for m in (14, 15, 16, 17))
    monkeypatch.setattr(tools, "_system_dirs", lambda: [d17, d14, d16])
    monkeypatch.setattr(tools, "_pgserver_bin_dir", lambda: d15)
    assert find_bin_dir(15) == d15  # equal major wins even from the fallback
    assert find_bin_dir(14) == d14
    assert find_bin_dir(13) == d14  # smallest newer, not the first listed
    assert find_bin_dir() == d17  # no requirement: first system dir

    monkeypatch.setattr(tools, "_pgserver_bin_dir", lambda: None)
    assert find_bin_dir(15) == d16
    with pytest.raises(PostgresError) as err:
        find_bin_dir(18)
    assert str(err.value).startswith("no PostgreSQL client tools >= 18 found")
    assert str(err.value).endswith("install postgresql-client-18 or set bin_dir in the config")


def test_find_bin_dir_configured(tmp_path: Path) -> None:
    d14 = _fake_bin(tmp_path, 14)
    assert find_bin_dir(configured=d14) == d14
    assert find_bin_dir(13, configured=d14) == d14
    with pytest.raises(PostgresError, match="server is 15; set bin_dir"):
        find_bin_dir(15, configured=d14)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PostgresError, match="has no pg_dump"):
        find_bin_dir(configured=empty)


def test_pgserver_is_found_without_importing_it() -> None:
    code = (
        "import sys\n"
        "from core.postgres.tools import _pgserver_bin_dir\n"
        "d = _pgserver_bin_dir()\n"
        "assert d is not None and (d / 'pg_dump').exists(), d\n"
        "assert 'pgserver' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


async def test_server_major_unreachable_is_a_clear_error() -> None:
    from core.postgres.cluster import free_port

    with pytest.raises(PostgresError, match=r"cannot connect to PostgreSQL at 127\.0\.0\.1:\d+/x"):
        await server_major(f"postgresql://postgres:secret@127.0.0.1:{free_port()}/x")


# -- cluster -----------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs an unprivileged server account")
def test_cluster_runs_unprivileged_when_root(pg_cluster: LocalCluster) -> None:
    uid = pwd.getpwnam(pg_cluster.os_user).pw_uid
    assert uid != 0
    assert pg_cluster.data_dir.stat().st_uid == uid
    pid = int((pg_cluster.data_dir / "postmaster.pid").read_text().split()[0])
    assert Path(f"/proc/{pid}").stat().st_uid == uid
    assert pg_cluster.is_running()


def test_cluster_start_failure_shows_the_server_log(pg_cluster: LocalCluster) -> None:
    # Same port as the running session cluster: the postmaster cannot bind.
    # (A plain temp dir, not tmp_path: see the pg_cluster fixture.)
    with tempfile.TemporaryDirectory(prefix="backstop-test-pg-") as root:
        other = LocalCluster(Path(root) / "other", port=pg_cluster.port, bin_dir=pg_cluster.bin_dir)
        other.init(no_sync=True)
        with pytest.raises(PostgresError) as err:
            other.start(timeout=20)
        assert not other.is_running()
    message = str(err.value)
    assert "failed to start on port" in message
    assert "\n" not in message
    assert "could not" in message  # the log tail names the cause (bind/create socket)


def test_cluster_create_and_drop_database(pg_cluster: LocalCluster) -> None:
    pg_cluster.create_database("parts_scratch")
    assert _one(pg_cluster.dsn("parts_scratch"), "SELECT current_database()") == "parts_scratch"
    pg_cluster.drop_database("parts_scratch")
    pg_cluster.drop_database("parts_scratch")  # absent: not an error
    with pytest.raises(PostgresError, match="cannot create database"):
        pg_cluster.create_database("parts_scratch", template="no_such_template")


# -- generator ---------------------------------------------------------------


def test_generate_creates_every_object_kind(warranty_db: tuple[str, str]) -> None:
    _, dsn = warranty_db
    with psycopg.connect(dsn) as conn:
        def q(sql: str) -> list[tuple[object, ...]]:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]

        assert q("SELECT nspname FROM pg_namespace WHERE nspname = 'warranty'")
        assert q("SELECT enum_range(NULL::warranty.claim_status)::text") == [
            ("{submitted,approved,rejected,paid,closed}",)
        ]
        assert q("""SELECT format_type(t.typbasetype, t.typtypmod), pg_get_constraintdef(c.oid)
                    FROM pg_type t JOIN pg_constraint c ON c.contypid = t.oid
                    WHERE t.typname = 'money_amount' AND t.typtype = 'd'""") == [
            ("numeric(10,2)", "CHECK ((VALUE >= (0)::numeric))")
        ]
        tables = {r[0] for r in q("""SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                     WHERE nspname IN ('warranty', 'public') AND relkind IN ('r', 'p')""")}
        assert {"currencies", "products", "warranties", "claims", "cost_entries", "claim_events",
                "claim_attachments"} <= tables
        assert q("SELECT relkind FROM pg_class WHERE oid = 'warranty.cost_entries'::regclass") == [("p",)]
        partitions = q("SELECT count(*) FROM pg_inherits WHERE inhparent = 'warranty.cost_entries'::regclass")
        assert partitions[0][0] >= 3
        assert q("SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef "
                 "WHERE adrelid = 'warranty.claims'::regclass AND adnum = 1") == [
            ("nextval('warranty.claims_id_seq'::regclass)",)
        ]
        assert q("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                 "WHERE attrelid = 'warranty.claims'::regclass AND attname = 'currency'") == [("character(3)",)]
        last_value, is_called = q("SELECT last_value, is_called FROM warranty.invoice_number_seq")[0]
        assert is_called and last_value == 100_000 + 2000 + 7  # not the sequence's start value
        assert q("SELECT count(*) FROM pg_views WHERE viewname = 'open_claims'")[0][0] == 1
        assert q("SELECT ispopulated FROM pg_matviews WHERE matviewname = 'monthly_costs'") == [(True,)]
        plpgsql = q("""SELECT p.proname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
                       WHERE l.lanname = 'plpgsql' AND p.pronamespace = 'warranty'::regnamespace""")
        assert {"stamp_updated_at", "log_status_change"} <= {r[0] for r in plpgsql}
        triggers = q("SELECT tgname FROM pg_trigger WHERE tgrelid = 'warranty.claims'::regclass AND NOT tgisinternal")
        assert {r[0] for r in triggers} == {"claims_stamp_updated_at", "claims_log_status_change"}
        indexes = {r[0] for r in q("SELECT indexname FROM pg_indexes WHERE schemaname = 'warranty'")}
        assert {"claims_pkey", "claims_warranty_id_idx", "claims_open_reported_on_idx",
                "cost_entries_claim_id_idx", "monthly_costs_key"} <= indexes
        fkeys = q("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'warranty'::regnamespace")
        assert fkeys[0][0] >= 6
        assert q("SELECT obj_description('warranty.claims'::regclass, 'pg_class')")[0][0]
        assert q("SELECT col_description('warranty.claims'::regclass, 7)")[0][0]  # amount
        assert q("SELECT has_table_privilege('warranty_auditor', 'warranty.claims', 'SELECT'),"
                 " has_table_privilege('warranty_auditor', 'warranty.cost_entries', 'SELECT')") == [(True, False)]

        # Large objects, referenced from an oid column, carrying the sentinel.
        assert q("SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 8
        assert q("""SELECT count(*) FROM warranty.claim_attachments a
                    JOIN pg_largeobject_metadata m ON m.oid = a.content""")[0][0] == 8
        assert q(f"SELECT count(*) FROM warranty.claim_attachments "
                 f"WHERE position('{SENTINEL}'::bytea IN lo_get(content)) > 0")[0][0] == 8
        assert q(f"SELECT count(*) FROM warranty.claims WHERE description LIKE '%{SENTINEL}%'")[0][0] >= 2

        # Sizes follow the claims knob.
        counts = q("""SELECT (SELECT count(*) FROM warranty.claims), (SELECT count(*) FROM warranty.products),
                             (SELECT count(*) FROM warranty.warranties),
                             (SELECT count(*) FROM warranty.cost_entries)""")
        claims, products, warranties, costs = counts[0]
        assert (claims, products, warranties) == (2000, 10, 667)
        assert 2000 <= costs <= 4000  # type: ignore[operator]

        # The triggers work.
        conn.execute("UPDATE warranty.claims SET status = 'closed' WHERE id = 1 AND status <> 'closed'")
        conn.execute("UPDATE warranty.claims SET status = 'paid' WHERE id = 1")
        events = q("SELECT count(*) FROM warranty.claim_events WHERE claim_id = 1")[0][0]
        assert events >= 1
        assert q("SELECT updated_at > now() - interval '1 minute' FROM warranty.claims WHERE id = 1") == [(True,)]
        conn.rollback()


async def test_generate_is_deterministic(pg_cluster: LocalCluster) -> None:
    names = ["parts_det_a", "parts_det_b", "parts_det_c"]
    try:
        for name, seed in zip(names, (5, 5, 6), strict=True):
            pg_cluster.drop_database(name)
            pg_cluster.create_database(name)
            generate(pg_cluster.dsn(name), claims=300, seed=seed)
        a, b, c = [await fingerprint(pg_cluster.dsn(n)) for n in names]
        assert a == b
        assert "tables.warranty.claims" in diff(a, c)
        with pytest.raises(PostgresError, match="already has a warranty schema"):
            generate(pg_cluster.dsn(names[0]), claims=10)
    finally:
        for name in names:
            pg_cluster.drop_database(name)


def test_append_claims_adds_the_fraction(make_warranty_db: MakeDb) -> None:
    _, dsn = make_warranty_db(claims=2000)
    before = _one(dsn, "SELECT md5(string_agg(c::text, '' ORDER BY id)) FROM warranty.claims c")
    assert append_claims(dsn, 0.1) == 200
    assert _one(dsn, "SELECT count(*) FROM warranty.claims") == 2200
    assert _one(dsn, "SELECT max(id) FROM warranty.claims") == 2200
    digest = "SELECT md5(string_agg(c::text, '' ORDER BY id)) FROM warranty.claims c WHERE id <= 2000"
    assert _one(dsn, digest) == before
    assert _one(dsn, "SELECT nextval('warranty.claims_id_seq')") == 2201
    assert append_claims(dsn, 0.0) == 0


# -- fingerprint -------------------------------------------------------------


async def test_fingerprint_equal_for_copies_and_sensitive_to_changes(
    pg_cluster: LocalCluster, warranty_db: tuple[str, str]
) -> None:
    name, dsn = warranty_db
    copies = {}
    for suffix in ("row", "seq", "lo"):
        copies[suffix] = f"{name}_{suffix}"  # dropped with the source by the fixture
        pg_cluster.create_database(copies[suffix], template=name)
    source = await fingerprint(dsn)
    assert source["tables"]["warranty.claims"]["rows"] == 2000
    assert source["large_objects"]["count"] == 8
    for copy in copies.values():
        assert await fingerprint(pg_cluster.dsn(copy), jobs=3) == source

    with psycopg.connect(pg_cluster.dsn(copies["row"]), autocommit=True) as conn:
        conn.execute("UPDATE warranty.claims SET amount = amount + 0.01 WHERE id = 1234")
    with psycopg.connect(pg_cluster.dsn(copies["seq"]), autocommit=True) as conn:
        conn.execute("SELECT setval('warranty.invoice_number_seq', 999999)")
    with psycopg.connect(pg_cluster.dsn(copies["lo"]), autocommit=True) as conn:
        conn.execute("SELECT lo_put(content, 3, 'X'::bytea) FROM warranty.claim_attachments WHERE id = 2")

    assert diff(source, await fingerprint(pg_cluster.dsn(copies["row"]))) == ["tables.warranty.claims"]
    assert diff(source, await fingerprint(pg_cluster.dsn(copies["seq"]))) == [
        "sequences.warranty.invoice_number_seq"
    ]
    assert diff(source, await fingerprint(pg_cluster.dsn(copies["lo"]))) == ["large_objects.sha256"]


async def test_fingerprint_sees_schema_changes(pg_cluster: LocalCluster, warranty_db: tuple[str, str]) -> None:
    name, dsn = warranty_db
    source = await fingerprint(dsn)
    changes = {
        "comment": ("COMMENT ON TABLE warranty.claims IS 'changed'", "schema.comments"),
        "grant": ("GRANT SELECT ON warranty.cost_entries TO warranty_auditor", "schema.relations"),
        "function": ("CREATE OR REPLACE FUNCTION warranty.claim_cost(p_claim_id bigint) RETURNS numeric"
                     " LANGUAGE sql STABLE AS $$ SELECT 0::numeric $$", "schema.functions"),
        "enum": ("ALTER TYPE warranty.claim_status ADD VALUE 'reopened'", "schema.types"),
    }
    for suffix, (statement, expected) in changes.items():
        copy = f"{name}_{suffix}"
        pg_cluster.create_database(copy, template=name)
        with psycopg.connect(pg_cluster.dsn(copy), autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]
        assert diff(source, await fingerprint(pg_cluster.dsn(copy))) == [expected], suffix


async def test_fingerprint_survives_dump_and_restore(
    tmp_path: Path, pg_cluster: LocalCluster, warranty_db: tuple[str, str]
) -> None:
    # Oids change on restore; the fingerprint must not.
    name, dsn = warranty_db
    bin_dir = find_bin_dir(required_major=await server_major(dsn))
    dump = tmp_path / "w.dump"
    subprocess.run([str(bin_dir / "pg_dump"), "-Fc", "-f", str(dump), "-d", dsn], check=True)
    restored = f"{name}_restored"
    pg_cluster.create_database(restored)
    subprocess.run([str(bin_dir / "pg_restore"), "--exit-on-error", "-d", pg_cluster.dsn(restored), str(dump)],
                   check=True)
    assert await fingerprint(pg_cluster.dsn(restored)) == await fingerprint(dsn)


async def test_fingerprint_of_missing_database_is_a_clear_error(pg_cluster: LocalCluster) -> None:
    with pytest.raises(PostgresError, match="cannot fingerprint .*no_such_db.*; check"):
        await fingerprint(pg_cluster.dsn("no_such_db"))


def test_server_tools_are_found() -> None:
    assert (find_bin_dir(tools=SERVER_TOOLS) / "initdb").exists()
