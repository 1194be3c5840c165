"""`backstop tui` (the operator console) and `backstop demo` (a sandbox that ends in the console)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from core.cli.context import add_command


def open_console(config: str | None, operator: str | None = None) -> int:
    """Open the Textual operator console on a config (used by `tui` and `demo`)."""
    import asyncio
    import os
    from pathlib import Path

    from core.config import CONFIG_ENV, parse_config, read_config
    from core.engine import Engine
    from core.security.gate import acting_operator

    operator = acting_operator(operator)  # a name that could forge audit lines is refused before anything opens
    path = config or os.environ.get(CONFIG_ENV)
    data, file = read_config(config)
    # The path goes along: the wizard's point-in-time restore writes a restore_command that reads it.
    engine = Engine(parse_config(data, file), config_path=Path(path).absolute() if path else None,
                    config_source=(data, file))
    # The approved schedules/retention/encryption apply (pending edits show as a dashboard alert);
    # its own storages, since Textual runs another event loop.
    asyncio.run(engine.apply_settings(own_storages=True))
    # The dashboard's catalog reads start now and overlap Textual's import and start-up.
    first = engine.prefetch_dashboard()
    # Imported here: Textual costs ~200 ms that no other command should pay.
    from tui.app import run_console

    return run_console(engine, first, operator=operator)


def cmd_tui(args: argparse.Namespace) -> int:
    if args.demo and args.config is None:
        from core.sandbox.demo import sandbox_dir

        args.config = str(sandbox_dir(None) / "backstop.yaml")
    return open_console(args.config, getattr(args, "operator", None))


def cmd_demo(args: argparse.Namespace) -> int:
    from core.sandbox.demo import run_demo

    config, rc = run_demo(args.dir, claims=args.claims, reset=args.reset, stop=args.stop)
    # On a terminal the demo ends in the operator console; piped or in CI it
    # ends with the printed summary.
    if rc == 0 and not args.stop and not args.no_tui and sys.stdin.isatty() and sys.stdout.isatty():
        return open_console(str(config))
    return rc


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, "tui", cmd_tui, "open the operator console (Textual)", common, description="")
    p.add_argument("--demo", action="store_true", help="open it on the `backstop demo` sandbox")

    p = add_command(sub, "demo", cmd_demo, "run the sandbox demo (private PostgreSQL, local repository)", common,
                    description="")
    p.add_argument("--dir", metavar="PATH", help="sandbox directory (default: the XDG data dir)")
    p.add_argument("--claims", type=int, default=50_000, help="warranty claims to generate (default 50000)")
    p.add_argument("--reset", action="store_true", help="delete the sandbox and start again")
    p.add_argument("--stop", action="store_true", help="stop the sandbox's PostgreSQL server and exit")
    p.add_argument("--no-tui", action="store_true", help="print the summary only; do not open the console")
