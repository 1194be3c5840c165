"""Tables as they were at a moment (issue 10, item 5): physical snapshot + WAL in a scratch cluster, then copied.

End to end on the archiving cluster of tests/test_pitr.py (its module
fixture, built anew for this module: wal-push into a real S3 server, a
physical snapshot taken while pgbench wrote). Two tables are made after that
snapshot (so only the WAL holds them), recorded at a moment T, and changed
at T+1 (rows deleted, others renamed); restoring them as of T into a new
database on the live server must give exactly T's rows, with their indexes,
constraints, defaults and trigger, and leave no scratch cluster behind, also
when the copy fails half-way or a table did not exist at T.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from core.config import RestoreConfig, load_config
from core.engine import Engine
from core.errors import PostgresError, RestoreRefused, UsageError
from core.ops import scratch as scratch_space
from core.ops import table_at_moment as tam
from core.ops.physical_restore import RecoveryPoint
from core.ops.table_at_moment import CopiedTable, TableAtMomentRequest, TableAtMomentResult
from core.postgres import logical
from core.postgres.recovery import make_target

import tests.test_pitr as pitr_tests
from tests.fixtures.backstop import BACKSTOP, Setup
from tests.test_pitr import DB, Pitr, _archive_now, _rows, _tables

# The archiving cluster with a physical snapshot (tests/test_pitr.py), instantiated for this module.
pitr = pitr_tests.pitr

_SCHEMA = """
CREATE TABLE parts (sku text PRIMARY KEY, name text NOT NULL);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.updated_at := clock_timestamp();
  RETURN NEW; END$$;
