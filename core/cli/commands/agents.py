"""`backstop agents`: the fleet's agents, where they run, for which databases, and when each last reported."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, engine_command
from core.cli.output import EXIT_OK, print_json

if TYPE_CHECKING:
    from core.engine import Engine


async def cmd_agents(engine: Engine, args: argparse.Namespace) -> int:
    import asyncio

    rows = await asyncio.to_thread(engine.agents)
    if args.json:
        print_json([r.to_json() for r in rows], indent=1)
        return EXIT_OK
    if not rows:
        print("no agents registered")
        return EXIT_OK
    now = time.time()
    for r in rows:
        seen = f"{now - r.heartbeat_at.timestamp():.0f}s ago" if r.heartbeat_at else "never"
        print(f"{r.name:<20} {r.host or '-':<24} {r.version or '-':<10} last heartbeat {seen:<12}"
              f" {', '.join(r.databases) or '-'}")
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    add_command(sub, "agents", engine_command(cmd_agents),
                "list the fleet's agents: host, version, databases, last heartbeat", common)
