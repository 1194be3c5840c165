"""Faults on purpose: corruption, killed backups, wrong keys, dead servers, bad config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
from core.postgres.fingerprint import fingerprint

from tests.fixtures.backstop import BACKSTOP, local_target, s3_target_dict
from tests.fixtures.s3 import new_bucket


def _packs(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "data").rglob("*") if p.is_file() and len(p.name) == 64)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _db_exists(pg_cluster, name: str) -> bool:  # type: ignore[no-untyped-def]
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (name,)).fetchone() is not None


async def test_flipped_byte_is_found_and_repaired_from_other_target(tmp_path, pg_cluster, make_warranty_db,  # type: ignore[no-untyped-def]
                                                                     setup_factory):
    name, dsn = make_warranty_db(claims=3000)
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    setup = setup_factory([local_target(r1, "site-a"), local_target(r2, "site-b")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    sid = setup.cli("backup", "--db", "warranty", check=True).stdout.strip()
    assert setup.cli("check", "--read-data").returncode == 0

    pack = _packs(r1)[0]
    _flip_byte(pack, pack.stat().st_size // 3)
    # The structural check does not read pack contents; --read-data does.
    res = setup.cli("check", "--read-data")
    assert res.returncode == 1
    assert pack.name[:16] in res.stdout and sid[:8] in res.stdout and "site-a" in res.stdout
    assert "site-b: ok" in res.stdout.replace("target ", "")
    rep = json.loads(setup.cli("check", "--read-data", "--json").stdout)
    bad = [t for t in rep["targets"] if not t["ok"]]
    assert [t["target"] for t in bad] == ["site-a"] and bad[0]["affected_snapshots"] == [sid]

    # Restore still works, from site-b's good copy, and says so.
    into = f"{name}_r"
    out = setup.cli("restore", "--db", "warranty", "--into", into)
    assert out.returncode == 0, out.stderr
    assert "site-a" in out.stderr and "damaged" in out.stderr
    assert await fingerprint(dsn) == await fingerprint(pg_cluster.dsn(into))

    # With the only good copy damaged too, the restore fails clearly and leaves nothing behind.
    _flip_byte(r2 / pack.relative_to(r1), pack.stat().st_size // 3)
    out = setup.cli("restore", "--db", "warranty", "--into", f"{name}_r2")
    assert out.returncode == 1
    assert "no intact copy" in out.stderr and pack.name[:16] in out.stderr
    assert not _db_exists(pg_cluster, f"{name}_r2")


def test_backup_killed_mid_upload_leaves_no_snapshot(tmp_path, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=150_000)
    repo = tmp_path / "repo"
    setup = setup_factory([local_target(repo)], [{"name": "warranty", "dsn": dsn}],
                          repository={"pack_target_mib": 1, "chunk_avg_kib": 64, "compression_level": 19})
    setup.cli("init", check=True)
    proc = subprocess.Popen([*BACKSTOP, "--config", str(setup.path), "backup", "--db", "warranty"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not _packs(repo) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "backup finished before it could be killed; make the database bigger"
    assert _packs(repo), "no pack was uploaded"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    assert list((repo / "snapshots").glob("*")) == []
    assert json.loads(setup.cli("snapshots", "--json", check=True).stdout) == []
    res = setup.cli("check", "--read-data")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "referenced by no index" in res.stdout  # the leftovers are reported, not hidden
    # And the next backup works (the stale shared lock does not block it).
    assert setup.cli("backup", "--db", "warranty").returncode == 0


def test_wrong_passphrase(tmp_path, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=100)
    repo = tmp_path / "repo"
    good = setup_factory([local_target(repo)], [{"name": "warranty", "dsn": dsn}])
    good.cli("init", check=True)
    bad = setup_factory([local_target(repo)], [{"name": "warranty", "dsn": dsn}], passphrase="not the passphrase")
    for args in (("backup", "--db", "warranty"), ("init",), ("check",)):
        out = bad.cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert "wrong passphrase" in out.stderr
        assert out.stderr.count("\n") == 1  # one line, no traceback
    assert not (repo / "snapshots").exists() or not list((repo / "snapshots").iterdir())


def test_s3_server_down_names_the_target(tmp_path, s3_server_factory, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=100)
    server = s3_server_factory()
    setup = setup_factory([local_target(tmp_path / "repo"), s3_target_dict(server, new_bucket(server), "offsite")],
                          [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    server.kill()
    out = setup.cli("backup", "--db", "warranty")
    assert out.returncode == 1
    assert "'offsite'" in out.stderr and "cannot connect" in out.stderr
    assert "Traceback" not in out.stderr
    assert json.loads(setup.cli("snapshots", "--json", check=True).stdout) == []
    # The reachable target holds no half-written snapshot either.
    assert not (tmp_path / "repo" / "snapshots").exists() or not list((tmp_path / "repo" / "snapshots").iterdir())


def test_dead_database_server(tmp_path, setup_factory):  # type: ignore[no-untyped-def]
    from core.postgres.cluster import free_port

    setup = setup_factory([local_target(tmp_path / "repo")],
                          [{"name": "gone", "dsn": f"postgresql://postgres@127.0.0.1:{free_port()}/x"}])
    setup.cli("init", check=True)
    out = setup.cli("backup", "--db", "gone")
    assert out.returncode == 1
    assert "cannot connect" in out.stderr and "Traceback" not in out.stderr


def test_init_is_idempotent_and_refuses_another_key(tmp_path, setup_factory):  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    a = setup_factory([local_target(repo)], [])
    first = json.loads(a.cli("init", "--json", check=True).stdout)
    again = json.loads(a.cli("init", "--json", check=True).stdout)
    assert first["repo_id"] == again["repo_id"] and again["created_on"] == [] and again["existing_on"] == ["local1"]
    b = setup_factory([local_target(repo)], [], passphrase="another key")
    out = b.cli("init")
    assert out.returncode == 2 and "wrong passphrase" in out.stderr
    # Adding a target later copies the same repository onto it.
    c = setup_factory([local_target(repo), local_target(tmp_path / "second", "second")], [])
    res = json.loads(c.cli("init", "--json", check=True).stdout)
    assert res["repo_id"] == first["repo_id"] and res["created_on"] == ["second"]
