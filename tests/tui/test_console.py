"""Pilot tests of the console over a seeded catalog: every screen, the keys, filters, help, live updates."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from core.events import JobFinished, JobStarted, Progress
from textual.widgets import DataTable, Input, OptionList
from tui.app import SCREENS_IN_ORDER, BackstopApp
from tui.bridge import JobProgressed
from tui.screens.catalog import CatalogScreen
from tui.screens.modals import (
    ConfirmScreen,
    DefinitionsScreen,
    DestructiveApproval,
    DestructiveConfirmScreen,
    HelpScreen,
)
from tui.screens.restore import RestoreScreen
from tui.widgets.virtual_table import VirtualTable

from tests.tui.helpers import screen_text, settle

MakeApp = Callable[..., BackstopApp]


async def test_digits_switch_to_every_screen_and_escape_goes_back(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for mode, cls in SCREENS_IN_ORDER:
            await pilot.press(str(cls.NUMBER))
            await settle(pilot)
            assert type(app.screen) is cls and app.current_mode == mode
            assert f" {cls.NUMBER} {cls.SCREEN_TITLE}" in screen_text(app).splitlines()[0]
        await pilot.press("escape")  # from the last screen back to the one before
        await settle(pilot)
        assert app.current_mode == SCREENS_IN_ORDER[-2][0]


async def test_each_screen_shows_its_data(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        text = screen_text(app)
        assert "87.5% · ALERT" in text and "Running jobs (1)" in text and "backup warranty" in text
        assert "of the last 30 days never verified" in text and "is damaged on target offsite" in text
        expectations = {
            "2": ["r00000000001", "RUN", "logical backup of warranty on backup-02 pid 4242", "started:"],
            "3": ["All (56)", "billing (28)", "local1:ok offsite:ok", "never verified"],
            "4": ["(repo)", "FAILED", "pack data/7f/7f3a", "read-back"],
            "5": ["RTO 30m 00s", "forecast: warranty: recovery time reaches the RTO of 30m 00s on 2028-12-06",
                  "Backup duration (56 backups, 30d)", "failures by kind: backup 2",
                  "warranty: keeping every snapshot (28 snapshot(s)) costs 642.2 MiB", "by class: PostgresError 3"],
            "6": ["What happened?", "Accidental deletion", "Ransomware / compromise", "Restore drill"],
            "7": ["warranty_drill_", "3 drill(s), 2 passed", "billing-20261117T090000Z", "6m 35s/1h 00m",
                  "proven: warranty: local1 11-16 09:00 · offsite NEVER"],
            "8": ["restore.overwrite", "refused", "operator.add", "V verifies it"],
        }
        for key, wanted in expectations.items():
            await pilot.press(key)
            await settle(pilot)
            text = screen_text(app)
            for w in wanted:
                assert w in text, f"screen {key}: {w!r} missing"


async def test_help_lists_every_active_binding_with_its_id(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        active = {b.id for _, b, _, _ in app.screen.active_bindings.values() if b.id}
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        listed = {e.binding_id for _, entries in app.screen.sections for e in entries}
        assert active <= listed
        assert {f"goto.{m}" for m, _ in SCREENS_IN_ORDER} | {"help", "quit", "back", "palette", "catalog.filter",
                                                              "catalog.verify", "table.last"} <= listed
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, CatalogScreen)


async def test_every_binding_is_in_the_footer_or_marked(make_app: MakeApp) -> None:
    """Screen and app bindings show in the footer; only standard navigation keys are left to help."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        for _, cls in SCREENS_IN_ORDER:
            await pilot.press(str(cls.NUMBER))
            await settle(pilot)
            for node, binding, _, _ in app.screen.active_bindings.values():
                if binding.id and (node is app.screen or node is app):
                    assert binding.show or binding.id == "palette", (cls.__name__, binding)
            footer = screen_text(app).splitlines()[-1]
            assert "Screens" in footer and "Help" in footer and "Quit" in footer and "^p" in footer


