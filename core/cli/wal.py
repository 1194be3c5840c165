"""`backstop wal-push WAL_PATH` and `backstop wal-fetch WAL_NAME DEST_PATH`: the fast entry path.

PostgreSQL runs ``archive_command`` (``backstop wal-push %p``) once per
16 MiB WAL segment and ``restore_command`` (``backstop wal-fetch %f %p``)
once per segment it replays, so these two must start in a few tens of
milliseconds. ``core.cli.main`` sends them here before anything else is
imported; this module imports nothing but, for help or a call of another
shape than PostgreSQL's, the standard library's argparse
(tests/test_cli_wal_entry.py holds it to that), and its handlers
``core.wal.client``, which stays on the standard library until a call has
to open the repository itself.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

COMMANDS = ("wal-push", "wal-fetch")
EXIT_USAGE = 2


def cmd_wal_push(args: argparse.Namespace) -> int:
    """archive_command: 0 only once the file is stored and read back on every target."""
    from core.wal.client import wal_push

    return wal_push(args.config, args.wal_path)


def cmd_wal_fetch(args: argparse.Namespace) -> int:
    """restore_command: the archived file at DEST_PATH, or 1 (quietly) when the archive does not hold it."""
    from core.wal.client import wal_fetch

    return wal_fetch(args.config, args.wal_name, args.dest_path)


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
    import argparse

    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help="config file (default: $BACKSTOP_CONFIG)")
    p = argparse.ArgumentParser(prog="backstop", description="Backup and recovery for PostgreSQL.", parents=[config])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add(sub, [config])
    return p


def _plain_call(argv: list[str]) -> tuple[str | None, str, list[str]] | None:
    """(config, command, operands) of the exact shape PostgreSQL runs; None for anything else.

    ``[--config PATH | --config=PATH] wal-push WAL_PATH`` and the same with ``wal-fetch WAL_NAME DEST_PATH``,
    operands not starting with "-". Building argparse's parser costs a tenth of the call (it imports shutil
    and gettext's locale machinery); anything else, help and every mistake included, still goes through it.
    """
    config: str | None = None
    rest = argv
    if rest and rest[0].startswith("--config="):
        config, rest = rest[0].removeprefix("--config="), rest[1:]
    elif len(rest) >= 2 and rest[0] == "--config":
        config, rest = rest[1], rest[2:]
    if config == "" or not rest:
        return None
    command, operands = rest[0], rest[1:]
    wanted = {"wal-push": 1, "wal-fetch": 2}.get(command)
    if wanted is None or len(operands) != wanted or any(not o or o.startswith("-") for o in operands):
        return None
    return config, command, operands


def main(argv: list[str]) -> int:
    plain = _plain_call(argv)
    if plain is not None:
        from core.wal.client import wal_fetch, wal_push

        config, command, operands = plain
        return wal_push(config, operands[0]) if command == "wal-push" else wal_fetch(config, *operands)
    args = build_parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    return int(args.func(args))
