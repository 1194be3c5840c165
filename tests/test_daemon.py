"""`backstop daemon` as a real process against a real small database.

Schedules with a seconds field (cronsim's six-field form) keep the wall
time under a minute: backups and verifications happen, SIGHUP reloads the
config (a schedule added to the file starts running, an invalid file is
refused and the old one stays in force), SIGTERM in the middle of a backup
exits 0 and leaves no visible partial snapshot, and a `backstop check`
afterwards finds the repository clean. Then `schedule run` runs a drill and
a key-rotation check by hand, and `schedule list` shows the outcomes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.fixtures.backstop import BACKSTOP, local_target
from tests.fixtures.catalogs import catalog_db

# One host's daemon running the work itself: the SQLite case (on a PostgreSQL catalog the daemon only
# schedules and agents run the work: tests/test_fleet_agents.py).
pytestmark = pytest.mark.sqlite_catalog

ROOT = Path(__file__).resolve().parent.parent


def _rows(catalog: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with catalog_db(catalog, read_only=True) as db:
        return list(db.execute(sql, args).fetchall())


def _wait(what: str, cond: Callable[[], bool], timeout: float, proc: subprocess.Popen[str]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        assert proc.poll() is None, f"the daemon exited ({proc.returncode}) while waiting for {what}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# The retention run forgot a snapshot by the rules, then pruned, both under the schedule's standing approval.
_RETENTION_DONE = ("SELECT 1 FROM schedule_runs WHERE name='retention' AND state='succeeded' AND"
                   " result LIKE '%\"forgotten\": [\"%'")


def _runs(catalog: Path, state: str, name: str | None = None) -> int:
    sql = "SELECT count(*) FROM schedule_runs WHERE state=?" + (" AND name=?" if name else "")
    return int(_rows(catalog, sql, (state, name) if name else (state,))[0][0])


def test_the_daemon_runs_reloads_and_stops_cleanly(tmp_path: Path, setup_factory, make_warranty_db,  # type: ignore[no-untyped-def]
                                                   pg_cluster) -> None:
    name, dsn = make_warranty_db(claims=3000)
    schedules = [
        {"name": "backup", "action": "backup", "db": "warranty", "cron": "*/6 * * * * *"},
        {"name": "verify", "action": "verify", "cron": "3,9,15,21,27,33,39,45,51,57 * * * * *", "sample": "all"},
        {"name": "retention", "action": "retention", "cron": "4,16,28,40,52 * * * * *"},
    ]
    schedules += [{"name": "drill", "action": "drill", "db": "warranty", "cron": "0 3 1 1 *"},
                  {"name": "keys", "action": "key-rotation", "cron": "0 6 * * 1"}]
    setup = setup_factory([local_target(tmp_path / "repo")],
                          [{"name": "warranty", "dsn": dsn, "retention": {"keep_last": 2}}], schedules=schedules)
    doc = yaml.safe_load(setup.path.read_text())
    doc["encryption"]["rotate_every"] = "90d"
    setup.path.write_text(yaml.safe_dump(doc, sort_keys=False))
    setup.cli("init", check=True)
    catalog = setup.dir / "catalog.db"

    log = tmp_path / "daemon.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen([*BACKSTOP, "--config", str(setup.path), "daemon"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=ROOT)
    try:
        # Backups, verifications and retention happen (a verify after the first backup reads a snapshot; retention
        # keeps the newest two, so once a third backup is there it forgets one).
        _wait("backups, a verification that read a snapshot and a retention run that forgot one",
              lambda: _runs(catalog, "succeeded", "backup") >= 3 and bool(_rows(
                  catalog, "SELECT 1 FROM schedule_runs WHERE name='verify' AND state='succeeded' AND"
                           " result LIKE '%\"verified\": [\"%'")) and bool(_rows(catalog, _RETENTION_DONE)), 60, proc)

        # SIGHUP with a broken file: refused, the old schedules keep running.
        good = setup.path.read_text()
        setup.path.write_text(good.replace("*/6 * * * * *", "not a cron"))
        proc.send_signal(signal.SIGHUP)
        _wait("the broken config to be refused", lambda: "reload refused" in log.read_text(), 15, proc)
        setup.path.write_text(good.replace("- name: verify", "- name: verify2\n  action: verify\n"
                                           "  cron: '*/2 * * * * *'\n- name: verify", 1))
        proc.send_signal(signal.SIGHUP)
        _wait("the schedule added by the reload to run", lambda: _runs(catalog, "succeeded", "verify2") >= 1, 15, proc)

        # SIGTERM while a backup runs: exit 0, the run abandoned, no partial snapshot anywhere. Only an early phase
        # will do: a backup seen in 'index' or 'commit' may finish before the signal lands.
        _wait("a backup job in an early phase", lambda: bool(_rows(
            catalog, "SELECT 1 FROM schedule_runs WHERE name='backup' AND state='running'") and _rows(
            catalog, "SELECT 1 FROM jobs WHERE kind='backup' AND state='running'"
                     " AND phase IN ('connect', 'dump', 'upload')")), 30, proc)
        before = {r[0] for r in _rows(catalog, "SELECT id FROM snapshots")}
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "reload refused, the previous config stays in force" in err and "schedules.0.cron" in err
    assert "reloaded" in err and "verify2" in err and "stopped" in err
    assert _runs(catalog, "abandoned", "backup") == 1
    assert _rows(catalog, "SELECT state FROM jobs WHERE kind='backup' ORDER BY started_at DESC LIMIT 1") == [
        ("abandoned",)]
    assert not _rows(catalog, "SELECT 1 FROM schedule_runs WHERE state IN ('running', 'waiting')")
    after = {r[0] for r in _rows(catalog, "SELECT id FROM snapshots")}
    assert after == before and after <= {r[0] for r in _rows(
        catalog, "SELECT json_extract(result, '$.snapshot') FROM schedule_runs WHERE name='backup' AND"
                 " state='succeeded'")}
    snaps = json.loads(setup.cli("--json", "snapshots", check=True).stdout)
    assert len(snaps) == len(after)
    check = setup.cli("check", "--read-data")
    assert check.returncode == 0, check.stdout + check.stderr

    # By hand: a drill restores into a scratch database that is dropped afterwards; keys are not due yet.
    drill = setup.cli("schedule", "run", "drill")
    assert drill.returncode == 0, drill.stderr
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'warranty_drill_%'").fetchone() == (0,)
    assert _rows(catalog, "SELECT kind, ok FROM restores") == [("drill", 1)]
    keys = setup.cli("--json", "schedule", "run", "keys")
    assert keys.returncode == 0 and json.loads(keys.stdout)["result"]["rotated"] is False
    listing = {r["name"]: r for r in json.loads(setup.cli("--json", "schedule", "list", check=True).stdout)}
    assert listing["drill"]["last_state"] == "succeeded" and listing["backup"]["last_state"] == "abandoned"
    assert listing["backup"]["next_run"] is not None


def test_once_notifies_systemd_and_exits(setup_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    setup = setup_factory([local_target(tmp_path / "repo")], [])
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        proc = subprocess.run([*BACKSTOP, "--config", str(setup.path), "daemon", "--once"], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "NOTIFY_SOCKET": str(path)},
                              stdin=subprocess.DEVNULL, cwd=ROOT)
        sock.setblocking(False)
        got = []
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    assert proc.returncode == 0, proc.stderr
    assert "started with 0 schedule(s)" in proc.stderr
    assert got[0].startswith("READY=1\n") and got[-1] == "STOPPING=1"
