"""The scriptable command line: `backstop ...` (cron, automation, operators).

Exit codes: 0 success, 1 the operation failed, 2 usage or configuration
error. Data goes to stdout (JSON with --json); messages go to stderr.
Heavy modules are imported inside the commands so that small commands
start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sqlite3
import sys
import time
from typing import Any, Callable, Coroutine

from core import __version__
from core.errors import BackstopError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _err(msg: str) -> None:
    print(f"backstop: {msg}", file=sys.stderr)


class _Progress:
    """One self-rewriting status line on stderr while a job runs (TTY only)."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, ev: Any) -> None:
        from core.events import JobWarning, PhaseChanged, Progress

        if isinstance(ev, JobWarning):
            self._clear()
            _err(f"warning: {ev.message}")
            return
        if not self.enabled:
            return
        if isinstance(ev, PhaseChanged):
            self._write(f"{ev.phase}…")
        elif isinstance(ev, Progress):
            now = time.monotonic()
            if now - self._last < 0.1:
                return
            self._last = now
            total = f"/{_human(ev.bytes_total)}" if ev.bytes_total else ""
            self._write(f"{ev.phase}: {_human(ev.bytes_done)}{total} at {_human(ev.rate)}/s")

    def _write(self, text: str) -> None:
        sys.stderr.write("\r\033[K" + text)
        sys.stderr.flush()

    def _clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from core.config import load_config
    from core.engine import Engine

    engine = Engine(load_config(args.config))
    progress = _Progress()
    engine.bus.subscribe(progress)
    return engine, progress


class Terminated(Exception):
    """SIGTERM arrived: the command was cancelled and has cleaned up."""


def _run(coro_fn: Callable[..., Coroutine[Any, Any, int]], args: argparse.Namespace) -> int:
    async def main() -> int:
        engine, progress = _engine(args)
        warning = engine.config.encryption.passphrase_file_warning() if hasattr(
            engine.config.encryption, "passphrase_file_warning") else None
        if warning:
            _err(f"warning: {warning}")
        # SIGTERM (systemd, kill, a CI timeout) cancels the command like Ctrl-C does, so
        # every cleanup path runs: locks released, a half-restored database dropped,
        # the job recorded as abandoned.
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        got: list[int] = []

        def on_term() -> None:
            got.append(signal.SIGTERM)
            if task is not None:
                task.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            return await coro_fn(engine, args)
        except asyncio.CancelledError:
            if got:
                raise Terminated() from None
            raise
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            progress._clear()
            await engine.close()

    return asyncio.run(main())


# -- commands -----------------------------------------------------------------


async def cmd_init(engine, args) -> int:  # type: ignore[no-untyped-def]
    res = await engine.init()
    if args.json:
        print(json.dumps({"repo_id": res.repo_id, "created_on": res.created_on, "existing_on": res.existing_on,
                          "repaired_on": res.repaired_on}))
    else:
        for t in res.created_on:
            print(f"created repository {res.repo_id[:8]} on target {t}")
        for t in res.existing_on:
            if t in res.repaired_on:
                print(f"target {t} repaired: {res.repaired_on[t]}")
            else:
                print(f"target {t} already holds repository {res.repo_id[:8]} (its config and keys open with this "
                      "passphrase)")
    return EXIT_OK


async def cmd_backup(engine, args) -> int:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    rec = await engine.backup(args.db)
    if args.json:
        print(json.dumps(rec.to_json()))
    else:
        print(rec.id)
        _err(f"snapshot {rec.short_id} of {rec.db}: {_human(rec.size_bytes)} logical, {_human(rec.stored_bytes)} new "
             f"in {time.monotonic() - t0:.1f} s; {rec.verified_summary}")
    return EXIT_OK


async def cmd_snapshots(engine, args) -> int:  # type: ignore[no-untyped-def]
    rows = engine.snapshots(args.db)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=1))
        return EXIT_OK
    if not rows:
        print("no snapshots" + (f" of {args.db}" if args.db else ""))
        return EXIT_OK
    print(f"{'ID':<10}{'DATABASE':<16}{'KIND':<9}{'FINISHED (UTC)':<27}{'SIZE':>11}{'NEW':>11}  TARGETS")
    for r in rows:
        print(f"{r.short_id:<10}{r.db:<16}{r.kind:<9}{r.finished_at:<27}{_human(r.size_bytes):>11}"
              f"{_human(r.stored_bytes):>11}  {','.join(r.targets)}")
    return EXIT_OK


