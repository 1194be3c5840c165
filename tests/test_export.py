"""`backstop export`: stored snapshots handed back as archives plain pg_restore and psql take, and what it refuses."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
from core.engine import Engine
from core.errors import IntegrityError
from core.postgres.cluster import LocalCluster
from core.postgres.fingerprint import fingerprint
from core.storage.local import LocalStorage

from tests.doubles.faulty_storage import Fault, FaultyStorage, PowerSwitch
from tests.fixtures.backstop import Setup, local_target
from tests.fixtures.format1 import write_format_1_snapshot


def _run(args: list[str | Path]) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _pg_restore(cluster: LocalCluster, into: str, path: Path) -> None:
    """Plain pg_restore into a new database, as a DBA without Backstop would."""
    cluster.create_database(into)
    _run([cluster.bin_dir / "pg_restore", "--exit-on-error", f"--dbname={cluster.dsn(into)}", path])


def _psql(cluster: LocalCluster, into: str, script: Path) -> None:
    cluster.create_database(into)
    _run([cluster.bin_dir / "psql", "--quiet", "--no-psqlrc", "--set=ON_ERROR_STOP=1",
          f"--dbname={cluster.dsn(into)}", f"--file={script}"])


def _listing(cluster: LocalCluster, path: Path) -> list[str]:
    """`pg_restore -l` lines without their dump ids (an export numbers the TABLE DATA entries itself)."""
    out = _run([cluster.bin_dir / "pg_restore", "--list", path])
    return [line.split(";", 1)[1] for line in out.splitlines() if line and not line.startswith(";")]


def _export(setup: Setup, path: Path, fmt: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return setup.cli("export", "--db", "warranty", "--format", fmt, "-o", str(path), *extra)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


async def test_per_table_snapshot_exports_in_every_format(tmp_path: Path, pg_cluster: LocalCluster,
                                                          make_warranty_db, setup_factory) -> None:  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=2000)
    source = await fingerprint(dsn)
    assert source["large_objects"] and source["sequences"]  # there to compare
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    sid = setup.cli("backup", "--db", "warranty", check=True).stdout.strip()
    out = tmp_path / "out"
    out.mkdir()

    custom = _export(setup, out / "warranty.dump", "custom", "--json")
    assert custom.returncode == 0, custom.stderr
    doc = json.loads(custom.stdout)
    assert doc["snapshot"] == sid and doc["format"] == "custom" and doc["path"] == str(out / "warranty.dump")
    assert doc["bytes"] == (out / "warranty.dump").stat().st_size and doc["tables"] > 5
    assert doc["restore_with"] == f"createdb NEWDB && pg_restore -d NEWDB {out / 'warranty.dump'}"
    assert (out / "warranty.dump").stat().st_mode & 0o077 == 0  # it holds the data: owner only

    directory = _export(setup, out / "warranty.d", "directory", "--snapshot", sid[:10])
    assert directory.returncode == 0, directory.stderr
    assert f"to {out / 'warranty.d'}" in directory.stdout and "pg_restore -d NEWDB" in directory.stdout
    plain = _export(setup, out / "warranty.sql", "plain")
    assert plain.returncode == 0, plain.stderr
    assert "psql -v ON_ERROR_STOP=1 -d NEWDB -f" in plain.stdout
    # Nothing else is left beside them (no temporary names).
    assert sorted(p.name for p in out.iterdir()) == ["warranty.d", "warranty.dump", "warranty.sql"]

    # pg_restore lists a TABLE DATA entry for every table, as it would for pg_dump's own archive.
    theirs = tmp_path / "theirs.dump"
    _run([pg_cluster.bin_dir / "pg_dump", "--format=custom", f"--file={theirs}", f"--dbname={dsn}"])
    listed = _listing(pg_cluster, out / "warranty.dump")
    assert listed == _listing(pg_cluster, theirs)
    assert len([line for line in listed if " TABLE DATA " in line]) == doc["tables"]
    assert _listing(pg_cluster, out / "warranty.d") == listed

    _pg_restore(pg_cluster, f"{name}_c", out / "warranty.dump")
    _pg_restore(pg_cluster, f"{name}_d", out / "warranty.d")
    _psql(pg_cluster, f"{name}_p", out / "warranty.sql")
    for into in ("c", "d", "p"):
        assert await fingerprint(pg_cluster.dsn(f"{name}_{into}")) == source, into

    jobs = json.loads(setup.cli("jobs", "--json", check=True).stdout)
    exports = [j for j in jobs if j["kind"] == "export"]
    assert len(exports) == 3 and all(j["state"] == "succeeded" for j in exports), exports




async def test_single_stream_snapshot_exports(tmp_path: Path, pg_cluster: LocalCluster, make_warranty_db,
                                              setup_factory) -> None:  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=1000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}])
    async with Engine(setup.config) as engine:
        await engine.init()
        sid = await write_format_1_snapshot(engine, dsn)
        stored = (await (await engine.open_repository()).read_manifest(sid)).files[0]
        custom = await engine.export("warranty", str(tmp_path / "old.dump"), "custom", sid)
        directory = await engine.export("warranty", str(tmp_path / "old.d"), "directory", sid)
        plain = await engine.export("warranty", str(tmp_path / "old.sql"), "plain", sid)
    # custom: the stored stream as it is.
    assert hashlib.sha256((tmp_path / "old.dump").read_bytes()).hexdigest() == stored.sha256
    assert custom.bytes == stored.size and custom.tables == 2
    assert re.match(r"\d+\.", directory.pg_dump_version) and plain.bytes > 0
    source = await fingerprint(dsn)
    _pg_restore(pg_cluster, f"{name}_c", tmp_path / "old.dump")
    _pg_restore(pg_cluster, f"{name}_d", tmp_path / "old.d")
    _psql(pg_cluster, f"{name}_p", tmp_path / "old.sql")
    for into in ("c", "d", "p"):
        assert await fingerprint(pg_cluster.dsn(f"{name}_{into}")) == source, into


async def test_refusals_and_failures_leave_nothing(tmp_path: Path, make_warranty_db,
                                                   setup_factory) -> None:  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=1000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}],
                          repository={"chunk_avg_kib": 64})
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "taken.dump").write_bytes(b"precious")
    (out / "full").mkdir()
    (out / "full" / "keep").write_bytes(b"mine")
    (out / "empty").mkdir()

    def unchanged() -> None:
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["empty", "full", "full/keep",
                                                                          "taken.dump"]
        assert (out / "taken.dump").read_bytes() == b"precious" and (out / "full" / "keep").read_bytes() == b"mine"

    for fmt in ("custom", "plain", "directory"):
        refused = _export(setup, out / "taken.dump", fmt)
        assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
        assert _one_line_error(refused) == (f"backstop: {out / 'taken.dump'} already exists; export never "
                                            "overwrites: name a new path with -o")
    refused = _export(setup, out / "full", "directory")
    assert refused.returncode == 2
    assert _one_line_error(refused) == (f"backstop: {out / 'full'} exists and is not an empty directory; export "
                                        "writes only to a new path: name another with -o")
    assert _export(setup, out / "empty", "custom").returncode == 2  # a file cannot take a directory's place
    missing_dir = _export(setup, out / "nowhere" / "x.dump", "custom")
    assert missing_dir.returncode == 2 and "does not exist" in _one_line_error(missing_dir)
    unknown = _export(setup, out / "x.dump", "custom", "--snapshot", "deadbeef")
    assert unknown.returncode == 2 and "deadbeef" in _one_line_error(unknown)
    assert _export(setup, out / "x.dump", "tar").returncode == 2
    unchanged()

    # An empty directory takes a directory archive, as with pg_dump -Fd.
    assert _export(setup, out / "empty", "directory").returncode == 0
    assert (out / "empty" / "toc.dat").is_file()
    (out / "empty" / "toc.dat").unlink()
    for p in (out / "empty").iterdir():
        p.unlink()

    # A read that fails half way through: what was written so far is removed, and nothing else.
    switch = PowerSwitch()
    storage = FaultyStorage(LocalStorage(setup.config.targets[0]), switch)  # type: ignore[arg-type]
    async with Engine(setup.config, storages=[storage]) as engine:
        await engine.export("warranty", str(tmp_path / "dry.dump"), "custom")
        reads = len(switch.find("get_range", prefix="data/"))
        assert reads >= 3, reads
        for fmt in ("custom", "directory", "plain"):
            storage.arm(Fault("get_range", "fail", nth=reads - 1, prefix="data/"))
            with pytest.raises(IntegrityError):
                await engine.export("warranty", str(out / f"broken.{fmt}"), fmt)
            storage.faults.clear()
    unchanged()
