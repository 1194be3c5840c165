"""The catalog on PostgreSQL: the dialect layer, versioned migrations, the change feed by NOTIFY, and
`backstop catalog migrate --to` moving a real SQLite catalog into it.

The behaviour contract itself (every Catalog and CatalogQueries method) runs
on both back ends in tests/test_catalog_interface.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import yaml
from core.catalog import pg_schema
from core.catalog.pg_dialect import translate
from core.catalog.postgres import PostgresCatalog, redacted
from core.events import JobStarted
from core.postgres.cluster import LocalCluster, free_port
from core.records import SnapshotRecord
from core.security.audit import AuditLog

from tests.fixtures.backstop import local_target

KEY = b"k" * 32
ROOT = Path(__file__).resolve().parents[1]


def _snap(i: int) -> SnapshotRecord:
    return SnapshotRecord(f"{i:04x}" + "ab" * 30, "warranty", "logical", f"2026-11-{10 + i:02d}T10:00:00+00:00",
                          f"2026-11-{10 + i:02d}T10:05:00+00:00", 1000, 100, ["local1"], f"job{i}")


def test_sqlite_idioms_are_rewritten_for_postgresql() -> None:
    keys = {"leases": ("name",), "t": ("id",)}
    assert translate("SELECT a FROM t WHERE b=? AND c LIKE 'x%'", keys).sql == \
        "SELECT a FROM t WHERE b=%s AND c LIKE 'x%%'"
    numbered = translate("SELECT ?1 - x, ?2 * 2, ?1 FROM t", keys)
    assert numbered.sql == "SELECT %s - x, %s * 2, %s FROM t" and list(numbered.args(["now", "d"])) == \
        ["now", "d", "now"]
    assert translate("INSERT OR REPLACE INTO leases (name, holder) VALUES (?, ?)", keys).sql == \
        "INSERT INTO leases (name, holder) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder"
    assert translate("INSERT OR IGNORE INTO t (id) VALUES (?)", keys).sql == \
        "INSERT INTO t (id) VALUES (%s) ON CONFLICT DO NOTHING"
    assert translate("SELECT max(coalesce(a, 0), b), max(c), min(d, 1) FROM t", keys).sql == \
        "SELECT greatest(coalesce(a, 0), b), max(c), least(d, 1) FROM t"
    assert translate("SELECT CAST((? - ts) / 86400 AS INTEGER) FROM t WHERE +kind = 'b'", keys).sql == \
        "SELECT trunc((%s - ts) / 86400)::bigint FROM t WHERE kind = 'b'"
    assert translate("SELECT a + b, '?' FROM t", keys).sql == "SELECT a + b, '?' FROM t"
    with pytest.raises(ValueError, match="no key known"):
        translate("INSERT OR REPLACE INTO nowhere (a) VALUES (?)", keys)
    assert redacted("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"


def test_a_catalog_of_the_previous_schema_version_migrates_on_open(pg_catalog_url: Callable[[], str]) -> None:
    url = pg_catalog_url()
    old = PostgresCatalog(url, migrate_upto=1)  # the schema as the first PostgreSQL version left it
    assert old.schema_version == 1
    old.add_snapshot(_snap(1))
    AuditLog(old, KEY).append("alice", "h", "prune", "s", "allowed", {}, 1_700_000_000.0)
    old.close()

    cat = PostgresCatalog(url)
    try:
        assert cat.schema_version == len(pg_schema.MIGRATIONS) and cat.schema_problems() == []
        assert [s.id for s in cat.snapshots()] == [_snap(1).id] and AuditLog(cat, KEY).verify().ok
        # Version 2 brought the change feed: a commit is now announced.
        feed = cat.open_queries().changes()
        assert feed.poll() is False
        cat.add_snapshot(_snap(2))
        assert feed.poll() is True
        feed.close()
    finally:
        cat.close()
    PostgresCatalog(url).close()  # nothing runs twice
    with psycopg.connect(url) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM backstop_schema ORDER BY 1")] == \
            list(range(1, len(pg_schema.MIGRATIONS) + 1))


def test_foreign_triggers_and_views_and_dropped_tables_are_named_then_repaired(
        pg_catalog_url: Callable[[], str]) -> None:
    url = pg_catalog_url()
    cat = PostgresCatalog(url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE FUNCTION swallow() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'")
            conn.execute("CREATE TRIGGER swallow BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION swallow()")
            conn.execute("CREATE VIEW peek AS SELECT name FROM operators")
            conn.execute("DROP TABLE restores")
        assert cat.schema_problems() == ["table restores is missing from the catalog",
                                         "the catalog has a trigger 'swallow' that backstop did not create",
                                         "the catalog has a view 'peek' that backstop did not create"]
        assert sorted(cat.repair_schema()) == ["dropped trigger 'swallow'", "dropped view 'peek'",
                                               "recreated table restores"]
        assert cat.schema_problems() == []
        # The recreated table announces its changes like the others.
        feed = cat.changes()
        feed.poll()
        cat.add_restore(job_id=None, snapshot_id="s", db="w", into="x", tables=[], started_at=1.0, duration_s=1.0,
                        nbytes=1, ok=True, error=None)
        assert feed.poll() is True and len(cat.restores()) == 1
        feed.close()
    finally:
        cat.close()


_WRITER = """
import sys, time
from core.catalog.postgres import PostgresCatalog
from core.events import JobStarted
cat = PostgresCatalog(sys.argv[1])
sys.stdout.write(f"{time.time()!r}\\n")
sys.stdout.flush()
cat.record_event(JobStarted("remote1", kind="backup", db="warranty", description="from another process"))
cat.close()
"""


def test_a_console_sees_a_job_started_in_another_process_within_a_second(pg_catalog_url: Callable[[], str]) -> None:
    url = pg_catalog_url()
    cat = PostgresCatalog(url)
    queries = cat.open_queries()
    feed = queries.changes()
    try:
        assert feed.poll() is False  # listening
        proc = subprocess.run([sys.executable, "-c", _WRITER, url], capture_output=True, text=True, cwd=ROOT,
                              timeout=60, check=True)
        started = float(proc.stdout.strip())
        assert feed.wait(5.0) is True  # woken by NOTIFY, no polling loop
        seen = time.time()
        assert seen - started < 1.0, f"the change took {seen - started:.3f}s to reach the console"
        assert [j.id for j in queries.running_jobs()] == ["remote1"]
        assert feed.poll() is False  # seen once
        cat.record_event(JobStarted("local1", kind="verify", db=None, description="here"))
        assert feed.wait(5.0) is True
    finally:
        feed.close()
        queries.close()
        cat.close()


def _config(setup_dir: Path, url: str) -> None:
    path = setup_dir / "backstop.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["catalog"] = {"url": url}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_catalog_migrate_moves_an_sqlite_catalog_into_postgresql(
        tmp_path: Path, warranty_db: tuple[str, str], setup_factory, pg_catalog_url: Callable[[], str],  # type: ignore[no-untyped-def]
        pg_cluster: LocalCluster) -> None:
    _, dsn = warranty_db
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}],
                          catalog={"url": f"sqlite:///{tmp_path / 'catalog.db'}"})
    setup.cli("init", check=True)
    for _ in range(2):
        setup.cli("backup", "--db", "warranty", check=True)
    before = {cmd: setup.cli(*cmd, "--json", check=True).stdout for cmd in (("snapshots",), ("jobs",))}
    audit_before = json.loads(setup.cli("audit", "list", "--json", check=True).stdout)

    url = pg_catalog_url()
    out = setup.cli("catalog", "migrate", "--to", url, "--json", check=True)
    rows = json.loads(out.stdout)["rows"]
    assert rows["snapshots"] == 2 and rows["jobs"] >= 2 and rows["audit_log"] == len(audit_before) > 0

    _config(setup.dir, url)
    for cmd, text in before.items():
        assert json.loads(setup.cli(*cmd, "--json", check=True).stdout) == json.loads(text), cmd
    verify = setup.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The copy goes on from there: ids continue after the copied ones, new snapshots list after the old.
    sid = setup.cli("backup", "--db", "warranty", check=True).stdout.strip()
    assert [s["id"] for s in json.loads(setup.cli("snapshots", "--json", check=True).stdout)][-1] == sid
    check = setup.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr

    # Refusals, each one line and non-zero: into a catalog that is already on PostgreSQL, into one that holds
    # rows, and to something that is not a PostgreSQL URL.
    again = setup.cli("catalog", "migrate", "--to", url)
    assert again.returncode != 0 and "already on PostgreSQL" in again.stderr
    _config(setup.dir, f"sqlite:///{tmp_path / 'catalog.db'}")
    busy = setup.cli("catalog", "migrate", "--to", url)
    assert busy.returncode != 0 and "already holds rows" in busy.stderr and len(busy.stderr.strip().splitlines()) == 1
    wrong = setup.cli("catalog", "migrate", "--to", "mysql://x/y")
    assert wrong.returncode != 0 and "postgresql://" in wrong.stderr


def test_an_unreachable_catalog_or_a_password_in_the_url_is_one_line(
        tmp_path: Path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    dead = f"postgresql://backstop@127.0.0.1:{free_port()}/backstop"
    setup = setup_factory([local_target(tmp_path / "repo")], [], catalog={"url": dead})
    out = setup.cli("snapshots")
    assert out.returncode != 0 and "cannot reach the catalog" in out.stderr and "pg_hba.conf" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    _config(setup.dir, "postgresql://backstop:hunter2@127.0.0.1:5432/backstop")
    out = setup.cli("snapshots")
    assert out.returncode == 2 and ".pgpass" in out.stderr and "hunter2" not in out.stderr
