"""The wizard on a PostgreSQL catalog hands a restore to the agent beside the database (a real `backstop agent`
process): into a new database it runs there with its progress in the wizard; over the live database the console
asks for the code and the control plane refuses a wrong one before anything is queued."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from core.catalog.postgres import PostgresCatalog
from core.engine import Engine
from core.fleet.queue import ControlPlane
from core.postgres.cluster import LocalCluster
from textual.widgets import Input, Log
from tui.app import BackstopApp
from tui.screens.restore import RestoreScreen

from tests.fixtures.backstop import Setup, local_target, write_setup
from tests.test_fleet_agents import _owner_rows, _start, _stop
from tests.test_fleet_agents import _wait as _wait_for
from tests.test_security import enrol
from tests.tui.helpers import screen_text, settle
from tests.tui.test_console_real import _wait, _wizard_to_destination

COUNT = "SELECT count(*) FROM warranty.claims"


@pytest.fixture
def one_agent(tmp_path: Path, pg_cluster: LocalCluster, make_warranty_db,  # type: ignore[no-untyped-def]
              pg_catalog_url: Callable[[], str]) -> Iterator[dict[str, Any]]:
    """A control plane (catalog on PostgreSQL, a snapshot of warranty taken) and agent host-a serving warranty."""
    name, dsn = make_warranty_db(claims=300)
    url = pg_catalog_url()
    PostgresCatalog(url).close()  # the control plane's schema
    role = f"agent_a_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        ControlPlane(conn).create_agent_role(role)
        ControlPlane(conn).register_agent("host-a", role, ["warranty"])
    repo, db = tmp_path / "repo", {"name": "warranty", "dsn": dsn}
    agent = write_setup(tmp_path / "host-a", [local_target(repo)], [db], fleet={
        "agent": "host-a", "control_plane": url.replace("postgresql://postgres@", f"postgresql://{role}@"),
        "heartbeat_s": 0.5, "lease_s": 2.0, "poll_s": 0.5})
    control = write_setup(tmp_path / "control", [local_target(repo)], [db], catalog={"url": url})
    control.cli("init", check=True)
    control.cli("backup", "--db", "warranty", check=True)
    try:
        yield {"url": url, "name": name, "dsn": dsn, "agent": agent, "control": control, "tmp": tmp_path}
    finally:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as su:
            su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            su.execute(f'DROP ROLE IF EXISTS "{role}"')


async def _restore_into_new(pilot: Any, app: BackstopApp, into: str) -> str:
    """Screen 6, keyboard only: the whole database, latest, into a new database; the result's text."""
    await settle(pilot)
    await pilot.press("6")
    await settle(pilot)
    screen = app.screen
    assert isinstance(screen, RestoreScreen)
    await _wizard_to_destination(pilot, screen)
    screen.query_one("#dest-input", Input).value = into
    await pilot.press("enter")  # into the new database
    await settle(pilot)
    assert screen.step == "review" and f"new database {into}" in screen_text(app)
    await pilot.press("enter")  # start
    started = time.monotonic()
    await _wait(pilot, lambda: screen.step == "result", timeout=30)
    logged = list(screen.query_one("#restore-log", Log).lines)
    print(f"restore into {into}: {time.monotonic() - started:.1f} s; log: {logged}")
    text = " ".join(screen_text(app).split())
    assert "RESTORED snapshot" in text, text
    return text


async def test_the_wizard_restores_by_the_agent_and_a_wrong_code_over_the_live_database_queues_nothing(
        one_agent: dict[str, Any], pg_cluster: LocalCluster) -> None:
    url, name, control = one_agent["url"], one_agent["name"], one_agent["control"]
    control_setup: Setup = control
    codes = enrol(control_setup, "alice", "admin")
    log = one_agent["tmp"] / "agent-a.log"
    into = f"{name}_fleet"  # dropped with the source by make_warranty_db
    # Before the agent's first heartbeat no agent serves warranty: the console restores itself, and says so.
    app = BackstopApp(Engine(control_setup.config), cursor_blink=False, own_engine=True, keymap={}, operator="alice")
    async with app.run_test(size=(120, 40)) as pilot:
        text = await _restore_into_new(pilot, app, f"{name}_here")
        assert f"into {name}_here" in text and "WARNING no live agent serves warranty: restored from this host" in text
    assert _owner_rows(url, "SELECT count(*) FROM fleet.jobs")[0][0] == 0
    assert _owner_rows(pg_cluster.dsn(f"{name}_here"), COUNT) == _owner_rows(one_agent["dsn"], COUNT)
    procs = [_start(one_agent["agent"], "agent", log)]
    try:
        _wait_for("the agent's heartbeat", lambda: bool(_owner_rows(
            url, "SELECT 1 FROM fleet.agents WHERE name = 'host-a' AND heartbeat_at IS NOT NULL")), 30, procs, [log])
        app = BackstopApp(Engine(control_setup.config), cursor_blink=False, own_engine=True, keymap={},
                          operator="alice")
        async with app.run_test(size=(120, 40)) as pilot:
            text = await _restore_into_new(pilot, app, into)
            screen = app.screen
            assert isinstance(screen, RestoreScreen)
            assert "RESTORED snapshot" in text and f"into {into}" in text, text
            assert "restored by agent host-a (fleet job" in text and "recorded by agent host-a" in text
            logged = list(screen.query_one("#restore-log", Log).lines)
            assert any(ln.startswith("queued as fleet job") and ln.endswith("for agent host-a") for ln in logged)
            assert screen.state.fleet_job is not None and screen.state.fleet_job[1] == "host-a"
            jobs = _owner_rows(url, "SELECT id, kind, agent, state, args->'restore'->>'target' FROM fleet.jobs")
            assert screen.state.plan is not None and screen.state.plan.target
            # The agent is told which target the planner chose (read there first).
            assert jobs == [(screen.state.fleet_job[0], "restore", "host-a", "succeeded", screen.state.plan.target)]
            # Its timing is in this catalog's restore history, under the agent's name.
            assert [(r.db, r.ok, (r.job_id or "")[:7]) for r in app.engine.catalog.restores()
                    if r.into == into] == [("warranty", True, "host-a:")]
            assert _owner_rows(pg_cluster.dsn(into), COUNT) == _owner_rows(one_agent["dsn"], COUNT)

            # Over the live database: the code is asked here and checked by the control plane; wrong, nothing queued.
            await pilot.press("enter")  # start another restore
            await settle(pilot)
            await pilot.press("home")  # the incident list keeps its cursor from the first pass
            await _wizard_to_destination(pilot, screen)
            await pilot.press("down", "enter")  # over the live database
            await settle(pilot)
            assert screen.step == "review" and "OVER THE LIVE DATABASE" in screen_text(app)
            await pilot.press("enter")  # start: the confirmation comes first
            await settle(pilot)
            await pilot.press(*name, "enter", *codes.wrong(), "enter")
            await _wait(pilot, lambda: screen.step == "result", timeout=30)
            text = " ".join(screen_text(app).split())
            assert "REFUSED by the MFA gate" in text and "Nothing was changed" in text, text
            assert _owner_rows(url, "SELECT count(*) FROM fleet.jobs")[0][0] == 1
    finally:
        for p in procs:
            _stop(p)
