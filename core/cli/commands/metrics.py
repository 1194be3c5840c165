"""`backstop metrics`: print one scrape of the Prometheus metrics (what the daemon serves at /metrics)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, engine_command
from core.cli.output import EXIT_OK

if TYPE_CHECKING:
    from core.engine import Engine


async def cmd_metrics(engine: Engine, args: argparse.Namespace) -> int:
    text = await asyncio.to_thread(engine.metrics_text)
    sys.stdout.write(text.decode())
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `backstop metrics`."""
    add_command(sub, "metrics", engine_command(cmd_metrics),
                "print the Prometheus metrics (KPIs, recovery-point age, bytes per target, job durations, failures, "
                "drills) read from the catalog; `backstop daemon --metrics-listen` serves the same at /metrics",
                common)
