"""The demo's private cluster asks everyone for the superuser's password: no local user gets in for free.

A trusting cluster on 127.0.0.1 lets any local user log in as the superuser and
run programs as the server's account (``COPY ... TO PROGRAM``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from core.postgres.cluster import LocalCluster, free_port

BACKSTOP = [sys.executable, "-m", "core.cli"]


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    # Not under pytest's basetemp: as root the server runs as another user who
    # must traverse the parents (see the pg_cluster fixture).
    root = Path(tempfile.mkdtemp(prefix="backstop-test-sandbox-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _without_password(port: int, dbname: str = "postgres") -> str:
    # A passfile that does not exist: libpq must not find a password anywhere.
    return f"postgresql://postgres@127.0.0.1:{port}/{dbname}?passfile=/nonexistent/pgpass&connect_timeout=5"


def _effective_hba_lines(data_dir: Path) -> list[list[str]]:
    lines = [ln.split("#", 1)[0].split() for ln in (data_dir / "pg_hba.conf").read_text().splitlines()]
    return [ln for ln in lines if ln]


def _assert_locked(data_dir: Path, port: int, pgpass: Path) -> None:
    """Only a client holding the password gets in."""
    hba = _effective_hba_lines(data_dir)
    assert hba, "pg_hba.conf has no rules"
    assert all(ln[-1] == "scram-sha-256" for ln in hba), hba
    assert not any("trust" in ln for ln in hba), hba
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(_without_password(port)).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(_without_password(port) + "&password=guess").close()
    st = pgpass.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()


def _demo(sandbox: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BACKSTOP, "demo", "--no-tui", "--dir", str(sandbox), *args], capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


@pytest.fixture
def sandbox(scratch_dir: Path) -> Iterator[Path]:
    """A directory for `backstop demo --dir`; its server is stopped afterwards."""
    path = scratch_dir / "demo"
    try:
        yield path
    finally:
        if (path / "pg").exists():
            _demo(path, "--stop")


def test_password_mode_cluster_refuses_connections_without_the_password(scratch_dir: Path) -> None:
    pgpass = scratch_dir / "pgpass"
    cluster = LocalCluster(scratch_dir / "data", pgpass=pgpass, settings={"fsync": "off"})
    cluster.init(no_sync=True)
    try:
        cluster.start()
        password = pgpass.read_text().strip().rsplit(":", 1)[1]
        assert len(password) >= 32
        assert password not in cluster.dsn() and "passfile=" in cluster.dsn()
        _assert_locked(cluster.data_dir, cluster.port, pgpass)
        with psycopg.connect(cluster.dsn(), connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        # Local sockets too: no method but SCRAM is left for anyone.
        if (cluster.data_dir / f".s.PGSQL.{cluster.port}").exists():
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(host=str(cluster.data_dir), port=cluster.port, user="postgres", dbname="postgres",
                                passfile="/nonexistent/pgpass", connect_timeout=5).close()
        # The password initdb read is gone; the password file is the only copy.
        assert sorted(p.name for p in scratch_dir.iterdir()) == ["data", "pgpass"]
    finally:
        cluster.stop()


def _grown(claims: int) -> int:
    """How many claims a first demo run leaves: its history grows them before each extra backup."""
    from core.sandbox.demo import GROWTH, HISTORY_BACKUPS

    for _ in range(HISTORY_BACKUPS):
        claims += round(claims * GROWTH)
    return claims


def test_demo_runs_in_password_mode(sandbox: Path) -> None:
    out = _demo(sandbox, "--claims", "300")
    assert out.returncode == 0, out.stdout + out.stderr
    port = json.loads((sandbox / "sandbox.json").read_text())["port"]
    _assert_locked(sandbox / "pg", port, sandbox / "pgpass")
    password = (sandbox / "pgpass").read_text().strip().rsplit(":", 1)[1]
    config_text = (sandbox / "backstop.yaml").read_text()
    assert password not in config_text and password not in out.stdout + out.stderr
    dsn = yaml.safe_load(config_text)["databases"][0]["dsn"]
    assert "passfile=" in dsn
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT count(*) FROM warranty.claims").fetchone() == (_grown(300),)
    check = subprocess.run([*BACKSTOP, "--config", str(sandbox / "backstop.yaml"), "check", "--read-data"],
                           capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert check.returncode == 0, check.stderr

    # The sandbox's server archives its WAL through `backstop wal-push` (as its own, unprivileged account when
    # the demo runs as root): a switched segment reaches the archive, and a physical snapshot can be taken.
    cfg = [*BACKSTOP, "--config", str(sandbox / "backstop.yaml")]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.wal_probe AS SELECT 1 AS n")
        switched = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    deadline = time.monotonic() + 120
    while True:
        status = json.loads(subprocess.run([*cfg, "wal", "status", "--json"], capture_output=True, text=True,
                                           timeout=120, check=True).stdout)
        if status["newest"] is not None and status["newest"] >= switched:
            break
        log = (sandbox / "pg" / "server.log").read_text(errors="replace")
        assert time.monotonic() < deadline, f"{switched} never archived: {status}; {log[-2000:]}"
        time.sleep(0.5)
    physical = subprocess.run([*cfg, "backup", "--db", "warranty", "--type", "physical"], capture_output=True,
                              text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert physical.returncode == 0, physical.stdout + physical.stderr

    # The sandbox's fleet: its agent (in a role of its own, password in a 0600 passfile) runs a backup the
    # control plane queued for it, and the control plane's catalog (a copy of the sandbox's) then lists it.
    fleet = sandbox / "fleet"
    assert stat.S_IMODE((fleet / "agent.pgpass").stat().st_mode) == 0o600
    for name in ("agent.yaml", "control.yaml"):
        assert password not in (fleet / name).read_text()
    control = [*BACKSTOP, "--config", str(fleet / "control.yaml")]
    before = json.loads(subprocess.run([*control, "snapshots", "--json"], capture_output=True, text=True,
                                       timeout=120, check=True).stdout)
    from core.sandbox.demo import HISTORY_BACKUPS

    assert len(before) == 1 + HISTORY_BACKUPS  # the first backup and the history came over by `catalog migrate`
    agent = subprocess.Popen([*BACKSTOP, "--config", str(fleet / "agent.yaml"), "agent"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(a["heartbeat_at"] for a in json.loads(subprocess.run(
                [*control, "agents", "--json"], capture_output=True, text=True, timeout=120, check=True).stdout)):
            assert time.monotonic() < deadline and agent.poll() is None, "the sandbox's agent never reported"
            time.sleep(0.2)
        listed = subprocess.run([*control, "agents"], capture_output=True, text=True, timeout=120, check=True)
        assert "advisory" not in listed.stderr, listed.stderr  # the sandbox took them from PUBLIC (README step 1)
        run = subprocess.run([*control, "schedule", "run", "hourly"], capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL)
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    after = json.loads(subprocess.run([*control, "snapshots", "--json"], capture_output=True, text=True,
                                      timeout=120, check=True).stdout)
    assert len(after) == len(before) + 1

    # `demo --stop` stops the sandbox's resident WAL pusher with its server.
    pusher = json.loads(subprocess.run([*cfg, "wal", "status", "--json"], capture_output=True, text=True,
                                       timeout=120, check=True).stdout)["pusher_pid"]
    assert pusher, "the sandbox's wal-push calls started no pusher"
    assert _demo(sandbox, "--stop").returncode == 0
    deadline = time.monotonic() + 30
    while _alive(pusher):
        assert time.monotonic() < deadline, f"pusher {pusher} still runs after demo --stop"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("running", [True, False], ids=["server-running", "server-stopped"])
def test_demo_migrates_a_trusting_sandbox(sandbox: Path, running: bool) -> None:
    # A sandbox as earlier versions of the demo made it: trust, no password file.
    port = free_port()
    sandbox.mkdir(parents=True)
    (sandbox / "sandbox.json").write_text(json.dumps({"port": port}))
    old = LocalCluster(sandbox / "pg", port=port, settings={"fsync": "off"})
    old.init(no_sync=True)
    old.start()
    try:
        psycopg.connect(_without_password(port)).close()  # trusting, as it was
        if not running:
            old.stop()
        out = _demo(sandbox, "--claims", "300")
        assert out.returncode == 0, out.stdout + out.stderr
        _assert_locked(sandbox / "pg", port, sandbox / "pgpass")
        dsn = yaml.safe_load((sandbox / "backstop.yaml").read_text())["databases"][0]["dsn"]
        assert "passfile=" in dsn
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            assert conn.execute("SELECT count(*) FROM warranty.claims").fetchone() == (_grown(300),)
        # A second run finds nothing left to migrate and still works.
        again = _demo(sandbox, "--claims", "300")
        assert again.returncode == 0, again.stdout + again.stderr
        _assert_locked(sandbox / "pg", port, sandbox / "pgpass")
    finally:
        old.stop()
