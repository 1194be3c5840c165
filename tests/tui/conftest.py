"""Fixtures for the console's tests (``make_app``, ``seeded_console`` come from tests.fixtures.console)."""

from __future__ import annotations

import pytest

from tests.fixtures.backstop import Setup


@pytest.fixture
def seeded_setup(seeded_console: tuple[Setup, float]) -> Setup:
    return seeded_console[0]