async def test_catalog_filter_and_database_choice(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        table = app.screen.query_one("#snapshots", VirtualTable)
        assert table.row_count == 56
        await pilot.press("slash", *"billing 11-19")
        await settle(pilot)
        assert table.row_count == 1
        assert "matching 'billing 11-19'" in screen_text(app)
        await pilot.press("escape")  # clears the filter, back to the list
        await settle(pilot)
        assert table.row_count == 56 and app.focused is table
        # The database list narrows the listing.
        await pilot.press("shift+tab", "down")
        await settle(pilot)
        assert isinstance(app.focused, OptionList) and table.row_count == 28


async def test_catalog_jumps_to_the_end(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        await pilot.press("end")
        await settle(pilot)
        table = app.screen.query_one("#snapshots", VirtualTable)
        assert table.cursor == 55
        screen = app.screen
        assert isinstance(screen, CatalogScreen)
        row = screen.current_row()
        assert row is not None and row.finished_at.startswith("2026-10-23")
        assert row.id in screen_text(app)  # the detail line follows the cursor


async def test_jobs_filter_and_event_log(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one("#jobs-table", DataTable)
        assert table.row_count == 67
        await pilot.press("slash", *"restore", "enter")
        await settle(pilot)
        assert table.row_count == 8 and app.focused is table
        await pilot.press("down")
        await settle(pilot)
        text = screen_text(app)
        assert "restore of" in text and "finished:" not in text  # restores in the seed have no events


async def test_a_job_started_by_another_process_appears_within_a_second(make_app: MakeApp, seeded_setup) -> None:  # type: ignore[no-untyped-def]
    app = make_app(poll_interval=0.2)
    code = ("import sys; from pathlib import Path; from core.catalog.store import Catalog; "
            "from core.events import JobStarted, Progress; c = Catalog(Path(sys.argv[1])); "
            "c.record_event(JobStarted('cli000000042', kind='backup', db='billing', "
            "description='backup from the CLI')); "
            "c.record_event(Progress('cli000000042', phase='dump', bytes_done=5, bytes_total=10, rate=1.0)); c.close()")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        subprocess.run([sys.executable, "-c", code, str(seeded_setup.config.catalog.sqlite_path)], check=True,
                       timeout=60)
        t0 = time.monotonic()
        table = app.screen.query_one("#jobs-table", DataTable)
        while "cli000000042" not in [k.value for k in table.rows] and time.monotonic() - t0 < 3:
            await asyncio.sleep(0.05)
        assert time.monotonic() - t0 < 1.0, "the CLI's job must appear within a second"
        await settle(pilot)
        assert "2 running" in screen_text(app)


async def test_dashboard_definitions_are_one_key_away(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, DefinitionsScreen)
        text = screen_text(app)
        assert "missed run" in text and "completed backups" in text
        await pilot.press("escape")
        await settle(pilot)
        assert app.current_mode == "dashboard" and not isinstance(app.screen, DefinitionsScreen)


async def test_progress_is_coalesced_and_the_last_value_arrives(make_app: MakeApp) -> None:
    app = make_app()
    seen: list[JobProgressed] = []

    def hook(msg: object) -> None:
        if isinstance(msg, JobProgressed):
            seen.append(msg)

    async with app.run_test(size=(80, 24), message_hook=hook) as pilot:
        await settle(pilot)
        bus = app.engine.bus
        bus.publish(JobStarted("tuijob000001", kind="restore", db="warranty", description="restore test"))
        t0 = time.monotonic()
        for i in range(1, 5001):
            bus.publish(Progress("tuijob000001", phase="restore", bytes_done=i, bytes_total=5000, rate=1.0))
            if i % 500 == 0:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        await settle(pilot)
        # Every message seen so far arrived inside this window: at most one per 0.1 s tick, plus the last.
        elapsed = time.monotonic() - t0
        assert 1 <= len(seen) <= elapsed / 0.1 + 3, (len(seen), elapsed)
        assert seen[-1].done == 5000
        bus.publish(JobFinished("tuijob000001", outcome="succeeded"))
        await settle(pilot)


async def test_quit_asks_while_a_job_of_this_console_runs(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.engine.bus.publish(JobStarted("tuijob000002", kind="restore", db="warranty", description="restore"))
        await pilot.press("q")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen) and "restore started here is still running" in screen_text(app)
        await pilot.press("n")
        await settle(pilot)
        assert app.is_running and not isinstance(app.screen, ConfirmScreen)
        app.engine.bus.publish(JobFinished("tuijob000002", outcome="succeeded"))
        await pilot.press("q")
        await settle(pilot)
    assert app.return_code == 0


async def test_no_color_still_reads(make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.no_color
        for key in "12345678":
            await pilot.press(key)
            await settle(pilot)
        await pilot.press("1")
        await settle(pilot)
        text = screen_text(app)
        # States are words, not only colours.
        assert "ALERT" in text and "CRIT" in text and "WARN" in text


async def test_wizard_plans_and_goes_back_step_by_step(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("6")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, RestoreScreen)
        await pilot.press("down", "down", "enter")  # host lost
        await settle(pilot)
        assert screen.step == "severity"
        await pilot.press("enter")  # low
        await settle(pilot)
        assert screen.step == "scope"
        await pilot.press("enter", "enter")  # billing (first in config order is warranty), whole
        await settle(pilot)
        assert screen.step == "point"
        await pilot.press("enter")  # latest
        await settle(pilot, rounds=6)
        assert screen.step == "plan"
        text = screen_text(app)
        assert "PLAN" in text and "from target local1" in text
        assert "target offsite is unreachable" in text or "offsite" in text
        await pilot.press("escape")
        await settle(pilot)
        assert screen.step == "point"
        await pilot.press("escape", "escape", "escape")
        await settle(pilot)
        assert screen.step == "incident"


async def test_wizard_refuses_a_name_that_is_not_new_and_offers_mfa_for_live(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("6")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, RestoreScreen)
        await pilot.press("down", "down", "enter", "enter", "enter", "enter", "enter")
        await settle(pilot, rounds=6)
        await pilot.press("enter")  # accept
        await settle(pilot)
        assert screen.step == "destination"
        text = screen_text(app)
        assert "Restore OVER the live database warranty" in text and "operator tester" in text
        assert "warranty_restore_20261120_1200" in text  # the planner's default name, from the console's clock
        screen.query_one("#dest-input", Input).value = "warranty"
        await pilot.press("enter")
        await settle(pilot)
        assert screen.step == "destination" and "That is the live database" in screen_text(app)


async def test_destructive_confirmation_checks_the_form(make_app: MakeApp) -> None:
    app = make_app()
    results: list[DestructiveApproval | None] = []
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.push_screen(DestructiveConfirmScreen("restore over warranty", "warranty", cursor_blink=False),
                        results.append)
        await settle(pilot)
        await pilot.press(*"warranty", "enter", *"12ab34", "enter")
        await settle(pilot)
        code = app.screen.query_one("#confirm-code", Input)
        assert code.value == "1234" and code.password  # letters are refused by the input itself
        assert "6-digit code" in screen_text(app)
        await pilot.press(*"567", "enter")  # max_length keeps it at six digits
        await settle(pilot)
        assert results == [DestructiveApproval("warranty", "123456")]
        app.push_screen(DestructiveConfirmScreen("x", "warranty", cursor_blink=False), results.append)
        await settle(pilot)
        await pilot.press(*"billing", "enter", *"123456", "enter")
        await settle(pilot)
        assert "does not match" in screen_text(app)
        await pilot.press("escape")
        await settle(pilot)
        assert results[-1] is None


async def test_command_palette_reaches_the_screens(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await settle(pilot)
        await pilot.press(*"Trends")
        await asyncio.sleep(0.5)
        await pilot.press("enter")
        await settle(pilot)
        assert app.current_mode == "trends"


async def test_restore_from_the_catalog_and_a_drill_from_the_drills_screen(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3", "down")
        await settle(pilot)
        catalog = app.screen
        assert isinstance(catalog, CatalogScreen)
        row = catalog.current_row()
        assert row is not None
        await pilot.press("r")
        await settle(pilot)
        wizard = app.screen
        assert isinstance(wizard, RestoreScreen) and wizard.step == "incident"
        assert wizard.state.db == row.db and wizard.state.point.snapshot_id == row.id
        await pilot.press("7", "n")
        await settle(pilot)
        assert app.screen is wizard and wizard.step == "severity" and wizard.state.incident is not None
        assert wizard.state.incident.value == "drill"
