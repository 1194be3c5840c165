"""Placeholder: filled by the drill work (issue 13)."""

from __future__ import annotations

import argparse
from typing import Any

from core.cli.context import add_group

DRILL_HELP = "restore drills: run one now, list them, show and verify their reports"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this module's `backstop drill` subcommands (the group is shared with the other drill module)."""
    add_group(sub, "drill", DRILL_HELP, common)
