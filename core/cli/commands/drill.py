"""`backstop drill run|list|report|verify`: restore drills (core/drills/).

The group is registered here; ``drill_runs.py`` holds run and list,
``drill_reports.py`` report and verify.
"""

from __future__ import annotations

import argparse
from typing import Any

from core.cli.commands import drill_reports, drill_runs
from core.cli.context import add_group


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    dsub = add_group(sub, "drill", "restore drills: run one now, list them, show and verify their reports", common)
    drill_runs.register(dsub, common)
    drill_reports.register(dsub, common)
