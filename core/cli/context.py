"""What every command needs around it: declaring it, the Engine, who acts, and running it with care.

A command module declares its subcommands with :func:`add_command` /
:func:`add_group` and writes its handlers as ``async def cmd(engine, args)
-> int``; :func:`engine_command` turns one into the ``args -> int``
handler the dispatcher calls (Engine built from ``--config``, progress on
stderr, SIGTERM handled). Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from core.cli.output import ProgressDisplay, Terminated, progress_paused, warn

if TYPE_CHECKING:
    from core.engine import Engine
    from core.security.gate import Identity

Handler = Callable[[argparse.Namespace], int]
EngineHandler = Callable[["Engine", argparse.Namespace], Awaitable[int]]

# -- declaring commands ------------------------------------------------------------------------------------


def add_command(sub: Any, name: str, handler: Handler | None, help: str, common: argparse.ArgumentParser,
                description: str | None = None, **kw: Any) -> argparse.ArgumentParser:
    """A subcommand with the common options; ``description`` defaults to the help text."""
    p = sub.add_parser(name, help=help, description=help if description is None else description or None,
                       parents=[common], **kw)
    if handler is not None:
        p.set_defaults(func=handler)
    return p


def add_group(sub: Any, name: str, help: str, common: argparse.ArgumentParser, description: str | None = None) -> Any:
    """A command with subcommands of its own (``backstop operator add ...``); returns their subparsers.

    Two command modules may add to one group (``drill``: runs in one, reports in the other): the second
    call returns the subparsers the first one made.
    """
    existing = sub.choices.get(name)
    if existing is not None:
        return existing.backstop_subparsers
    p = add_command(sub, name, None, help, common, description)
    s = p.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    s.required = True
    p.backstop_subparsers = s  # type: ignore[attr-defined]  # read back by a second call above
    return s


def completes(action: argparse.Action, what: str) -> argparse.Action:
    """Let the shell complete this argument: ``what`` is snapshots, snapshot-ref, databases or targets.

    The names are the shell functions of ``backstop completion``
    (core/cli/commands/completion.py), which ask ``backstop __complete``.
    """
    fn = f"_backstop_complete_{what.replace('-', '_')}"
    action.complete = {"bash": fn, "zsh": fn}  # type: ignore[attr-defined]  # read by shtab
    return action


def completes_files(action: argparse.Action) -> argparse.Action:
    """Let the shell complete a file name here (shtab's own functions)."""
    action.complete = {"bash": "_shtab_compgen_files", "zsh": "_files"}  # type: ignore[attr-defined]
    return action


# -- who acts ---------------------------------------------------------------------------------------------------


def identity(args: argparse.Namespace) -> Identity:
    """Who acts (--operator, else $BACKSTOP_OPERATOR, else the OS user) and their code source.

    The code is --otp, else an echo-free prompt when stdin is a terminal
    (asked only if the gate gets that far), else none: the gate then refuses
    with a message saying which code is needed.
    """
    from core.security.gate import Identity, acting_operator

    name = acting_operator(getattr(args, "operator", None))
    code = getattr(args, "otp", None)
    if code is None and sys.stdin.isatty():
        def prompt() -> str | None:
            with progress_paused():
                return getpass.getpass(f"one-time code for operator {name}: ") or None

        return Identity(name, prompt)
    return Identity(name, code)


# -- running ------------------------------------------------------------------------------------------------------


def build_engine(args: argparse.Namespace) -> tuple[Engine, ProgressDisplay]:
    """The Engine for ``--config`` (or $BACKSTOP_CONFIG), with the progress display subscribed."""
    from core.config import parse_config, read_config
    from core.engine import Engine

    data, path = read_config(args.config)
    engine = Engine(parse_config(data, path), config_source=(data, path))
    progress = ProgressDisplay()
    engine.bus.subscribe(progress)
    return engine, progress


# Commands that act on retention, schedules or the key rotation policy: they check the catalog's copy of the
# approved settings against the repository's sealed one (a few ms; the catalog could have been edited).
SETTINGS_VERIFIED = ("forget", "key", "schedule")


async def apply_settings(engine: Engine, args: argparse.Namespace) -> None:
    """Put the approved schedules/retention/encryption settings in force; one stderr line when edits wait.

    `backstop settings` itself (``settings_command`` set) runs even when the
    approved settings no longer fit the file: it is how that gets fixed.
    """
    from core.errors import ConfigError
    from core.settings.effective import PENDING_NOTICE

    own = getattr(args, "settings_command", False)
    try:
        eff = await engine.apply_settings(verify=getattr(args, "command", None) in SETTINGS_VERIFIED)
    except ConfigError:
        if not own:
            raise
        return
    if eff is not None:
        for note in eff.notes:
            warn(note)
        if eff.pending and not own:
            warn(PENDING_NOTICE)


def run(fn: EngineHandler, args: argparse.Namespace) -> int:
    """Run ``fn(engine, args)`` in an event loop; SIGTERM cancels it like Ctrl-C and raises :class:`Terminated`.

    Cancelling (rather than dying) lets every cleanup path run: locks
    released, a half-restored database dropped, the job recorded as abandoned.
    """
    import asyncio

    async def main() -> int:
        engine, progress = build_engine(args)
        await apply_settings(engine, args)
        encryption = engine.config.encryption
        warning = encryption.passphrase_file_warning() if hasattr(encryption, "passphrase_file_warning") else None
        if warning:
            warn(warning)
        # SIGTERM (systemd, kill, a CI timeout) cancels the command like Ctrl-C does.
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        got: list[int] = []

        def on_term() -> None:
            got.append(signal.SIGTERM)
            if task is not None:
                task.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            return await fn(engine, args)
        except asyncio.CancelledError:
            if got:
                raise Terminated() from None
            raise
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            progress.stop()
            await engine.close()

    return asyncio.run(main())


def engine_command(fn: EngineHandler) -> Handler:
    """The dispatcher's ``args -> int`` handler for an ``async (engine, args) -> int`` command."""

    def handler(args: argparse.Namespace) -> int:
        return run(fn, args)

    handler.__name__ = handler.__qualname__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


def setup_logging() -> None:
    """Warnings from inside backstop (logger ``backstop.*``) as one ``backstop: warning:`` line each on stderr."""

    class _WarningLines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                warn(record.getMessage())
            except Exception:  # noqa: BLE001  (a log line must never break the command)
                self.handleError(record)

    log = logging.getLogger("backstop")
    log.addHandler(_WarningLines())
    log.setLevel(logging.WARNING)
    log.propagate = False

