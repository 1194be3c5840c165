"""The Trends and Drills screens show the insights at 80x24: forecast with its date, retention cost in bytes, the
failure pattern, drill reports with recovery time against the RTO, and which target each drill proved."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fixtures.backstop import Setup
from tests.tui.helpers import screen_text, settle


def _offsite_failures(setup: Setup, now: float, n: int = 8) -> None:
    """``n`` failed backups blaming offsite, each at 02:20 UTC on one of the last days."""
    rows = []
    for d in range(1, n + 1):
        t = (datetime.fromtimestamp(now, UTC) - timedelta(days=d)).replace(hour=2, minute=20).timestamp()
        rows.append((f"off{d:09d}", "backup", "warranty", "failed", t, t + 5, "upload", 0, None, 0.0,
                     "target 'offsite': connection refused", "logical backup of warranty", "h", 1,
                     json.dumps({"error_class": "TargetUnreachable", "target": "offsite"})))
    db = sqlite3.connect(str(setup.config.catalog.sqlite_path))
    db.executemany("INSERT INTO jobs (id, kind, db, state, started_at, finished_at, phase, bytes_done, bytes_total,"
                   " rate, error, description, host, pid, result) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.commit()
    db.close()


async def test_trends_show_forecast_retention_cost_and_failure_pattern_at_80x24(
        seeded_console: tuple[Setup, float], make_app: Callable[..., Any]) -> None:
    setup, now = seeded_console
    _offsite_failures(setup, now)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)
        top = screen_text(app)
        assert "forecast: warranty: recovery time reaches the RTO of 30m 00s on 2028-12-06" in top
        await pilot.press("end")  # the keyboard alone reaches the rest
        await settle(pilot)
        bottom = screen_text(app)
        assert "pattern: 8 of 11 failures hit target offsite between 02:00 and 03:00" in bottom
        assert "by target: offsite 8" in bottom and "TargetUnreachable 8" in bottom
        # The retention lines sit between; page up until they show.
        seen = bottom
        for _ in range(4):
            if "costs 642.2 MiB" in seen:
                break
            await pilot.press("pageup")
            await settle(pilot)
            seen = screen_text(app)
        assert "warranty: keeping every snapshot (28 snapshot(s)) costs 642.2 MiB;" in seen
        assert "would save 109.1 MiB" in seen


async def test_drills_list_reports_chart_and_rotation_at_80x24(make_app: Callable[..., Any]) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("7")
        await settle(pilot)
        text = screen_text(app)
        lines = text.splitlines()
        assert "3 drill(s), 2 passed" in lines[0]
        row = next(ln for ln in lines if ln.startswith("billing-20261117T090000Z"))
        assert "FAILED" in row and "offsite" in row and "6m 35s/1h 00m" in row
        assert any(ln.startswith("warranty-20261116T090000Z") and "passed" in ln for ln in lines)
        assert "Recovery time of the last drills" in text and "6m 35s FAIL" in text and "RTO 30m 00s" in text
        assert "proven: warranty: local1 11-16 09:00 · offsite NEVER" in text
        assert "proven: billing: local1 NEVER · offsite NEVER" in text
        # The filter narrows the list by verdict, keyboard only.
        await pilot.press("slash", *"failed", "enter")
        await settle(pilot)
        assert "1 drill(s), 0 passed" in screen_text(app).splitlines()[0]
