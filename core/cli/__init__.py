"""The scriptable command line: `backstop ...` (cron, automation, operators).

Exit codes: 0 success, 1 the operation failed, 2 usage or configuration
error. Data goes to stdout (JSON with --json); messages go to stderr.

Layout: ``parser.py`` holds the common options and the table of command
modules (``commands/*.py``, each with ``register(subparsers, common)``);
``output.py`` the shared output helpers; ``context.py`` the Engine, the
acting operator and how a command is run. ``wal.py`` is the fast path of
``wal-push``/``wal-fetch``, which PostgreSQL starts once per WAL segment:
:func:`main` sends them there before importing anything else. Heavy modules
are imported inside the commands so that small commands start fast.
"""

from __future__ import annotations

# Only what the fast path of wal-push/wal-fetch needs: not even `typing`, nor argparse (see core.cli.wal).
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

# The common options that take a value: skipped when looking for the command's name in argv.
_VALUE_OPTIONS = ("--config", "--operator", "--otp")
_WAL_COMMANDS = ("wal-push", "wal-fetch")  # as core.cli.wal.COMMANDS, without importing it


def command_name(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is neither an option nor an option's value)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--":
            return None
        elif word.startswith("-"):
            # `--config PATH` (also abbreviated, as argparse allows: `--conf PATH`), not `--config=PATH`.
            skip = word.startswith("--") and len(word) > 2 and "=" not in word and any(
                o.startswith(word) for o in _VALUE_OPTIONS)
        else:
            return word
    return None


def build_parser() -> argparse.ArgumentParser:
    """The `backstop` argument parser (tests, docs and shell completion inspect it)."""
    from core.cli.parser import build_parser as build

    return build()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `backstop` console script."""
    console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if command_name(argv) in _WAL_COMMANDS:
        from core.cli import wal

        done = wal.main(argv)
        if console and "coverage" not in sys.modules:  # a measured run must save its data at exit
            # PostgreSQL's archiver waits for this process to end: the interpreter's teardown (a sixth of a
            # call's CPU) would only delay it. Everything the call wrote went out with os.write or print.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(done)
        return done

    from core.cli.context import setup_logging
    from core.cli.output import exit_code_for
    from core.cli.parser import normalise

    args = normalise(build_parser().parse_args(argv))
    setup_logging()
    try:
        return int(args.func(args))
    except BaseException as exc:  # noqa: B036  (SystemExit and unknown errors go on up)
        code = exit_code_for(exc)
        if code is None:
            raise
        return code


__all__ = ["build_parser", "command_name", "main"]
