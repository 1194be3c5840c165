"""`backstop agent` (this host's agent) and `backstop agents` (the fleet: hosts, versions, databases, heartbeats)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, engine_command
from core.cli.output import EXIT_OK, print_json, warn

if TYPE_CHECKING:
    from core.engine import Engine


async def cmd_agents(engine: Engine, args: argparse.Namespace) -> int:
    import asyncio

    rows = await asyncio.to_thread(engine.agents)
    for problem in await asyncio.to_thread(engine.fleet_privilege_problems):
        warn(problem)
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
              f" {', '.join(r.databases) or '-'}"
              + (f"  (its config also names {', '.join(r.mismatch)}: not registered for them)" if r.mismatch else ""))
    return EXIT_OK


async def cmd_agents_register(engine: Engine, args: argparse.Namespace) -> int:
    from core.cli.context import identity

    await engine.register_agent(args.name, args.role, args.db, create_role=args.create_role, who=identity(args))
    print(f"agent {args.name} registered as role {args.role} for {', '.join(args.db) or 'no databases'}")
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import sys

    from core.fleet.agent import run_agent

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(("%(asctime)s " if args.timestamps else "")
                                           + "backstop agent: %(levelname)s: %(message)s"))
    for name in ("backstop.agent", "backstop.daemon"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return asyncio.run(run_agent(args.config, once=args.once))


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, "agent", cmd_agent, "run this host's agent: take the control plane's jobs for it (foreground)",
                    common, description="Run this host's fleet agent in the foreground until SIGTERM (systemd: "
                                        "config/backstop-agent.service): it reports its presence, claims the jobs "
                                        "queued for it and runs them, renewing each job's lease as it goes.")
    p.add_argument("--once", action="store_true", help="run the jobs waiting now, then exit (for tests and cron)")
    p.add_argument("--timestamps", action="store_true", help="prefix log lines with the time (not under systemd)")
    p = add_command(sub, "agents", engine_command(cmd_agents),
                    "list the fleet's agents (host, version, databases, last heartbeat), or register one", common)
    s = p.add_subparsers(dest="agents_command", metavar="COMMAND")
    s.required = False  # `backstop agents` alone lists them
    r = add_command(s, "register", engine_command(cmd_agents_register),
                    "let a PostgreSQL login role act as a fleet agent for named databases (admin, needs a code)",
                    common)
    r.add_argument("name", help="the agent's name (fleet.agent in its config)")
    r.add_argument("--role", required=True, help="its PostgreSQL login role on the control plane")
    r.add_argument("--db", action="append", default=[], metavar="NAME",
                   help="a database it may serve (repeat); jobs are routed by these, not by what it reports")
    r.add_argument("--create-role", action="store_true",
                   help="create the login role in the backstop_agent group too (set its password yourself)")
