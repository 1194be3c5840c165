"""The console reads the catalog only through the engine's queries, and never on its event loop."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from core.catalog.sqlite_queries import SqliteChangeFeed, SqliteQueries
from tui.app import BackstopApp
from tui.screens.restore import RestoreScreen

from tests.tui.helpers import screen_text, settle

MakeApp = Callable[..., BackstopApp]


@pytest.fixture
def reads_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every catalog read the console makes in the event loop's thread (the test's main thread)."""
    loop_thread = threading.main_thread()
    seen: list[str] = []
    real_db, real_poll = SqliteQueries._db, SqliteChangeFeed.poll

    def db(self: SqliteQueries):  # type: ignore[no-untyped-def]
        if threading.current_thread() is loop_thread:
            import traceback

            seen.append("".join(traceback.format_stack(limit=6)))
        return real_db(self)

    def poll(self: SqliteChangeFeed) -> bool:
        if threading.current_thread() is loop_thread:
            seen.append("change feed polled on the event loop")
        return real_poll(self)

    monkeypatch.setattr(SqliteQueries, "_db", db)
    monkeypatch.setattr(SqliteChangeFeed, "poll", poll)
    return seen


async def test_no_screen_reads_the_catalog_on_the_event_loop(make_app: MakeApp, reads_on_the_loop: list[str]) -> None:
    app = make_app(poll_interval=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        for key in "12345678":
            await pilot.press(key)
            await settle(pilot)
        await pilot.press("3", "end")  # the catalog's last page, and its detail line
        await settle(pilot)
        await pilot.press("slash", *"billing", "enter")
        await settle(pilot)
        await pilot.press("4", "end", "8", "slash", *"bob", "enter")
        await settle(pilot)
        await pilot.press("6")
        await settle(pilot)
        wizard = app.screen
        assert isinstance(wizard, RestoreScreen)
        await pilot.press("down", "down", "enter", "enter", "enter", "enter")  # host lost, low, warranty, whole
        await settle(pilot, rounds=6)
        assert wizard.step == "point" and "verified" in screen_text(app)  # the snapshots to choose from
        await pilot.press("enter")  # latest: the planner reads history and snapshots
        await settle(pilot, rounds=6)
        assert wizard.step == "plan" and "PLAN" in screen_text(app)
    assert reads_on_the_loop == []
