"""Placeholder: filled by the drill work (issue 13)."""

from __future__ import annotations

import argparse
from typing import Any


def register(dsub: Any, common: argparse.ArgumentParser) -> None:
    """Add this module's `backstop drill` subcommands."""
