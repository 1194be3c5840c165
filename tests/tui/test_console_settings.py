"""The console's Settings screen (9): schedules with next and last run, retention and its effect now, targets,
and the config file's pending edits approved behind the MFA modal (refused with a wrong code, applied with a
fresh one).

The first test runs over the seeded catalog (fixed clock, so the next run is a fixed time) with schedules and
retention rules added to its config; the second over a real repository (`backstop init`) with an operator
enrolled through the real CLI, whose codes come from tests/fixtures/otp.py.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from core.config import parse_config, read_config
from core.engine import Engine
from tui.app import BackstopApp
from tui.screens.modals import DestructiveConfirmScreen, HelpScreen
from tui.screens.settings import SettingsScreen

from tests.fixtures.backstop import Setup, local_target, write_setup
from tests.fixtures.console import NOW, write_console_setup
from tests.fixtures.otp import CodeBook, secret_from_uri
from tests.tui.helpers import screen_text, settle


def _edit(setup: Setup, change: Any) -> None:
    doc = yaml.safe_load(setup.path.read_text())
    change(doc)
    setup.path.write_text(yaml.safe_dump(doc, sort_keys=False))


async def _engine(setup: Setup) -> Engine:
    """An engine as `backstop tui` builds it: with the file's text, settings applied as approved."""
    data, path = read_config(str(setup.path))
    engine = Engine(parse_config(data, path), config_source=(data, path))
    await engine.apply_settings()
    return engine


async def _all_text(pilot: Any) -> str:
    """Everything the screen's sections show at 80x24, scrolled through a page at a time."""
    seen = [screen_text(pilot.app)]
    for _ in range(6):
        await pilot.press("pagedown")
        await settle(pilot, 1)
        seen.append(screen_text(pilot.app))
    # Columns wrap at 80 cells: compare words, not line layout.
    return " ".join(" ".join(seen).split())


