"""Logical snapshots as per-table streams (format 2): consistency, what a table restore reads, dedup, old snapshots."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import psycopg
from core.engine import Engine
from core.postgres.cluster import LocalCluster
from core.postgres.fingerprint import fingerprint
from core.repository.manifest import SCHEMA_FILE
from core.sandbox.warranty import append_claims
from core.storage.local import LocalStorage

from tests.doubles.faulty_storage import FaultyStorage, PowerSwitch
from tests.fixtures.backstop import local_target
from tests.fixtures.format1 import write_format_1_snapshot


def _scalar(dsn: str, query: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


async def test_snapshot_is_one_table_stream_each_plus_the_schema(tmp_path: Path, pg_cluster: LocalCluster,
                                                                 make_warranty_db, setup_factory) -> None:  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=3000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}], jobs=3)
    async with Engine(setup.config) as engine:
        await engine.init()
        rec = await engine.backup("warranty")
        manifest = await (await engine.open_repository()).read_manifest(rec.id)
        assert manifest.format == 2 and manifest.per_table and manifest.encoding == "UTF8"
        schema = manifest.file(SCHEMA_FILE)
        tables = {tuple(f.relation) for f in manifest.table_files() if f.relation}
        # Every table with rows, partitions included; a partitioned parent holds none of its own.
        assert ("warranty", "claims") in tables and ("warranty", "cost_entries_2022") in tables
        assert ("warranty", "cost_entries") not in tables
        claims = next(f for f in manifest.table_files() if f.relation == ["warranty", "claims"])
        assert claims.columns and claims.columns[0] == "id"
        assert schema.size < claims.size  # no table data in the schema archive
        await engine.restore("warranty", f"{name}_r")
    assert await fingerprint(pg_cluster.dsn(f"{name}_r")) == await fingerprint(dsn)


async def test_tables_read_through_psql_come_back_equal(tmp_path: Path, pg_cluster: LocalCluster,
                                                        make_warranty_db, setup_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every table through psql (as large ones are), in a LATIN1 database: same rows, same bytes per stream."""
    from core.postgres import snapshot

    name, dsn = make_warranty_db(claims=3000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}], jobs=2)
    async with Engine(setup.config) as engine:
        await engine.init()
        first = await (await engine.open_repository()).read_manifest((await engine.backup("warranty")).id)
        monkeypatch.setattr(snapshot, "PSQL_MIN_BYTES", 0)
        started: list[str] = []
        real = snapshot.PsqlCopyReader.__init__

        def counting(self, psql, dsn, sid, enc, table, settings):  # type: ignore[no-untyped-def]
            started.append(table.qualified)
            real(self, psql, dsn, sid, enc, table, settings)

        monkeypatch.setattr(snapshot.PsqlCopyReader, "__init__", counting)
        second = await (await engine.open_repository()).read_manifest((await engine.backup("warranty")).id)
        assert sorted(started) == sorted(f"{f.relation[0]}.{f.relation[1]}" for f in second.table_files()
                                         if f.relation)
        # The same streams, byte for byte, whichever way they were read.
        assert {f.name: f.sha256 for f in second.table_files()} == {f.name: f.sha256 for f in first.table_files()}
        await engine.restore("warranty", f"{name}_r")
    assert await fingerprint(pg_cluster.dsn(f"{name}_r")) == await fingerprint(dsn)

    latin = f"lat_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {latin} TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'")
    with psycopg.connect(pg_cluster.dsn(latin), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, s text)")
        conn.execute("INSERT INTO t SELECT i, 'caf\u00e9 \u00a3' || i FROM generate_series(1, 500) i")
    setup = setup_factory([local_target(tmp_path / "repo2")], [{"name": "lat", "dsn": pg_cluster.dsn(latin)}])
    async with Engine(setup.config) as engine:
        await engine.init()
        await engine.backup("lat")
        await engine.restore("lat", f"{latin}_r")
    rows = []
    for db in (latin, f"{latin}_r"):  # read as text through UTF8: the new database has the server's encoding
        with psycopg.connect(pg_cluster.dsn(db), autocommit=True) as conn:
            rows.append(conn.execute("SELECT id, s FROM t ORDER BY id").fetchall())
    assert rows[0] == rows[1] and rows[0][0] == (1, "caf\u00e9 \u00a31")
    pg_cluster.drop_database(f"{latin}_r")
    pg_cluster.drop_database(latin)


