"""Placeholder: filled by issue 13's work."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `backstop metrics`."""
