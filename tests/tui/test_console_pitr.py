"""The console and point-in-time recovery: the recovery-point alert, physical rows and WAL coverage in the
catalog, and the wizard's PITR path, over the seeded catalog plus a real WAL archive on its local target."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from core.engine import PhysicalRestoreResult, make_target
from core.postgres.wal import segment_file
from textual.widgets import Input, Static
from tui.app import BackstopApp
from tui.screens.dashboard import DashboardScreen
from tui.screens.restore import RestoreScreen, pgdata_problem

from tests.fixtures.backstop import Setup
from tests.fixtures.wal_archive import SEG, add_snapshots, archive_wal, physical_record
from tests.tui.helpers import screen_text, settle

MakeApp = Callable[..., BackstopApp]
PHYS = "9f" * 32
WAITING = "8e" * 32


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


async def _archive(setup: Setup, now: float, newest_age_s: float, missing: tuple[int, ...] = ()) -> None:
    """A physical snapshot 3 h before ``now``, WAL every 10 minutes since, the newest ``newest_age_s`` old."""
    t0 = now - 3 * 3600
    last = now - newest_age_s
    step = (last - t0) / 17
    await archive_wal(setup.config, "local1", setup.dir / "repo",
                      {(1, n): t0 + (n - 2) * step for n in range(2, 20) if n not in missing})
    add_snapshots(setup.config.catalog.sqlite_path, [
        physical_record(PHYS, "warranty", _iso(t0 - 300), _iso(t0), 2, 2),
        physical_record(WAITING, "warranty", _iso(now - 600), _iso(now - 540), 30, 31, status="waiting"),
    ])


@pytest.mark.parametrize(("age_min", "alerting"), [(20, True), (5, False)])
async def test_the_dashboard_shows_the_recovery_point_age_and_alerts_past_the_limit(
        make_app: MakeApp, seeded_console: tuple[Setup, float], age_min: int, alerting: bool) -> None:
    setup, now = seeded_console
    await _archive(setup, now, age_min * 60)
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, rounds=5)
        screen = app.screen
        assert isinstance(screen, DashboardScreen) and screen.recovery is not None
        text = screen_text(app)
        state = ", ALERT > 15 min" if alerting else " (limit 15 min)"
        assert f"Recovery point: {age_min}m 00s old{state} · WAL {segment_file(1, 19, SEG)}" in text
        assert ("recovery point is 20 min old" in text) is alerting
        assert any(a.kind == "wal-lag" for a in screen.alerts()) is alerting
        if alerting:
            assert screen.alerts()[0].kind in ("wal-lag", "failed-job", "target-unhealthy", "damaged-copy")


async def test_without_wal_the_recovery_point_is_the_newest_snapshot(make_app: MakeApp,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, rounds=5)
        text = screen_text(app)
        # The seeded catalog's newest snapshot is 30 minutes old, past the 15-minute limit: said in words.
        assert "Recovery point: 30m 00s old, ALERT > 15 min · newest snapshot, WAL not listed" in text


async def test_the_catalog_shows_physical_snapshots_and_the_wal_coverage(
        make_app: MakeApp, seeded_console: tuple[Setup, float]) -> None:
    setup, now = seeded_console
    await _archive(setup, now, 300, missing=(9, 10))
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        await pilot.press("3")
        await settle(pilot, rounds=5)
        text = screen_text(app)
        assert "waiting" in text and "tl1 0/1E000028-0/1F000100" in text  # the newest row: still waiting
        assert f"WAL tl1: {segment_file(1, 2, SEG)} → 00000013 (16 seg" in text
        assert "2 GAP(S)" not in text and f"1 GAP(S): {segment_file(1, 9, SEG)}..0000000A" in text
        detail = screen_text(app)
        assert "physical waiting · timeline 1 · LSN 0/1E000028 → 0/1F000100" in detail
        await pilot.press("down", "down")  # past a billing snapshot to the restorable physical one
        await settle(pilot)
        text = screen_text(app)
        assert "phys    tl1 0/2000028-0/2000100" in text and "physical restorable · timeline 1" in text
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("3")
        await settle(pilot, rounds=5)
        assert "WAL tl1:" in screen_text(app)  # the coverage line fits at 80x24 too


async def _to_the_moment(app: BackstopApp, pilot, when: str) -> RestoreScreen:  # type: ignore[no-untyped-def]
    await pilot.press("6")
    await settle(pilot)
    screen = app.screen
    assert isinstance(screen, RestoreScreen)
    await pilot.press("enter", "enter")  # accidental deletion, low severity
    await settle(pilot)
    await pilot.press("enter")  # no incident time
    await settle(pilot)
    await pilot.press("enter", "enter")  # warranty, whole database
    await settle(pilot)
    assert screen.step == "point"
    await pilot.press("down", "enter")  # a moment in time
    await settle(pilot)
    assert screen.query_one("#moment-input", Input).has_focus
    screen.query_one("#moment-input", Input).value = when
    await pilot.press("enter")
    await settle(pilot, rounds=8)
    return screen


async def test_the_wizard_plans_a_moment_from_physical_and_wal_and_runs_the_recovery(
        make_app: MakeApp, seeded_console: tuple[Setup, float], tmp_path: Path) -> None:
    setup, now = seeded_console
    await _archive(setup, now, 300)
    moment = datetime.fromtimestamp(now - 3600 - 17, UTC)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = await _to_the_moment(app, pilot, "not a time")
        assert screen.step == "point" and "cannot read 'not a time'" in screen_text(app)
        screen.query_one("#moment-input", Input).value = f"{moment:%Y-%m-%d %H:%M:%S}"
        await pilot.press("enter")
        await settle(pilot, rounds=8)
        assert screen.step == "plan"
        text = screen_text(app)
        assert f"point-in-time recovery of the cluster of warranty from physical snapshot {PHYS[:8]}" in text
        assert f"point      {moment:%Y-%m-%d %H:%M:%S} UTC   scope whole cluster" in text
        assert "WAL to replay" in text
        await pilot.press("enter")  # accept
        await settle(pilot)
        assert screen.step == "destination" and screen.query_one("#pgdata-input", Input).has_focus
        assert "OVER the live" not in screen_text(app)  # a recovery never overwrites
        full = tmp_path / "full"
        full.mkdir()
        (full / "PG_VERSION").write_text("16\n")
        screen.query_one("#pgdata-input", Input).value = str(full)
        await pilot.press("enter")
        await settle(pilot)
        assert screen.step == "destination" and "is not an empty directory" in screen_text(app)
        target = tmp_path / "pitr"
        screen.query_one("#pgdata-input", Input).value = str(target)
        await pilot.press("enter")
        await settle(pilot)
        assert screen.step == "review"
        text = str(screen.query_one("#review-text", Static).content)  # unwrapped: the path is long
        assert f"new data directory {target} (recovers to {moment:%Y-%m-%d %H:%M:%S} UTC)" in text
        assert "whole cluster" in text and "(physical)" in text
        await pilot.press("enter")  # start
        await settle(pilot, rounds=10)
        # The snapshot is only catalogued (no base backup in the repository): the restore refuses, having
        # written nothing, and the wizard says so.
        assert screen.step == "result"
        text = screen_text(app)
        assert "RESTORE FAILED" in text and "data directory is removed again" in text
        assert not target.exists() or not any(target.iterdir())
        # What a successful one shows (the real recovery is tested end to end in tests/test_pitr.py).
        screen.state.physical_result = PhysicalRestoreResult(
            PHYS, "warranty", str(target), make_target(time=moment.isoformat()), 1234, 3 * 2**30, 42.0, "ok",
            segment_file(1, 2, SEG), False, None, "pg_ctl start -D " + str(target), warnings=["slow target"])
        screen.show_result()
        await settle(pilot)
        text = str(screen.query_one("#result-text", Static).content)
        assert f"RECOVERY PREPARED: physical snapshot {PHYS[:8]} of warranty written into {target}" in text
        assert "pg_verifybackup: ok" in text and f"pg_ctl start -D {target}" in text and "WARNING slow target" in text


async def test_the_wizard_without_its_config_path_and_tables_at_a_moment(
        make_app: MakeApp, seeded_console: tuple[Setup, float], tmp_path: Path) -> None:
    setup, now = seeded_console
    await _archive(setup, now, 300)
    app = make_app()
    app.engine.config_path = None
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = await _to_the_moment(app, pilot, _iso(now - 3600)[:19].replace("T", " "))
        assert screen.step == "plan" and screen.state.physical
        await pilot.press("enter")
        await settle(pilot)
        screen.query_one("#pgdata-input", Input).value = str(tmp_path / "new")
        await pilot.press("ctrl+n")  # the form's continue key
        await settle(pilot)
        assert screen.step == "review"
        await pilot.press("enter")
        await settle(pilot, rounds=6)
        assert "does not know its config file" in screen_text(app)
        # Tables as of a moment are planned too, but recovered through the CLI's scratch cluster.
        screen.state.tables, screen.state.whole = ["public.claims"], False
        screen.show_step("plan")
        await settle(pilot, rounds=8)
        assert "scratch cluster" in screen_text(app)
        await pilot.press("enter")
        await settle(pilot)
        assert screen.step == "plan"  # not accepted: the notification names the CLI command


def test_a_data_directory_must_be_new_or_empty(tmp_path: Path) -> None:
    assert pgdata_problem(" ") is not None
    assert pgdata_problem(str(tmp_path / "absent")) is None
    assert pgdata_problem(str(tmp_path)) is None  # empty
    (tmp_path / "f").write_text("x")
    assert "not an empty directory" in (pgdata_problem(str(tmp_path)) or "")
    assert "not an empty directory" in (pgdata_problem(str(tmp_path / "f")) or "")