async def test_settings_screen_shows_schedules_retention_and_targets(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    setup = write_console_setup(tmp_path / "console")

    def add(doc: dict[str, Any]) -> None:
        doc["schedules"] = [
            {"name": "nightly-warranty", "action": "backup", "db": "warranty", "cron": "30 2 * * *",
             "timezone": "Europe/Berlin"},
            {"name": "weekly-verify", "action": "verify", "cron": "0 4 * * 0", "sample": "5%"},
        ]
        doc["databases"][0]["retention"] = {"keep_daily": 7}

    _edit(setup, add)
    engine = await _engine(setup)
    # The nightly slot before the fixed "now" never started (02:30 Berlin is 01:30 UTC).
    due = datetime(2026, 11, 20, 1, 30, tzinfo=UTC)
    assert engine.catalog.claim_schedule_run(name="nightly-warranty", slot="2026-11-20T01:30:00Z",
                                             due=due.timestamp(), action="backup", db="warranty",
                                             holder="test:1:x", state="missed")
    app = BackstopApp(engine, clock=lambda: NOW, cursor_blink=False, own_engine=True, operator="tester", keymap={})
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.no_color
        await settle(pilot)
        # The dashboard's missed-run alert has its data: the slot recorded as missed.
        assert "scheduled backup of warranty due" in " ".join(screen_text(app).split())
        await pilot.press("9")
        await settle(pilot)
        assert isinstance(app.screen, SettingsScreen)
        first = screen_text(app)
        assert first.splitlines()[0].startswith(" 9 Settings  ·  2 schedule(s) · nothing pending"), first
        assert "Approve changes" in first.splitlines()[-1]  # the screen's keys are in the footer
        text = await _all_text(pilot)
        # Next run in the schedule's own zone, last slot and its outcome as a word.
        assert "nightly-warranty" in text and "Europe/Berlin" in text and "2026-11-21" in text, text
        assert "02:30 CET" in text and "2026-11-20 01:30" in text and "MISSED" in text, text
        assert "weekly-verify" in text and "2026-11-22" in text and "04:00 UTC" in text and "never run" in text
        # Retention in force for warranty and what it would do now (28 daily snapshots seeded).
        assert "keep_daily 7" in text and "keeps 7, would remove 21" in text, text
        assert "none (kept until forgotten)" in text  # billing has no rules
        assert "local1" in text and "s3://backstop-seed at http://127.0.0.1:9" in text, text
        assert "no operator is enrolled" in text
        # The overview is the engine's: the same figures the CLI's `schedule list` would compute.
        rows = engine.schedule_overview(datetime.fromtimestamp(NOW, UTC))
        assert [(r.schedule.name, r.last_outcome) for r in rows] == [("nightly-warranty", "missed"),
                                                                     ("weekly-verify", "never run")]
        # Help lists the screen's bindings by id; the palette reaches the screen.
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        listed = {e.binding_id for _, entries in app.screen.sections for e in entries}
        assert {"settings.approve", "settings.refresh", "goto.settings"} <= listed
        await pilot.press("escape", "1")
        await settle(pilot)
        assert "9 Settings" in [c.title for c in app.get_system_commands(app.screen)]
        # Nothing pending: `a` says so and opens no modal.
        await pilot.press("9", "a")
        await settle(pilot)
        assert isinstance(app.screen, SettingsScreen)


def _seed_snapshots(catalog_path: Path, db: str, n: int) -> None:
    """``n`` snapshot rows of ``db``, one a day up to an hour ago (what retention plans from)."""
    now = time.time()
    rows = []
    for i in range(n):
        t = now - 3600 - (n - 1 - i) * 86_400
        iso = datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
        rows.append((f"{i:02d}" + "ab" * 31, db, "logical", iso, iso, 1000, 100, json.dumps(["local1"]), f"j{i}"))
    con = sqlite3.connect(str(catalog_path))
    con.executemany("INSERT INTO snapshots (id, db, kind, started_at, finished_at, size_bytes, stored_bytes, targets,"
                    " job_id) VALUES (?,?,?,?,?,?,?,?,?)", rows)
    con.commit()
    con.close()


async def _approve(pilot: Any, screen: SettingsScreen, name: str, code: str) -> str:
    await pilot.press("a")
    await settle(pilot)
    assert isinstance(pilot.app.screen, DestructiveConfirmScreen)
    await pilot.press(*name, "enter", *code, "enter")
    t0 = time.monotonic()
    while "approving" in str(screen.query_one("#settings-message").render()):
        assert time.monotonic() - t0 < 30, screen_text(pilot.app)
        await asyncio.sleep(0.05)
    await settle(pilot)
    return " ".join(screen_text(pilot.app).split())


async def test_pending_retention_change_is_approved_behind_the_mfa_modal(tmp_path: Path) -> None:
    setup = write_setup(tmp_path / "appr", [local_target(tmp_path / "appr" / "repo")],
                        [{"name": "warranty", "dsn": "postgresql://postgres@127.0.0.1:9/warranty",
                          "retention": {"keep_last": 3}}])
    setup.cli("init", check=True)
    out = setup.cli("operator", "add", "alice", "--role", "admin", check=True)
    codes = CodeBook(secret_from_uri(out.stdout.strip().splitlines()[-1]))
    _seed_snapshots(setup.config.catalog.sqlite_path, "warranty", 4)

    def loosen(doc: dict[str, Any]) -> None:
        doc["databases"][0]["retention"] = {"keep_last": 1}

    _edit(setup, loosen)  # from the first enrolment on, this waits for an approval
    engine = await _engine(setup)
    assert engine.settings is not None and [c.section for c in engine.settings.pending] == ["retention:warranty"]
    app = BackstopApp(engine, cursor_blink=False, own_engine=True, operator="alice", keymap={})
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("9")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, SettingsScreen)
        text = screen_text(app)
        assert "1 change(s) wait for approval" in text and "retention:warranty: changed" in text, text
        assert "~ retention:warranty.keep_last: 3 -> 1" in text, text
        assert "the new rules would remove 3 snapshot(s) now" in text, text

        # A wrong code: refused, said so on screen, nothing put in force.
        text = await _approve(pilot, screen, "alice", codes.wrong())
        assert isinstance(app.screen, SettingsScreen)
        assert "REFUSED by the MFA gate" in text and "code is wrong" in text and "Nothing was approved" in text, text
        retention = engine.config.database("warranty").retention
        assert retention is not None and retention.keep_last == 3
        assert engine.settings is not None and len(engine.settings.pending) == 1

        # A fresh code: the file's rules are in force, nothing waits, the screen shows the new effect.
        text = await _approve(pilot, screen, "alice", codes.next())
        assert "APPROVED retention:warranty: settings version" in text, text
        retention = engine.config.database("warranty").retention
        assert retention is not None and retention.keep_last == 1
        assert engine.settings is not None and engine.settings.pending == []
        text = await _all_text(pilot)
        assert "nothing pending" in text and "No pending change (settings version" in text, text
        assert "keep_last 1" in text and "keeps 1, would remove 3" in text, text
        outcomes = [(e.operator, e.action, e.outcome) for e in engine.audit_entries()]
        assert ("alice", "settings.approve", "refused") in outcomes
        assert ("alice", "settings.retention", "succeeded") in outcomes
    # Approved for good: a new engine over the same file finds nothing pending.
    again = await _engine(setup)
    try:
        assert again.settings is not None and again.settings.pending == []
    finally:
        await again.close()
