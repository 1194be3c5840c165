"""Backup and restore for real: PostgreSQL clusters, local directories, SeaweedFS S3."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from core.postgres.fingerprint import fingerprint

from tests.fixtures.backstop import local_target, s3_target_dict
from tests.fixtures.s3 import new_bucket


def _targets(kind: str, tmp_path: Path, s3_servers) -> list[dict]:  # type: ignore[no-untyped-def]
    if kind == "local":
        return [local_target(tmp_path / "repo")]
    if kind == "s3":
        return [s3_target_dict(s3_servers[0], new_bucket(s3_servers[0]))]
    # Two regions plus a local copy: every backup goes to all three.
    return [local_target(tmp_path / "repo"), s3_target_dict(s3_servers[0], new_bucket(s3_servers[0]), "region-a"),
            s3_target_dict(s3_servers[1], new_bucket(s3_servers[1]), "region-b")]


@pytest.mark.parametrize("kind", ["local", "s3", "local+2xs3"])
async def test_whole_database_round_trip(kind, tmp_path, s3_servers, pg_cluster, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=3000)
    setup = setup_factory(_targets(kind, tmp_path, s3_servers), [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    out = setup.cli("backup", "--db", "warranty", check=True)
    sid = out.stdout.strip()
    assert len(sid) == 64

    listed = json.loads(setup.cli("snapshots", "--json", check=True).stdout)
    assert [s["id"] for s in listed] == [sid]
    snap = listed[0]
    for key in ("id", "db", "kind", "started_at", "finished_at", "size_bytes", "stored_bytes", "targets"):
        assert key in snap
    assert snap["db"] == "warranty" and snap["kind"] == "logical"
    assert snap["targets"] == [t["name"] for t in setup.config.model_dump()["targets"]]
    assert 0 < snap["stored_bytes"] < snap["size_bytes"]

    into = f"{name}_restored"
    setup.cli("restore", "--db", "warranty", "--snapshot", sid[:10], "--into", into, check=True)
    src, dst = await fingerprint(dsn), await fingerprint(pg_cluster.dsn(into))
    assert src == dst
    # The generator's partitioned table, sequences and large objects are in the fingerprint;
    # make sure they were really there to compare.
    assert any("cost_entries" in t for t in src["tables"])
    assert src["large_objects"]
    assert src["sequences"]


async def test_restore_survives_loss_of_first_target(tmp_path, s3_servers, pg_cluster, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=1000)
    repo1 = tmp_path / "repo1"
    setup = setup_factory([local_target(repo1), s3_target_dict(s3_servers[1], new_bucket(s3_servers[1]), "region-b")],
                          [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    # Region A burns down: its packs are gone.
    for p in (repo1 / "data").rglob("*"):
        if p.is_file():
            p.unlink()
    into = f"{name}_fromb"
    out = setup.cli("restore", "--db", "warranty", "--into", into)
    assert out.returncode == 0, out.stderr
    assert "local1" in out.stderr  # the damaged/missing copy is reported
    assert await fingerprint(dsn) == await fingerprint(pg_cluster.dsn(into))


async def test_table_level_restore(tmp_path, pg_cluster, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=2000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    into = f"{name}_claims"
    setup.cli("restore", "--db", "warranty", "--into", into, "--table", "warranty.claims", check=True)
    src, dst = await fingerprint(dsn), await fingerprint(pg_cluster.dsn(into))
    claims = [t for t in src["tables"] if t.endswith(".claims")]
    assert len(claims) == 1
    assert dst["tables"][claims[0]] == src["tables"][claims[0]]
    assert set(dst["tables"]) == set(claims)  # nothing else came along

    bad = setup.cli("restore", "--db", "warranty", "--into", f"{name}_x", "--table", "warranty.no_such_table")
    assert bad.returncode == 2
    assert "no_such_table" in bad.stderr
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (f"{name}_x",)).fetchone() is None


async def test_restore_into_existing_database_is_refused(tmp_path, pg_cluster, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=200)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    before = await fingerprint(dsn)
    out = setup.cli("restore", "--db", "warranty", "--into", name)
    assert out.returncode == 2
    assert "already exists" in out.stderr and name in out.stderr
    assert await fingerprint(dsn) == before  # the live database was not touched


@pytest.mark.parametrize("jobs", [1, 2])
async def test_parallel_and_serial_restore_agree(jobs, tmp_path, pg_cluster, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    from core.engine import Engine
    from core.events import PhaseChanged

    name, dsn = make_warranty_db(claims=3000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}], restore_jobs=jobs)
    phases: list[str] = []
    async with Engine(setup.config) as engine:
        engine.bus.subscribe(lambda ev: phases.append(ev.phase) if isinstance(ev, PhaseChanged) else None)
        await engine.init()
        await engine.backup("warranty")
        await engine.restore("warranty", f"{name}_j{jobs}")
    assert await fingerprint(dsn) == await fingerprint(pg_cluster.dsn(f"{name}_j{jobs}"))
    # Format 2 always restores in sections (schema, table copies, indexes), whatever the job count.
    assert {"restore schema", "restore data", "build indexes", "finish"} <= set(phases)


def test_split_balanced_keeps_archive_order() -> None:
    from core.postgres.parallel_restore import split_balanced

    lines = [f"{i}; 0 0 TABLE DATA public t{i} postgres" for i in range(6)]
    weights = {lines[0]: 100, lines[1]: 1, lines[2]: 50, lines[3]: 49, lines[4]: 1, lines[5]: 1}
    parts = split_balanced(lines, 2, weights.__getitem__)
    assert sorted(sum(parts, [])) == sorted(lines)
    assert all(p == sorted(p, key=lines.index) for p in parts)  # a pipe cannot seek back
    loads = sorted(sum(weights[x] for x in p) for p in parts)
    assert loads == [101, 101]


def test_foreign_keys_sharing_a_table_never_run_at_once() -> None:
    """Keys a -> c and c -> a in two pg_restore processes deadlock (CI saw it): they must share one list."""
    from core.postgres.archive import Section, TocEntry
    from core.postgres.parallel_restore import split_foreign_keys

    def entry(dump_id: int, desc: str, tag: str, deps: tuple[int, ...] = ()) -> TocEntry:
        section = Section.POST_DATA if "CONSTRAINT" in desc else Section.PRE_DATA
        return TocEntry(dump_id, False, 0, 0, tag, desc, section, None, None, None, "l", None, None, None, deps)

    # What pg_dump 15 writes: a key depends on both tables and on the referenced primary key.
    toc = [entry(1, "TABLE", "a"), entry(2, "TABLE", "c"), entry(3, "TABLE", "d"), entry(4, "TABLE", "e"),
           entry(5, "TABLE", "f"),
           entry(11, "CONSTRAINT", "a a_pkey", (1,)), entry(12, "CONSTRAINT", "c c_pkey", (2,)),
           entry(14, "CONSTRAINT", "e e_pkey", (4,)),
           entry(21, "FK CONSTRAINT", "a a_c_fk", (12, 1, 2)), entry(22, "FK CONSTRAINT", "c c_a_fk", (11, 1, 2)),
           entry(23, "FK CONSTRAINT", "d d_e_fk", (3, 14)),  # the referenced table only through its key
           entry(24, "FK CONSTRAINT", "f f_e_fk", (5, 4, 14))]
    fks = [e for e in toc if e.desc == "FK CONSTRAINT"]
    parts = split_foreign_keys(fks, toc, 4)
    assert sorted([e.dump_id for e in p] for p in parts) == [[21, 22], [23, 24]]
    assert split_foreign_keys(fks, toc, 1) == [fks]