async def cmd_restore(engine, args) -> int:  # type: ignore[no-untyped-def]
    if args.force:
        from core.cli_security import restore_force

        return await restore_force(engine, args)
    res = await engine.restore(args.db, args.into, args.snapshot, args.table, target=args.target,
                               only_target=args.target is not None)
    if args.json:
        print(json.dumps({"snapshot": res.snapshot_id, "db": res.db, "into": res.into, "tables": res.tables,
                          "bytes": res.bytes, "duration_s": round(res.duration_s, 3), "warnings": res.warnings}))
    else:
        what = ", ".join(res.tables) if res.tables else "whole database"
        print(f"restored snapshot {res.snapshot_id[:8]} of {res.db} ({what}) into {res.into} "
              f"in {res.duration_s:.1f} s ({_human(res.bytes)})")
    return EXIT_OK


async def cmd_check(engine, args) -> int:  # type: ignore[no-untyped-def]
    res = await engine.check(read_data=args.read_data, target=args.target)
    if args.json:
        print(json.dumps({"ok": res.ok, "read_data": res.read_data, "targets": [
            {"target": r.target, "ok": r.ok, "reachable": r.unreachable is None, "objects_checked": r.objects_checked,
             "bytes_read": r.bytes_read, "problems": r.problems, "notes": r.notes,
             "affected_snapshots": sorted(r.affected)} for r in res.reports],
            "catalog_problems": res.catalog_problems, "notes": res.notes}, indent=1))
    else:
        for r in res.reports:
            if r.unreachable is not None:
                print(f"target {r.target}: UNREACHABLE (not checked): {r.unreachable}")
                continue
            state = "ok" if r.ok else f"{len(r.problems)} problem(s)"
            print(f"target {r.target}: {state}; {r.objects_checked} objects, {_human(r.bytes_read)} read, "
                  f"{len(r.snapshots)} snapshot(s)")
            for p in r.problems:
                print(f"  DAMAGED {p}")
            for n in r.notes:
                print(f"  note: {n}")
        for p in res.catalog_problems:
            print(f"catalog: {p}")
        for n in res.notes:
            print(f"note: {n}")
    return EXIT_OK if res.ok else EXIT_FAILED


async def cmd_catalog_rebuild(engine, args) -> int:  # type: ignore[no-untyped-def]
    res = await engine.rebuild_catalog()
    if args.json:
        print(json.dumps({"snapshots": res.snapshots, "removed": res.removed, "security": res.security,
                          "warnings": res.warnings}, indent=1))
        return EXIT_OK
    print(f"catalog rebuilt: {res.snapshots} snapshot(s) read from the repository")
    for sid in res.removed:
        print(f"  removed snapshot {sid[:8]}: no target holds it")
    for line in res.security:
        print(f"  {line}")
    for w in res.warnings:
        _err(f"warning: {w}")
    return EXIT_OK


async def cmd_jobs(engine, args) -> int:  # type: ignore[no-untyped-def]
    rows = engine.catalog.jobs(limit=args.limit)
    if args.json:
        print(json.dumps([j.to_json() for j in rows], indent=1))
        return EXIT_OK
    for j in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(j.started_at))
        dur = f"{(j.finished_at or time.time()) - j.started_at:.1f}s"
        print(f"{j.id}  {when}  {j.kind:<8} {j.state:<10} {dur:>8}  {j.description}"
              + (f"\n    error: {j.error}" if j.error else ""))
    return EXIT_OK


def open_console(config: str | None, operator: str | None = None) -> int:
    """Open the Textual operator console on a config (used by `tui` and `demo`)."""
    from core.config import load_config
    from core.engine import Engine
    from core.security.gate import acting_operator

    operator = acting_operator(operator)  # a name that could forge audit lines is refused before anything opens
    engine = Engine(load_config(config))
    # The dashboard's catalog reads start now and overlap Textual's import and start-up.
    first = engine.prefetch_dashboard()
    # Imported here: Textual costs ~200 ms that no other command should pay.
    from tui.app import run_console

    return run_console(engine, first, operator=operator)


def _tui(args: argparse.Namespace) -> int:
    if args.demo and args.config is None:
        from core.sandbox.demo import sandbox_dir

        args.config = str(sandbox_dir(None) / "backstop.yaml")
    return open_console(args.config, getattr(args, "operator", None))


def _demo(args: argparse.Namespace) -> int:
    from core.sandbox.demo import run_demo

    return run_demo(args)


