"""Table digests (core/repository/table_digest.py) and the drill's integrity checks (core/drills/integrity.py).

Unit tests of the digest's definition (FORMAT.md 10), then one real round:
a warranty database (plus a quoted table with awkward values, under
TimeZone and bytea_output settings that differ when the restored copy is
read) backed up, its manifest's row counts against the source, restored
through the CLI, every table's digest checked, one row changed and exactly
that table failing, then amcheck passing and failing on an index made
inconsistent for real.
"""

from __future__ import annotations

import random
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from core.drills.integrity import check_indexes, check_tables, verify_data_dir
from core.engine import Engine
from core.postgres import snapshot
from core.postgres.cluster import LocalCluster
from core.repository.table_digest import CopyDigest, TableDigest, digest_of
from crc32c import crc32c

from tests.fixtures.awkward import PARTITIONS, TABLES, awkward_sql, drop_databases, drop_roles, make_roles
from tests.fixtures.backstop import local_target

ROWS = [b"1\tfirst\t2024-01-01", b"2\tsecond\\nline\t\\N", b"", b"3\t\xc3\xa9t\xc3\xa9\t2024-03-01",
        b"4\t" + b"x" * 5000, b"5\ttab\\there"]


def _stream(rows: list[bytes]) -> bytes:
    return b"".join(r + b"\n" for r in rows)


def _fed(data: bytes, cuts: list[int]) -> TableDigest:
    d = CopyDigest()
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        d.update(memoryview(data)[a:b])
    return d.result()


def test_digest_is_the_documented_sums() -> None:
    """FORMAT.md 10, recomputed the plain way: the sums of each row's CRC-32C and of its square, mod 2^64."""
    s1 = sum(crc32c(r) for r in ROWS) % 2**64
    s2 = sum(crc32c(r) ** 2 for r in ROWS) % 2**64
    assert digest_of(_stream(ROWS)) == TableDigest(len(ROWS), f"{s1:016x}{s2:016x}")


def test_digest_ignores_row_order_and_block_boundaries() -> None:
    rng = random.Random(7)
    want = digest_of(_stream(ROWS))
    for _ in range(50):
        rows = ROWS[:]
        rng.shuffle(rows)
        data = _stream(rows)
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
        assert _fed(data, cuts) == want
    data = _stream(ROWS)
    assert _fed(data, list(range(1, len(data)))) == want  # one byte at a time


