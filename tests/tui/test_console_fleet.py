"""The Fleet screen (0) at 80x24: agents with their heartbeat, the fleet's jobs, a job another process starts
seen within a second through NOTIFY (not the console's poll), and one explanatory line on an SQLite catalog."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from core.catalog.postgres import PostgresCatalog
from core.engine import Engine
from core.fleet.queue import AgentSession, ControlPlane
from core.postgres.cluster import LocalCluster
from tui.app import BackstopApp
from tui.screens.fleet import FleetScreen
from tui.widgets.virtual_table import VirtualTable

from tests.fixtures.backstop import Setup, local_target, write_setup
from tests.tui.helpers import screen_text, settle

POLL_S = 30.0  # the console's own check of the catalog: far slower than the 1 s NOTIFY must achieve

# A separate process: queue a job as the catalog's owner, then as the agent's role claim it (it runs) and
# report progress; after each commit it prints the wall-clock time.
AGENT_PROCESS = textwrap.dedent("""
    import sys, time, psycopg
    from core.fleet.queue import AgentSession, ControlPlane
    owner_url, agent_url, agent = sys.argv[1:4]
    owner = psycopg.connect(owner_url, autocommit=True)
    session = AgentSession(psycopg.connect(agent_url, autocommit=True))
    sys.stdin.readline()  # go
    job_id = ControlPlane(owner).enqueue(agent, "backup", "warranty", {"type": "logical"})
    job = session.claim()
    assert job is not None and job.id == job_id
    print(job_id, time.time(), flush=True)  # committed: running
    sys.stdin.readline()  # go on
    session.heartbeat(job, {"phase": "dump", "bytes_done": 42, "bytes_total": 100, "rate": 1e6})
    print(time.time(), flush=True)  # committed: progress
    sys.stdin.readline()
""")


def _as(url: str, role: str) -> str:
    # The test cluster trusts loopback logins: the role is who the server sees.
    return url.replace("postgresql://postgres@", f"postgresql://{role}@")


@pytest.fixture
def fleet_catalog(tmp_path: Path, pg_catalog_url: Callable[[], str],
                  pg_cluster: LocalCluster) -> Iterator[dict[str, Any]]:
    """A PostgreSQL catalog with three agents (one alive, one silent for 5 min, one never seen) and a config."""
    url = pg_catalog_url()
    PostgresCatalog(url).close()  # migrates: the fleet schema and the agent group
    suffix = uuid.uuid4().hex[:8]
    roles = {name: f"agent_{name.replace('-', '_')}_{suffix}" for name in ("edge-1", "edge-2", "edge-3")}
    owner = psycopg.connect(url, autocommit=True)
    conns: list[psycopg.Connection[Any]] = []
    try:
        plane = ControlPlane(owner)
        for name, role in roles.items():
            plane.create_agent_role(role)
            plane.register_agent(name, role, ["billing", "warranty"])
        for name in ("edge-1", "edge-2"):
            conns.append(psycopg.connect(_as(url, roles[name]), autocommit=True))
            AgentSession(conns[-1]).beat(f"{name}.example", "1.4.0", ["warranty", "billing"])
        owner.execute("UPDATE fleet.agents SET heartbeat_at = now() - interval '5 minutes' WHERE name = 'edge-2'")
        failed = plane.enqueue("edge-2", "verify", "billing", max_attempts=1)
        job = AgentSession(conns[1]).claim()
        assert job is not None and job.id == failed
        AgentSession(conns[1]).finish(job, ok=False, error="target offsite unreachable")
        setup = write_setup(tmp_path / "fleet", [local_target(tmp_path / "repo")],
                            [{"name": "warranty", "dsn": "postgresql://postgres@127.0.0.1:9/warranty"}],
                            catalog={"url": url})
        (tmp_path / "repo").mkdir()
        yield {"url": url, "setup": setup, "roles": roles, "owner": owner}
    finally:
        for c in conns:
            c.close()
        owner.close()
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as su:
            for role in roles.values():
                su.execute(f'DROP ROLE IF EXISTS "{role}"')


def _app(setup: Setup) -> BackstopApp:
    return BackstopApp(Engine(setup.config), poll_interval=POLL_S, cursor_blink=False, own_engine=True,
                       operator="tester", keymap={})


def _rows(app: BackstopApp, table_id: str) -> list[list[str]]:
    table = app.screen.query_one(table_id, VirtualTable)
    return [[c if isinstance(c, str) else c[0] for c in row] for row in table.source.rows(0, table.row_count)]


def _listening(url: str) -> bool:
    """The console's change feed has said LISTEN on the catalog (a commit before that would go unseen)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND application_name = 'backstop-feed' AND query ILIKE 'LISTEN%%'").fetchone()
    return bool(row and row[0])


