"""`backstop wal-push WAL_PATH` and `backstop wal-fetch WAL_NAME DEST_PATH`: the fast entry path.

PostgreSQL runs ``archive_command`` (``backstop wal-push %p``) once per
16 MiB WAL segment and ``restore_command`` (``backstop wal-fetch %f %p``)
once per segment it replays, so these two must start in a few tens of
milliseconds. ``core.cli.main`` sends them here before anything else is
imported; this module imports only the standard library's argparse and sys
(tests/test_cli_wal_entry.py holds it to that). The real work, when it
lands, imports what it needs inside the handlers.

WAL archiving is not in this build yet: both commands say so in one line
and exit 2, so PostgreSQL keeps the segment and retries instead of
believing it archived.
"""

from __future__ import annotations

import argparse
import sys

COMMANDS = ("wal-push", "wal-fetch")
EXIT_USAGE = 2


def _not_yet(command: str, what: str) -> int:
    print(f"backstop: {command}: WAL archiving is not in this build yet; {what}", file=sys.stderr)
    return EXIT_USAGE


def cmd_wal_push(args: argparse.Namespace) -> int:
    return _not_yet("wal-push", f"nothing was archived (PostgreSQL keeps {args.wal_path} and retries). Point "
                    "archive_command elsewhere and take logical backups with `backstop backup --db NAME`")


def cmd_wal_fetch(args: argparse.Namespace) -> int:
    return _not_yet("wal-fetch", f"there is no archived WAL to fetch ({args.wal_name}). Restore a logical "
                    "snapshot with `backstop restore --db NAME --into NEW_DB`")


def _add(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    help = "archive one WAL segment (PostgreSQL's archive_command: backstop wal-push %p)"
    p = sub.add_parser("wal-push", help=help.replace("%", "%%"), description=help, parents=parents)
    p.add_argument("wal_path", metavar="WAL_PATH", help="the segment's path (%%p)")
    p.set_defaults(func=cmd_wal_push)
    help = "fetch one archived WAL segment (PostgreSQL's restore_command: backstop wal-fetch %f %p)"
    p = sub.add_parser("wal-fetch", help=help.replace("%", "%%"), description=help, parents=parents)
    p.add_argument("wal_name", metavar="WAL_NAME", help="the segment's file name (%%f)")
    p.add_argument("dest_path", metavar="DEST_PATH", help="where PostgreSQL wants it (%%p)")
    p.set_defaults(func=cmd_wal_fetch)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """The two commands in the full parser (so `backstop --help` lists them); main() never gets that far."""
    _add(sub, [common])


def build_parser() -> argparse.ArgumentParser:
    """The tiny parser of the fast path: the two commands and --config."""
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help="config file (default: $BACKSTOP_CONFIG)")
    p = argparse.ArgumentParser(prog="backstop", description="Backup and recovery for PostgreSQL.", parents=[config])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add(sub, [config])
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    return int(args.func(args))