def test_one_changed_byte_changes_the_digest() -> None:
    want = digest_of(_stream(ROWS))
    data = bytearray(_stream(ROWS))
    for pos in (0, 5, len(data) // 2, len(data) - 2):
        if data[pos] == ord("\n"):
            continue
        changed = bytearray(data)
        changed[pos] ^= 0x01
        got = digest_of(bytes(changed))
        assert got.rows == want.rows and got.digest != want.digest
    # Two rows swapping a value: the multiset of rows changed, not only their order.
    swapped = [b"1\tsecond\\nline\t2024-01-01", b"2\tfirst\t\\N", *ROWS[2:]]
    assert digest_of(_stream(swapped)).digest != want.digest
    # Two rows trading values whose CRC-32Cs still add up to the same (found by search): the sum of
    # squares tells them apart, as FORMAT.md says a plain CRC sum would not.
    before, after = [b"1\talpha", b"2\t34461"], [b"1\t34461", b"2\talpha"]
    assert sum(map(crc32c, before)) == sum(map(crc32c, after))
    assert digest_of(_stream(before)).digest != digest_of(_stream(after)).digest
    # A duplicated row and a dropped one.
    assert digest_of(_stream([*ROWS, ROWS[0]])).rows == len(ROWS) + 1
    assert digest_of(_stream(ROWS[1:])) != want


def test_rows_counted_as_copy_writes_them() -> None:
    empty = digest_of(b"")
    assert empty == TableDigest(0, "0" * 32)
    assert digest_of(b"\n\n\n").rows == 3  # a table without columns: one empty line per row
    assert digest_of(b"a\nb\n").rows == 2
    # COPY ends every row with a newline; bytes after the last one still count as a row, the same row.
    assert digest_of(b"a\nb") == digest_of(b"a\nb\n")
    assert _fed(b"a\nbcd", [3, 4]) == digest_of(b"a\nbcd\n")
    big = b"y" * 3_000_000
    assert _fed(_stream([big, b"z"]), [1 << 20, 2 << 20, 3_000_000, 3_000_001]) == digest_of(_stream([b"z", big]))


# -- against real PostgreSQL --------------------------------------------------------------------------------------

ODD_TABLE = 'CREATE TABLE public."Odd Name" (id int PRIMARY KEY, note text, blob bytea, at timestamptz)'
ODD_ROWS = ("INSERT INTO public.\"Odd Name\" SELECT i, E'line\\nbreak\\ttab\\\\' || i, "
            "decode(md5(i::text), 'hex'), timestamptz '2024-06-01 12:00+00' + i * interval '1 hour' "
            "FROM generate_series(1, 200) i")


def _sql(dsn: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


async def test_drill_checks_against_a_restored_copy(tmp_path: Path, pg_cluster: LocalCluster, make_warranty_db,
                                                    setup_factory, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=600)
    _sql(dsn, ODD_TABLE)
    _sql(dsn, ODD_ROWS)
    # A table without columns still has rows (COPY writes an empty line for each).
    _sql(dsn, "CREATE TABLE public.no_columns (); INSERT INTO public.no_columns SELECT FROM generate_series(1, 3)")
    # Session settings that change the text of a row (a restore re-applies them to its copy; see below).
    _sql(dsn, f"ALTER DATABASE {name} SET TimeZone = 'Pacific/Chatham'")
    _sql(dsn, f"ALTER DATABASE {name} SET bytea_output = 'escape'")
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}], jobs=2)
    async with Engine(setup.config) as engine:
        await engine.init()
        rec = await engine.backup("warranty")
        manifest = await (await engine.open_repository()).read_manifest(rec.id)

    tables = [f for f in manifest.table_files() if f.relation]
    assert len(tables) >= 8
    for f in tables:
        assert f.relation is not None and f.digest is not None and len(f.digest) == 32
        count = _sql(dsn, 'SELECT count(*) FROM "{}"."{}"'.format(*f.relation))[0][0]
        assert f.rows == count, f.relation
    assert next(f for f in tables if f.relation == ["warranty", "claims"]).rows == 600

    into = f"{name}_r"
    out = setup.cli("restore", "--db", "warranty", "--into", into)
    assert out.returncode == 0, out.stderr
    restored = pg_cluster.dsn(into)
    # Defaults that changed since the backup (a server's timezone, say): the text of a row must not follow them.
    _sql(restored, f"ALTER DATABASE {into} SET TimeZone = 'America/St_Johns'")
    _sql(restored, f"ALTER DATABASE {into} SET bytea_output = 'hex'")

    checks = await check_tables(restored, manifest)
    assert [c.name for c in checks] == sorted(c.name for c in checks) and len(checks) == len(tables)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert 'table public."Odd Name"' in {c.name for c in checks}
    assert next(c for c in checks if c.name == "table public.no_columns").detail == "3 rows, digest matches"
    assert next(c for c in checks if c.name == "table warranty.claims").detail == "600 rows, digest matches"

    # Read back the way large tables are (through psql), in parallel: the same bytes, the same verdict.
    monkeypatch.setattr(snapshot, "PSQL_MIN_BYTES", 0)
    assert all(c.ok for c in await check_tables(restored, manifest, jobs=3))
    monkeypatch.undo()

    # One changed row in the restored copy: that table fails, by name, and no other.
    _sql(restored, 'UPDATE public."Odd Name" SET note = note || \'!\' WHERE id = 17')
    _sql(restored, "DELETE FROM warranty.cost_entries_2022 WHERE id = (SELECT min(id) FROM warranty.cost_entries_2022)")
    checks = await check_tables(restored, manifest)
    failed = {c.name: c.detail for c in checks if not c.ok}
    assert failed == {
        'table public."Odd Name"': "expected 200 rows, found 200; digest differs",
        "table warranty.cost_entries_2022": f"expected {_rows(tables, 'cost_entries_2022'):,} rows, "
                                            f"found {_rows(tables, 'cost_entries_2022') - 1:,}",
    }
    _sql(restored, "DROP TABLE warranty.claim_events")
    missing = next(c for c in await check_tables(restored, manifest) if c.name == "table warranty.claim_events")
    assert not missing.ok and "missing from the restored database" in missing.detail

    # amcheck: every btree index of the restored copy passes, and the extension is gone again afterwards.
    amcheck = await check_indexes(restored)
    assert amcheck is not None and amcheck.ok, amcheck
    assert int(amcheck.detail.split()[0]) > 10
    assert not _sql(restored, "SELECT 1 FROM pg_extension WHERE extname = 'amcheck'")
    # An index whose "immutable" function changed after it was built no longer matches its table.
    _sql(restored, "CREATE FUNCTION public.twist(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1'")
    _sql(restored, 'CREATE INDEX "Twisted idx" ON public."Odd Name" (public.twist(id))')
    _sql(restored, "CREATE OR REPLACE FUNCTION public.twist(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT -$1'")
    amcheck = await check_indexes(restored)
    assert amcheck is not None and not amcheck.ok
    assert amcheck.detail.startswith('index public."Twisted idx": '), amcheck.detail