async def _until(pilot: Any, found: Callable[[], bool], timeout: float) -> float:
    """Wall-clock time when ``found()`` first held (checked every 5 ms on the app's loop)."""
    deadline = time.monotonic() + timeout
    while not found():
        assert time.monotonic() < deadline, "not seen in time"
        await pilot.pause(0.005)
    return time.time()


async def test_fleet_screen_lists_agents_and_sees_another_process_start_a_job_within_1s_by_notify(
        fleet_catalog: dict[str, Any]) -> None:
    url, roles = fleet_catalog["url"], fleet_catalog["roles"]
    app = _app(fleet_catalog["setup"])
    await _fleet_screen_scenario(app, url, roles)


async def _fleet_screen_scenario(app: BackstopApp, url: str, roles: dict[str, str]) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("0")
        await settle(pilot)
        assert isinstance(app.screen, FleetScreen)
        text = screen_text(app)
        assert text.splitlines()[0].startswith(" 0 Fleet") and "3 agent(s), 2 silent" in text
        agents = {r[0]: r for r in _rows(app, "#fleet-agents")}
        assert agents["edge-1"][1:3] == ["edge-1.example", "1.4.0"] and agents["edge-1"][3].endswith("s ago")
        assert agents["edge-2"][3].startswith("5m ") and agents["edge-2"][3].endswith("ago STALE")
        assert agents["edge-3"][3] == "never" and agents["edge-1"][4] == "billing, warranty"
        jobs = _rows(app, "#fleet-jobs")
        assert [j[1:6] for j in jobs] == [["edge-2", "verify", "billing", "failed", "1"]]
        assert jobs[0][8] == "target offsite unreachable"
        assert "edge-1.example" in text and "failed" in text and "Filter" in text.splitlines()[-1]

        deadline = time.monotonic() + 10
        while not await asyncio.to_thread(_listening, url):
            assert time.monotonic() < deadline, "the console's change feed never listened"
            await asyncio.sleep(0.05)

        proc = subprocess.Popen([sys.executable, "-c", AGENT_PROCESS, url, _as(url, roles["edge-1"]), "edge-1"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            line = await asyncio.to_thread(proc.stdout.readline)
            job_id, committed = line.split()
            seen = await _until(pilot, lambda: any(r[0] == job_id and r[4] == "running"
                                                   for r in _rows(app, "#fleet-jobs")), 5.0)
            latency = seen - float(committed)
            proc.stdin.write("\n")
            proc.stdin.flush()
            committed2 = float(await asyncio.to_thread(proc.stdout.readline))
            seen2 = await _until(pilot, lambda: any(r[0] == job_id and r[6] == "42% dump"
                                                    for r in _rows(app, "#fleet-jobs")), 5.0)
            latency2 = seen2 - committed2
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        print(f"NOTIFY latency: running {latency * 1000:.0f} ms, progress {latency2 * 1000:.0f} ms")
        assert latency < 1.0, f"the running job showed {latency:.2f} s after its commit"
        assert latency2 < 1.0, f"its progress showed {latency2:.2f} s after its commit"
        await settle(pilot)
        row = next(ln for ln in screen_text(app).splitlines() if ln.strip().startswith(job_id))
        assert "edge-1" in row and "running" in row and "42% dump" in row

        # The filter narrows both lists, keyboard only.
        await pilot.press("slash", *"failed", "enter")
        await settle(pilot)
        assert [r[0] for r in _rows(app, "#fleet-jobs")] == [jobs[0][0]] and _rows(app, "#fleet-agents") == []
        detail = " ".join(screen_text(app).split())  # the job under the cursor in full, below the table
        assert f"job {jobs[0][0]}: verify of billing on edge-2, failed (attempt 1)" in detail
        assert "error: target offsite unreachable" in detail and "No agent matches the filter." in detail


async def test_fleet_screen_on_an_sqlite_catalog_explains_what_it_needs(make_app: Callable[..., Any]) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("0")
        await settle(pilot)
        assert isinstance(app.screen, FleetScreen)
        text = " ".join(screen_text(app).split())
        assert "the fleet needs the catalog on PostgreSQL" in text
        assert "backstop catalog migrate --to URL" in text
        assert "Traceback" not in text and "needs a PostgreSQL catalog" in text