async def test_consistent_under_write_load(tmp_path: Path, pg_cluster: LocalCluster, setup_factory) -> None:  # type: ignore[no-untyped-def]
    name = f"pgb_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name)
    dsn = pg_cluster.dsn(name)
    pgbench = str(pg_cluster.bin_dir / "pgbench")
    subprocess.run([pgbench, "-i", "-s", "4", "--foreign-keys", "-q", dsn], check=True, capture_output=True)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "bench", "dsn": dsn}], jobs=4)
    load = subprocess.Popen([pgbench, "-c", "4", "-T", "60", "-n", dsn], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(2)  # writes are under way before the snapshot is taken
        async with Engine(setup.config) as engine:
            await engine.init()
            await engine.backup("bench")
            assert load.poll() is None, "the write load ended before the backup did"
            await engine.restore("bench", f"{name}_r")
    finally:
        load.terminate()
        load.wait()
    restored = pg_cluster.dsn(f"{name}_r")
    # pgbench's invariant: every transaction adds the same delta to an account, a teller, a branch and the history.
    history = _scalar(restored, "SELECT coalesce(sum(delta), 0) FROM pgbench_history")
    assert history != 0, "no transaction committed before the snapshot: the test proves nothing"
    for table, column in (("pgbench_accounts", "abalance"), ("pgbench_tellers", "tbalance"),
                          ("pgbench_branches", "bbalance")):
        assert _scalar(restored, f"SELECT sum({column}) FROM {table}") == history, table
    # Foreign keys came back, and validated (the restore created and checked every one against the rows).
    fks = "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated"
    assert _scalar(restored, fks) == _scalar(dsn, fks) == 5
    pg_cluster.drop_database(f"{name}_r")
    pg_cluster.drop_database(name)


async def test_table_restore_reads_only_its_own_stream(tmp_path: Path, pg_cluster: LocalCluster,
                                                       make_warranty_db, setup_factory) -> None:  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=40_000)
    repo = tmp_path / "repo"
    setup = setup_factory([local_target(repo)], [{"name": "warranty", "dsn": dsn}])
    switch = PowerSwitch()
    counted = [FaultyStorage(LocalStorage(setup.config.targets[0]), switch)]  # type: ignore[arg-type]
    async with Engine(setup.config, storages=counted) as engine:
        await engine.init()
        rec = await engine.backup("warranty")
        switch.calls.clear()
        await engine.restore("warranty", f"{name}_t", tables=["warranty.products"])
    fetched = sum(c.size or 0 for c in switch.calls if c.kind in ("get", "get_range") and c.name.startswith("data/"))
    assert 0 < fetched <= 0.05 * rec.stored_bytes, (fetched, rec.stored_bytes)
    src = _scalar(dsn, "SELECT count(*) FROM warranty.products")
    assert _scalar(pg_cluster.dsn(f"{name}_t"), "SELECT count(*) FROM warranty.products") == src


def test_second_backup_after_appending_stores_little(tmp_path: Path, make_warranty_db, setup_factory) -> None:  # type: ignore[no-untyped-def]
    import json

    _, dsn = make_warranty_db(claims=60_000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}],
                          repository={"chunk_avg_kib": 256})
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    append_claims(dsn, 0.05)  # the largest table grows by 5%
    setup.cli("backup", "--db", "warranty", check=True)
    first, second = json.loads(setup.cli("snapshots", "--json", check=True).stdout)
    assert 0 < second["stored_bytes"] < 0.10 * first["stored_bytes"], (first, second)


async def test_single_stream_snapshots_of_the_previous_format_still_restore(
        tmp_path: Path, pg_cluster: LocalCluster, make_warranty_db, setup_factory) -> None:  # type: ignore[no-untyped-def]
    """A format 1 snapshot (one `pg_dump -Fc -Z0` stream), written as the previous version wrote it."""
    name, dsn = make_warranty_db(claims=2000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}])
    async with Engine(setup.config) as engine:
        await engine.init()
        sid = await write_format_1_snapshot(engine, dsn)
        await engine.restore("warranty", f"{name}_old", snapshot=sid)
        await engine.restore("warranty", f"{name}_oldt", snapshot=sid, tables=["warranty.claims"])
    assert await fingerprint(pg_cluster.dsn(f"{name}_old")) == await fingerprint(dsn)
    assert _scalar(pg_cluster.dsn(f"{name}_oldt"), "SELECT count(*) FROM warranty.claims") == 2000