def _rows(tables: list, name: str) -> int:  # type: ignore[type-arg]
    return int(next(f.rows for f in tables if f.relation and f.relation[1] == name))


async def test_a_snapshot_without_digests_fails_the_check(tmp_path: Path, pg_cluster: LocalCluster) -> None:
    """Taken before digests were recorded: one failed check saying so, never a silent pass."""
    from core.repository.manifest import FileEntry, Manifest

    old = Manifest(db="w", kind="logical", started_at="", finished_at="", size_bytes=0, stored_bytes=0,
                   new_chunks=0, targets=[], format=2,
                   files=[FileEntry("table/public/t", "copy-text", 0, "", [], relation=["public", "t"],
                                    columns=["id"])])
    checks = await check_tables(pg_cluster.dsn(), old)
    assert len(checks) == 1 and checks[0].name == "tables" and not checks[0].ok
    assert "records no table digests" in checks[0].detail
    # A physical snapshot has no table streams: its drills check it otherwise, and this adds nothing.
    old.kind, old.files = "physical", []
    assert await check_tables(pg_cluster.dsn(), old) == []


async def test_verify_data_dir_on_a_real_base_backup(tmp_path: Path, pg_cluster: LocalCluster) -> None:
    """pg_verifybackup over a base backup: passes, then names a changed file, a missing one, a started directory."""
    pgdata = tmp_path / "base"
    subprocess.run([str(pg_cluster.bin_dir / "pg_basebackup"), "--dbname", pg_cluster.dsn(), "-D", str(pgdata),
                    "--checkpoint=fast", "--wal-method=none", "--no-sync"], check=True, capture_output=True)
    check = await verify_data_dir(pg_cluster.bin_dir, pgdata)
    assert check.ok and check.name == "pg_verifybackup" and "checksum" in check.detail
    # One flipped byte keeps the size: only reading the checksums notices it.
    victim = max((p for p in (pgdata / "base").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert (await verify_data_dir(pg_cluster.bin_dir, pgdata, checksums=False)).ok
    check = await verify_data_dir(pg_cluster.bin_dir, pgdata)
    assert not check.ok and victim.name in check.detail and "checksum" in check.detail
    victim.unlink()
    check = await verify_data_dir(pg_cluster.bin_dir, pgdata, checksums=False)
    assert not check.ok and victim.name in check.detail
    (pgdata / "postmaster.pid").write_text("4242\n")
    check = await verify_data_dir(pg_cluster.bin_dir, pgdata)
    assert not check.ok and "a server has run" in check.detail
    (pgdata / "backup_manifest").unlink()
    check = await verify_data_dir(pg_cluster.bin_dir, pgdata)
    assert not check.ok and "no backup_manifest" in check.detail


async def test_every_table_of_the_awkward_schema_compares_equal(tmp_path: Path, pg_cluster: LocalCluster,
                                                                setup_factory) -> None:  # type: ignore[no-untyped-def]
    """Odd names, row-level security, generated columns, partitions, arrays, ranges: read back byte for byte."""
    roles = make_roles(pg_cluster.dsn())
    name = f"awd_{uuid.uuid4().hex[:8]}"
    try:
        pg_cluster.create_database(name)
        _sql(pg_cluster.dsn(name), awkward_sql(roles))
        setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "awk", "dsn": pg_cluster.dsn(name)}])
        async with Engine(setup.config) as engine:
            await engine.init()
            rec = await engine.backup("awk")
            manifest = await (await engine.open_repository()).read_manifest(rec.id)
            await engine.restore("awk", f"{name}_r")
        checks = await check_tables(pg_cluster.dsn(f"{name}_r"), manifest)
        assert len(checks) == len(manifest.table_files()) >= len(TABLES) - len(PARTITIONS)
        assert all(c.ok for c in checks), [c for c in checks if not c.ok]
        assert sum(f.rows or 0 for f in manifest.table_files()) > 0
    finally:
        drop_databases(pg_cluster.dsn(), name)
        drop_roles(pg_cluster.dsn(), roles)