# -- parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests and docs can inspect it)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help="config file (default: $BACKSTOP_CONFIG)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print data as JSON")
    common.add_argument("--operator", default=argparse.SUPPRESS, metavar="NAME",
                        help="who is acting (default: $BACKSTOP_OPERATOR, else the OS user name)")
    common.add_argument("--otp", default=argparse.SUPPRESS, metavar="CODE",
                        help="one-time code for destructive actions (default: prompt when on a terminal)")

    p = argparse.ArgumentParser(prog="backstop", description="Backup and recovery for PostgreSQL.", parents=[common])
    p.add_argument("--version", action="version", version=f"backstop {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, parents=[common])
        sp.set_defaults(func=fn)
        return sp

    add("init", cmd_init, "create the repository on every target (idempotent)")
    sp = add("backup", cmd_backup, "take a logical full snapshot of a database; prints the snapshot id")
    sp.add_argument("--db", required=True, metavar="NAME", help="database name from the config")
    sp = add("snapshots", cmd_snapshots, "list snapshots")
    sp.add_argument("--db", metavar="NAME", help="only this database")
    sp = add("restore", cmd_restore, "restore a snapshot into a new database")
    sp.add_argument("--db", required=True, metavar="NAME", help="database name from the config")
    sp.add_argument("--snapshot", default="latest", metavar="ID", help="snapshot id or prefix, or 'latest' (default)")
    sp.add_argument("--into", required=True, metavar="NEW_DB", help="name of the new database to create")
    sp.add_argument("--table", action="append", default=[], metavar="SCHEMA.TABLE",
                    help="restore only this table with its data (repeatable)")
    sp.add_argument("--force", action="store_true",
                    help="if --into exists, replace it (operator with a one-time code; the old one is kept aside)")
    sp.add_argument("--target", metavar="NAME",
                    help="read only from this target (default: any intact copy, first target first)")
    sp = add("check", cmd_check, "verify the repository; --read-data fetches and decrypts every chunk")
    sp.add_argument("--read-data", action="store_true", help="read, decrypt and hash every stored chunk")
    sp.add_argument("--target", metavar="NAME", help="check only this target")
    sp = add("jobs", cmd_jobs, "list recent jobs")
    sp.add_argument("--limit", type=int, default=20)
    cat = sub.add_parser("catalog", help="catalog maintenance", parents=[common])
    csub = cat.add_subparsers(dest="catalog_command", metavar="COMMAND")
    csub.required = True
    cr = csub.add_parser("rebuild", help="re-read snapshots from the repository into the catalog", parents=[common])
    cr.set_defaults(func=cmd_catalog_rebuild)
    sp = sub.add_parser("tui", help="open the operator console (Textual)", parents=[common])
    sp.add_argument("--demo", action="store_true", help="open it on the `backstop demo` sandbox")
    sp.set_defaults(func=None, sync=_tui)
    sp = sub.add_parser("demo", help="run the sandbox demo (private PostgreSQL, local repository)", parents=[common])
    sp.add_argument("--dir", metavar="PATH", help="sandbox directory (default: the XDG data dir)")
    sp.add_argument("--claims", type=int, default=50_000, help="warranty claims to generate (default 50000)")
    sp.add_argument("--reset", action="store_true", help="delete the sandbox and start again")
    sp.add_argument("--stop", action="store_true", help="stop the sandbox's PostgreSQL server and exit")
    sp.add_argument("--no-tui", action="store_true", help="print the summary only; do not open the console")
    sp.set_defaults(func=None, sync=_demo)
    from core import cli_security  # operators, audit, keys, forget, prune (light imports only)

    cli_security.add_parsers(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `backstop` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None)
    args.json = getattr(args, "json", False)
    args.operator = getattr(args, "operator", None)
    args.otp = getattr(args, "otp", None)
    _setup_logging()
    try:
        if getattr(args, "sync", None) is not None:
            return args.sync(args)
        return _run(args.func, args)
    except BackstopError as exc:
        _err(str(exc))
        return exc.exit_code
    except Terminated:
        _err("terminated (SIGTERM): the command was stopped and cleaned up; nothing half-done was left visible")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        _err("interrupted; nothing was committed by the interrupted command")
        return 130
    except sqlite3.Error as exc:
        _err(f"the catalog database failed ({exc}); if it was damaged or edited, "
             "`backstop catalog rebuild` rebuilds it from the repository")
        return EXIT_FAILED


def _setup_logging() -> None:
    """Warnings from inside backstop (logger ``backstop.*``) as one line each on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("backstop: warning: %(message)s"))
    log = logging.getLogger("backstop")
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False


if __name__ == "__main__":
    sys.exit(main())
