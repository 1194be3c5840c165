"""`backstop insights`: failure patterns, retention cost in bytes and recovery-time forecasts, per database."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, completes, engine_command
from core.cli.output import EXIT_OK, print_json, printable

if TYPE_CHECKING:
    from core.engine import Engine


async def cmd_insights(engine: Engine, args: argparse.Namespace) -> int:
    ins = await asyncio.to_thread(engine.insights, time.time(), args.days, args.db)
    if args.json:
        print_json(ins.to_json())
        return EXIT_OK
    f = ins.failures
    print(f"Failures, last {ins.days} days: {f.total}")
    if f.total:
        hours = ", ".join(f"{h:02d}h {n}" for h, n in enumerate(f.by_hour) if n)
        print(f"  by hour (UTC): {hours}")
        print(f"  by target: {', '.join(f'{t} {n}' for t, n in f.by_target) or 'none named'}")
        print(f"  by class: {', '.join(f'{c} {n}' for c, n in f.by_class)}")
    print(f"  pattern: {printable(f.pattern)}" if f.pattern else "  no pattern stands out")
    print("\nRetention cost (estimated repository bytes)")
    for r in ins.retention:
        print(f"  {printable(r.advice)}")
        for k in r.kinds:
            print(f"    {printable(k.line())}")
    print("\nRecovery-time forecast")
    for fc in ins.forecasts:
        print(f"  {printable(fc.line)}")
    return EXIT_OK


def _days(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("--days must be at least 1")
    return n


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `backstop insights`."""
    p = add_command(sub, "insights", engine_command(cmd_insights),
                    "failed jobs by hour, target and error class with the pattern that stands out; retention cost "
                    "in bytes per database; the date the recovery time will cross the RTO", common)
    completes(p.add_argument("--db", help="only this database (failures of its jobs, its cost and forecast)"),
              "databases")
    p.add_argument("--days", type=_days, default=30, help="window for failures and growth, in days (default 30)")
