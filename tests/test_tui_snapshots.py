"""SVG snapshots of every console screen at 80x24 and 160x48, over the fixed, seeded catalog.

Deterministic by construction: the catalog is seeded from a fixed time, the
console's clock is fixed, the cursor does not blink, nothing shows wall-clock
time. Update after an intended change with `pytest tests/test_tui_snapshots.py
--snapshot-update` and review the SVGs (tests/__snapshots__/) like code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.tui.helpers import settle

SCREENS = {"1": "dashboard", "2": "jobs", "3": "catalog", "4": "verification", "5": "trends", "6": "restore",
           "7": "drills", "8": "audit"}


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("key", list(SCREENS), ids=list(SCREENS.values()))
def test_screen(snap_compare: Any, make_app: Callable[..., Any], key: str, size: tuple[int, int]) -> None:
    app = make_app()

    async def run_before(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press(key)
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_help_screen(snap_compare: Any, make_app: Callable[..., Any]) -> None:
    async def run_before(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("3", "question_mark")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=run_before)
