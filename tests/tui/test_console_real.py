"""The console against real PostgreSQL and a real repository: the wizard's restores and a verification.

A backup is taken with the real CLI (another process), then the wizard is
driven with the keyboard as an operator would: into a new database, and over
the live one through the MFA gate (refused for a viewer, refused with a wrong
code, completed with a valid one).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
from core.engine import Engine
from core.postgres.fingerprint import fingerprint
from core.security import operator_copy
from core.security.derive import SecurityKeys
from core.security.gate import Identity
from core.security.operators import OperatorStore
from textual.widgets import Input
from tui.app import BackstopApp
from tui.screens.restore import RestoreScreen

from tests.fixtures.backstop import Setup, local_target
from tests.fixtures.otp import CodeBook
from tests.tui.helpers import screen_text, settle


def _backed_up(make_warranty_db, setup_factory, tmp_path: Path) -> tuple[str, str, Setup]:  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=300)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn, "rto_minutes": 15}])
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    return name, dsn, setup


async def _wait(pilot, predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "timed out waiting for the console:\n" + screen_text(pilot.app)
        await asyncio.sleep(0.1)
    await settle(pilot)


async def _wizard_to_destination(pilot, screen: RestoreScreen) -> None:  # type: ignore[no-untyped-def]
    """What happened: host lost; severity high; the one database, whole; latest; accept the plan."""
    await pilot.press("down", "down", "enter")
    await settle(pilot)
    await pilot.press("down", "enter")
    await settle(pilot)
    await pilot.press("enter", "enter", "enter")  # database, whole, latest
    await _wait(pilot, lambda: screen.state.plan is not None)
    assert screen.state.plan is not None and screen.state.plan.ok, screen.state.plan
    await pilot.press("enter")  # accept
    await settle(pilot)
    assert screen.step == "destination"


async def test_wizard_restores_into_a_new_database_for_real(pg_cluster, make_warranty_db, setup_factory,  # type: ignore[no-untyped-def]
                                                            tmp_path) -> None:
    name, dsn, setup = _backed_up(make_warranty_db, setup_factory, tmp_path)
    app = BackstopApp(Engine(setup.config), cursor_blink=False, own_engine=True, keymap={})
    into = f"{name}_tui"
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("6")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, RestoreScreen)
        await _wizard_to_destination(pilot, screen)
        text = screen_text(app)
        assert "Restore into the NEW database" in text
        screen.query_one("#dest-input", Input).value = into
        await pilot.press("enter")  # "new database" is highlighted
        await settle(pilot)
        assert screen.step == "review" and f"new database {into}" in screen_text(app)
        await pilot.press("enter")  # start
        await _wait(pilot, lambda: screen.step == "result")
        text = screen_text(app)
        assert "RESTORED snapshot" in text and f"into {into}" in text, text
        assert "within the RTO of 15m 00s" in text and "recorded in the catalog" in text
        # Recorded for the trends and the KPI.
        restores = app.engine.reader.restores()
        assert [r.into for r in restores] == [into] and restores[0].ok and restores[0].duration_s > 0
        await pilot.press("down", "enter")  # go to the dashboard
        await settle(pilot)
        assert app.current_mode == "dashboard"
        await pilot.press("5")
        await settle(pilot)
        assert "FAIL" not in screen_text(app) and "RTO 15m 00s" in screen_text(app)
    assert await fingerprint(dsn) == await fingerprint(pg_cluster.dsn(into))


async def test_verification_started_from_the_catalog_runs_for_real(pg_cluster, make_warranty_db, setup_factory,  # type: ignore[no-untyped-def]
                                                                   tmp_path) -> None:
    _, _, setup = _backed_up(make_warranty_db, setup_factory, tmp_path)
    app = BackstopApp(Engine(setup.config), cursor_blink=False, own_engine=True, keymap={})
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        before = len(app.engine.reader.verification_rowids())
        await pilot.press("v")
        await settle(pilot)
        assert app.current_mode == "verification"
        await _wait(pilot, lambda: len(app.engine.reader.verification_rowids()) > before)
        await _wait(pilot, lambda: not app.bridge or not app.bridge.running)
        await settle(pilot)
        text = screen_text(app)
        assert "verification finished: succeeded" in text
        newest = app.engine.reader.verification_rows(app.engine.reader.verification_rowids()[:1])[0]
        assert newest.ok and newest.read_data and newest.bytes_read > 0 and newest.target == "local1"


async def test_restore_over_the_live_database_goes_through_the_mfa_gate(pg_cluster, make_warranty_db,  # type: ignore[no-untyped-def]
                                                                         setup_factory, tmp_path) -> None:
    name, dsn, setup = _backed_up(make_warranty_db, setup_factory, tmp_path)
    original = await fingerprint(dsn)
    async with Engine(setup.config) as engine:
        # Enrolled directly in the store (enrolling through the gate needs an admin's codes, tested elsewhere).
        repo = await engine.open_repository()
        operators = OperatorStore(engine.catalog, SecurityKeys.derive(repo.id_key, repo.params.repo_id))
        codes = CodeBook(operators.add("alice", "operator", "test", time.time()))
        operators.add("victor", "viewer", "test", time.time())
        # The repository's sealed records are what the catalog is checked against.
        for op in ("alice", "victor"):
            await operator_copy.save(repo, operators.export(op, time.time()))
    # The live database changes after the backup: a good restore brings the rows back.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM warranty.claim_attachments")

    async def attempt(operator: str, code: str) -> str:
        app = BackstopApp(Engine(setup.config), cursor_blink=False, own_engine=True, keymap={}, operator=operator)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("6")
            await settle(pilot)
            screen = app.screen
            assert isinstance(screen, RestoreScreen)
            await _wizard_to_destination(pilot, screen)
            await pilot.press("down", "enter")  # over the live database
            await settle(pilot)
            assert screen.step == "review" and "OVER THE LIVE DATABASE" in screen_text(app)
            await pilot.press("enter")  # start: the confirmation comes first
            await settle(pilot)
            await pilot.press(*name, "enter", *code, "enter")
            await _wait(pilot, lambda: screen.step == "result")
            return screen_text(app)

    text = await attempt("victor", codes.current())
    assert "REFUSED by the MFA gate" in text and "role viewer" in text
    text = await attempt("alice", codes.wrong())
    assert "REFUSED by the MFA gate" in text and "code is wrong" in text
    assert await fingerprint(dsn) != original  # nothing was changed by the refusals

    text = await attempt("alice", codes.next())
    assert "RESTORED snapshot" in text and f"into {name}" in text, text
    assert await fingerprint(dsn) == original  # the live database is the snapshot again
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        kept = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                           (f"{name}__replaced_%",))]
    assert len(kept) == 1  # the previous database is kept aside
    async with Engine(setup.config) as engine:
        outcomes = [(e.operator, e.action, e.outcome) for e in engine.audit_entries()]
        assert ("victor", "restore.overwrite", "refused") in outcomes
        assert ("alice", "mfa.verify", "wrong") in outcomes
        assert ("alice", "restore.overwrite", "succeeded") in outcomes
        assert (await engine.check_audit(Identity("alice"))).ok
