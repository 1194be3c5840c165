"""The `backstop` argument parser: the common options and the one table of command modules.

Each module in :data:`COMMANDS` has ``register(subparsers, common)``, which
adds its subcommands (with ``parents=[common]``) and sets each one's
``func``: a handler ``args -> int``. Adding a command is one new module and
one line here. The modules import nothing heavy at module level, so building
the parser and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib

from core import __version__
from core.cli.context import completes_files

# Dispatch table: the command modules, in the order `backstop --help` lists their commands.
COMMANDS = (
    "core.cli.commands.repository",  # init, check, repair index, unlock
    "core.cli.commands.backups",  # backup, snapshots, restore
    "core.cli.commands.catalog",  # catalog rebuild, jobs
    "core.cli.commands.housekeeping",  # forget, prune
    "core.cli.commands.sync",  # sync
    "core.cli.commands.archive",  # archive [thaw]
    "core.cli.commands.operators",  # operator add|list|role|remove|recover
    "core.cli.commands.audit",  # audit list|verify
    "core.cli.commands.keys",  # key list|rotate|reencrypt|retire
    "core.cli.commands.settings",  # settings diff|approve|show
    "core.cli.commands.console",  # tui, demo
    "core.cli.commands.wal",  # wal status
    "core.cli.commands.targets",  # targets (per-target health)
    "core.cli.commands.schedule",  # daemon, schedule list|run
    "core.cli.commands.drill_runs",  # drill run|list
    "core.cli.commands.drill_reports",  # drill report|verify
    "core.cli.commands.metrics",  # metrics
    "core.cli.commands.insights",  # insights
    "core.cli.commands.agents",  # agents
    "core.cli.wal",  # wal-push, wal-fetch (main() takes a fast path to them)
    "core.cli.commands.completion",  # completion bash|zsh (and the hidden __complete)
)


def common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name."""
    common = argparse.ArgumentParser(add_help=False)
    completes_files(common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                                        help="config file (default: $BACKSTOP_CONFIG)"))
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print data as JSON")
    common.add_argument("--operator", default=argparse.SUPPRESS, metavar="NAME",
                        help="who is acting (default: $BACKSTOP_OPERATOR, else the OS user name)")
    common.add_argument("--otp", default=argparse.SUPPRESS, metavar="CODE",
                        help="one-time code for destructive actions (default: prompt when on a terminal)")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests, docs and shell completion can inspect it)."""
    common = common_options()
    p = argparse.ArgumentParser(prog="backstop", description="Backup and recovery for PostgreSQL.", parents=[common])
    p.add_argument("--version", action="version", version=f"backstop {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub, common)
    # `backstop completion` describes this parser: it finds it here instead of importing this module.
    p.set_defaults(root_parser=p)
    return p


def normalise(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the common options not given (they default to SUPPRESS so a subcommand cannot reset them)."""
    args.config = getattr(args, "config", None)
    args.json = getattr(args, "json", False)
    args.operator = getattr(args, "operator", None)
    args.otp = getattr(args, "otp", None)
    return args