CREATE TABLE claims (
  id bigserial PRIMARY KEY,
  sku text NOT NULL REFERENCES parts (sku),
  amount numeric(12, 2) NOT NULL DEFAULT 0 CHECK (amount >= 0),
  note text,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX claims_sku_idx ON claims (sku);
CREATE TRIGGER claims_touch BEFORE UPDATE ON claims FOR EACH ROW EXECUTE FUNCTION touch();
INSERT INTO parts SELECT 'P' || g, 'part ' || g FROM generate_series(1, 20) g;
INSERT INTO claims (sku, amount, note) SELECT 'P' || (g % 20 + 1), g * 1.5, 'claim ' || g
  FROM generate_series(1, 3000) g;
"""
TABLES = ["public.claims", "public.parts"]


@dataclass
class Scene:
    pitr: Pitr
    setup: Setup  # the pitr config plus restore.scratch_dir
    scratch: Path
    at: str  # the moment T
    lsn: str  # the WAL location at T
    tables: dict[str, Any]  # per-table digests at T


@pytest.fixture(scope="module")
def scene(pitr: Pitr) -> Scene:
    dsn = pitr.primary.dsn(DB)
    with psycopg.connect(dsn) as conn:
        conn.execute(_SCHEMA)
    time.sleep(1.2)  # the snapshot's finished_at (whole seconds) lies well before T
    at, lsn = _rows(dsn, "SELECT clock_timestamp(), pg_current_wal_lsn()::text")[0]
    tables = _tables(dsn)
    time.sleep(0.2)  # every later commit is stamped after T
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM claims WHERE id % 2 = 0")
        conn.execute("UPDATE parts SET name = 'renamed'")
        conn.execute("CREATE TABLE later (id int)")  # did not exist at T
    _archive_now(pitr.primary)
    scratch = pitr.root / "scratch"
    scratch.mkdir()
    doc = yaml.safe_load(pitr.setup.path.read_text())
    doc["restore"] = {"scratch_dir": str(scratch)}
    path = pitr.setup.dir / "scratch.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if pitr.primary.owner is not None:
        os.chown(path, *pitr.primary.owner)  # wal-fetch reads it as the server's account
    return Scene(pitr, Setup(path, pitr.setup.dir, pitr.setup.passphrase_file), scratch, at.isoformat(), lsn,
                 {t: tables[t] for t in TABLES})


def _postmasters(under: Path) -> list[str]:
    """Command lines of running processes that mention ``under`` (a scratch postmaster would)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(under) in cmd and "pytest" not in cmd:
            found.append(cmd)
    return found


def _assert_no_scratch(scratch: Path) -> None:
    assert list(scratch.iterdir()) == []  # the scratch cluster's directory is gone
    assert _postmasters(scratch) == []  # and so is its server
    assert not list(Path("/tmp").glob("backstop-sock-*"))


def _exists(scene: Scene, name: str) -> bool:
    return asyncio.run(logical.database_exists(scene.pitr.primary.dsn(DB), name))


@pytest.fixture
def into(scene: Scene) -> Iterator[str]:
    """The new database's name; dropped afterwards if a test left it."""
    name = "tables_then"
    yield name
    asyncio.run(logical.drop_database(scene.pitr.primary.dsn(DB), name))


def test_tables_come_back_as_they_were_at_the_moment(scene: Scene, into: str) -> None:
    proc = scene.setup.cli("restore", "--db", DB, "--table", TABLES[0], "--table", TABLES[1],
                           "--target-time", scene.at, "--into", into, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    point = out["recovery"]
    assert point["state"] == "promoted" and point["lsn"] and point["commit_time"], out
    assert datetime.fromisoformat(point["commit_time"]) <= datetime.fromisoformat(scene.at), out
    assert [(t["table"], t["rows"]) for t in out["tables"]] == [("public.claims", 3000), ("public.parts", 20)]
    assert out["into"] == into and out["snapshot"] == scene.pitr.snapshot["id"]
    new = scene.pitr.primary.dsn(into)
    restored = _tables(new)
    assert {t: restored[t] for t in TABLES} == scene.tables
    assert set(restored) == set(TABLES)  # only what was asked for (and what it needs)
    # Indexes, constraints, defaults and the trigger (with its function) came along.
    assert {r[0] for r in _rows(new, "SELECT indexname FROM pg_indexes WHERE tablename = 'claims'")} == {
        "claims_pkey", "claims_sku_idx"}
    assert {(r[0], r[1]) for r in _rows(new, "SELECT conname, contype::text FROM pg_constraint "
                                             "WHERE conrelid = 'claims'::regclass")} >= {
        ("claims_pkey", "p"), ("claims_sku_fkey", "f"), ("claims_amount_check", "c")}
    assert _rows(new, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'claims'::regclass AND NOT tgisinternal") == [
        ("claims_touch",)]
    with psycopg.connect(new) as conn:
        # The sequence goes on past T's rows (recovery sets it where WAL last logged it, a few values
        # ahead, as after a crash); the defaults and the trigger work.
        row = conn.execute("INSERT INTO claims (sku) VALUES ('P1') RETURNING id, amount").fetchone()
        assert row is not None and 3000 < row[0] <= 3000 + 33 and row[1] == 0
        before = conn.execute("SELECT updated_at FROM claims WHERE id = 1").fetchone()
        after = conn.execute("UPDATE claims SET note = 'x' WHERE id = 1 RETURNING updated_at").fetchone()
        assert before is not None and after is not None and after[0] > before[0]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO claims (sku, amount) VALUES ('P1', -1)")
    _assert_no_scratch(scene.scratch)
    # The live tables were left as they are.
    assert _rows(scene.pitr.primary.dsn(DB), "SELECT count(*) FROM claims")[0][0] == 1500


def test_a_table_that_did_not_exist_at_the_moment_is_refused_and_nothing_stays(scene: Scene, into: str) -> None:
    proc = scene.setup.cli("restore", "--db", DB, "--table", "public.later", "--target-lsn",
                           scene.lsn, "--into", into)
    assert proc.returncode == 2, proc.stderr
    assert "public.later: no such table" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not _exists(scene, into)
    _assert_no_scratch(scene.scratch)


async def test_a_failure_half_way_drops_the_new_database_and_the_scratch_cluster(
        scene: Scene, into: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tam._copy_table
    calls = 0

    async def fails_second(*args: Any, **kw: Any) -> tuple[int, int]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise PostgresError("injected: the connection to the new database was lost")
        return await real(*args, **kw)

    monkeypatch.setattr(tam, "_copy_table", fails_second)
    monkeypatch.setattr(tam, "COPY_PIECE_BYTES", 4096)  # the rows that do get through travel in many pieces
    # A scratch directory too deep for a Unix socket path: the socket goes to a private one in /tmp.
    deep = scene.scratch / ("d" * 90)
    config = load_config(scene.setup.path)
    engine = Engine(config.model_copy(update={"restore": RestoreConfig(scratch_dir=deep)}))
    try:
        # Paused at the target (a hot standby, read-only): its schema and rows are read all the same.
        with pytest.raises(PostgresError, match="injected"):
            await engine.restore_table_at_moment(_request(scene, into, action="pause"))
        assert calls == 2
        assert not await logical.database_exists(scene.pitr.primary.dsn(DB), into)
        _assert_no_scratch(deep)
        recorded = [r for r in engine.catalog.restores(db=DB) if r.into == into]
        assert any(not r.ok and "injected" in (r.error or "") for r in recorded), recorded
    finally:
        await engine.close()
        shutil.rmtree(deep, ignore_errors=True)


def test_sigterm_while_the_scratch_cluster_runs_removes_it(scene: Scene, into: str) -> None:
    proc = subprocess.Popen([*BACKSTOP, "--config", str(scene.setup.path), "restore", "--db", DB, "--table",
                             TABLES[0], "--target-time", scene.at, "--into", into],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(scene.scratch.glob("backstop-scratch-*/pgdata/postmaster.pid")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the scratch cluster never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr
    assert not _exists(scene, into)
    _assert_no_scratch(scene.scratch)


def _request(scene: Scene, into: str, **kw: Any) -> TableAtMomentRequest:
    return TableAtMomentRequest(db=DB, tables=tuple(TABLES), into=into, target=make_target(time=scene.at, **kw),
                                config_path=scene.setup.path)


async def test_too_little_scratch_space_is_refused_before_anything_is_written(
        scene: Scene, into: str, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(scene.scratch)
    # A full disk cannot be made cheaply (nor safely on a shared machine): the free figure is faked.
    monkeypatch.setattr(scratch_space.shutil, "disk_usage", lambda path: usage._replace(free=4096))
    engine = Engine(load_config(scene.setup.path))
    try:
        with pytest.raises(RestoreRefused) as info:
            await engine.restore_table_at_moment(_request(scene, into))
    finally:
        await engine.close()
    message = str(info.value)
    needed = re.search(r"needs about (\d+) bytes", message)
    assert needed and int(needed.group(1)) > scene.pitr.snapshot["size_bytes"], message
    assert "4096 bytes" in message and str(scene.scratch) in message and "\n" not in message
    assert not await logical.database_exists(scene.pitr.primary.dsn(DB), into)
    _assert_no_scratch(scene.scratch)


async def test_requests_it_cannot_serve_are_refused_before_anything_starts(scene: Scene, into: str) -> None:
    engine = Engine(load_config(scene.setup.path))
    try:
        with pytest.raises(UsageError, match="promote or pause"):
            await engine.restore_table_at_moment(_request(scene, into, action="shutdown"))
        with pytest.raises(UsageError, match="--table"):
            await engine.restore_table_at_moment(TableAtMomentRequest(DB, (), into, make_target(time=scene.at),
                                                                      scene.setup.path))
        with pytest.raises(RestoreRefused, match="already exists"):
            await engine.restore_table_at_moment(_request(scene, DB, action="pause"))
    finally:
        await engine.close()
    _assert_no_scratch(scene.scratch)


# -- pure parts --------------------------------------------------------------------------------------------------


def test_the_physical_restores_advice_about_a_kept_directory_is_dropped() -> None:
    msg = ("recovery of /s/pgdata failed: recovery ended before configured recovery target was reached; check it; "
           "the directory is kept for inspection, remove it before restoring there again")
    assert tam._without_keep_advice(msg) == ("recovery of /s/pgdata failed: recovery ended before configured "
                                             "recovery target was reached; check it")


async def test_the_cli_routes_tables_with_a_target_to_a_moment(capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli.commands.backups import cmd_restore
    from core.cli.parser import build_parser, normalise

    asked: list[TableAtMomentRequest] = []

    class FakeEngine:
        async def restore_table_at_moment(self, req: TableAtMomentRequest) -> TableAtMomentResult:
            asked.append(req)
            point = RecoveryPoint("promoted", "0/3000148", "2026-12-02T18:39:58+00:00", 2)
            return TableAtMomentResult("ab" * 32, req.db, req.into, req.target, point,
                                       [CopiedTable("public.claims", 3000, 123456)], 4.2)

    parser = build_parser()

    def parse(*argv: str) -> Any:
        return normalise(parser.parse_args(["--config", "/etc/b.yaml", "restore", "--db", DB, *argv]))

    args = parse("--table", "public.claims", "--target-xid", "745", "--into", "then")
    assert await cmd_restore(FakeEngine(), args) == 0  # type: ignore[arg-type]
    assert asked[0].tables == ("public.claims",) and asked[0].target.value == "745"
    assert asked[0].config_path == Path("/etc/b.yaml") and asked[0].into == "then"
    out = capsys.readouterr().out
    assert ("restored public.claims (3000 rows) of pitr as of xid 745 into then in 4.2 s (physical snapshot "
            "abababab, recovery promoted at LSN 0/3000148, last commit 2026-12-02T18:39:58+00:00)") in out
    await cmd_restore(FakeEngine(), parse("--table", "public.claims", "--target-name", "x", "--into", "t", "--json"))  # type: ignore[arg-type]
    out_json = json.loads(capsys.readouterr().out)
    assert out_json["tables"] == [{"table": "public.claims", "rows": 3000, "bytes": 123456}]
    assert out_json["recovery"]["lsn"] == "0/3000148" and out_json["target"]["kind"] == "name"
    for wrong, words in ((["--target-time", "2026-01-01T00:00:00"], "--into NEW_DB"),
                         (["--pattern", "x*", "--target-lsn", "0/1", "--into", "t"], "--pattern"),
                         (["--target-lsn", "0/1", "--into", "t", "--pgdata", "/x"], "--pgdata")):
        with pytest.raises(UsageError, match=words):
            await cmd_restore(FakeEngine(), parse("--table", "public.claims", *wrong))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="leave out --type physical"):
        await cmd_restore(FakeEngine(), parse("--type", "physical", "--pgdata", "/x", "--table", "a.b"))  # type: ignore[arg-type]
