"""`backstop demo`: a private PostgreSQL with warranty data, a local repository, a first backup
and a printed summary (the CLI then opens the operator console when run on a terminal).

Everything lives in one sandbox directory (the XDG data dir by default), so
the demo never touches a real server or repository. The cluster keeps
running after the demo so the CLI can be tried on it; `--stop` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# The output module of the CLI, not its handlers: the summary reads as `backstop snapshots` and `check` do.
from core.cli.output import SNAPSHOT_COLUMNS, check_lines, print_table, snapshot_rows
from core.config import default_data_dir, load_config
from core.errors import BackstopError

if TYPE_CHECKING:
    from core.engine import Engine
    from core.postgres.cluster import LocalCluster

DB_NAME = "warranty"
HISTORY_BACKUPS = 3  # backups after the first, the claims growing before each
GROWTH = 0.15  # the claims grow by this share before each of them


def _say(msg: str) -> None:
    print(msg, flush=True)


def sandbox_dir(arg: str | None) -> Path:
    """Where the sandbox lives."""
    return Path(arg).absolute() if arg else default_data_dir() / "demo"


def _cluster(base: Path) -> LocalCluster:
    from core.postgres.cluster import LocalCluster, free_port

    state_file = base / "sandbox.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    port = state.get("port") or free_port()
    # Password mode: any local user can reach 127.0.0.1, and a trusted superuser
    # login would let them run programs as the server's account.
    cluster = LocalCluster(base / "pg", port=port, pgpass=base / "pgpass", settings=_archiving(base))
    state_file.write_text(json.dumps({"port": port}))
    return cluster


def _backstop_argv() -> list[str]:
    """How the server's archive_command runs this very Backstop."""
    script = Path(sys.executable).with_name("backstop")
    return [str(script)] if script.exists() else [sys.executable, "-m", "core.cli"]


def _archiving(base: Path) -> dict[str, str]:
    """The sandbox archives its WAL through `backstop wal-push` (physical snapshots and point-in-time restores)."""
    command = shlex.join([*_backstop_argv(), "--config", str(base / "backstop.yaml"), "wal-push"])
    # A switch every minute at the most, so the dashboard's recovery-point age stays that of an idle server.
    return {"archive_mode": "on", "archive_command": command.replace("%", "%%") + " %p", "archive_timeout": "60"}


def _stop_wal_helpers(base: Path) -> None:
    """SIGTERM the sandbox's resident WAL pusher and fetcher (they would exit after minutes idle anyway)."""
    from core.wal.spool import Spool

    spool = Spool(base / "wal-spool", "")
    if not os.path.isdir(spool.root):
        return
    for lock in (spool.pusher_lock, spool.fetcher_lock):
        pid = spool.holder(lock)
        if pid is not None and pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _let_server_archive(cluster: LocalCluster, base: Path) -> None:
    """As root the server runs as an unprivileged account: its archive_command must reach what wal-push uses."""
    if cluster.owner is None:
        return
    for program in {Path(sys.executable), Path(_backstop_argv()[0])}:
        cluster.let_run(program)
    cluster.grant(base / "repository", base / "passphrase", base / "wal-spool")
    _say(f"the repository, its passphrase and the WAL spool belong to {cluster.os_user}, the account the "
         "sandbox's server and its archive_command run as (root keeps every right)")


def _write_config(base: Path, dsn: str) -> Path:
    passfile = base / "passphrase"
    if not passfile.exists():
        passfile.write_text(secrets.token_urlsafe(24) + "\n")
        passfile.chmod(0o600)
    cfg = base / "backstop.yaml"
    cfg.write_text(
        "# Written by `backstop demo`: a sandbox configuration.\n"
        f"catalog: {{url: \"sqlite:///{base / 'catalog.db'}\"}}\n"
        f"encryption: {{passphrase_file: {passfile}}}\n"
        f"wal: {{spool_dir: {base / 'wal-spool'}}}\n"
        "targets:\n"
        f"  - {{name: local1, type: local, path: {base / 'repository'}}}\n"
        "databases:\n"
        # A tight RTO for a small sandbox: its measured restores show against it in the console's charts.
        f"  - {{name: {DB_NAME}, dsn: \"{dsn}\", rto_minutes: 1}}\n"
        "# `backstop daemon` runs these (README, Schedules and the daemon).\n"
        "schedules:\n"
        f"  - {{name: hourly, action: backup, db: {DB_NAME}, cron: \"0 * * * *\"}}\n"
        "  - {name: verify, action: verify, cron: \"30 * * * *\", sample: 10%}\n"
        f"  - {{name: drill, action: drill, db: {DB_NAME}, cron: \"15 3 * * 1\"}}\n"
    )
    return cfg


def run_demo(sandbox: str | Path | None, claims: int = 50_000, reset: bool = False,
             stop: bool = False) -> tuple[Path, int]:
    """Set up (or reuse) the sandbox, take a backup and print a summary; returns the config path and exit status.

    ``sandbox``: the directory (default: the XDG data dir); ``claims``: rows of
    warranty data to generate on first use; ``reset``: throw the sandbox away
    first; ``stop``: only stop the sandbox's server. Opening the console
    afterwards is the caller's business (`backstop demo` does it on a terminal).
    """
    base = sandbox_dir(None if sandbox is None else str(sandbox))
    cfg_path = base / "backstop.yaml"
    if stop:
        if (base / "pg").exists():
            _cluster(base).stop()
            _say(f"sandbox PostgreSQL in {base} stopped")
        _stop_wal_helpers(base)
        return cfg_path, 0
    if reset and base.exists():
        if (base / "pg").exists():
            try:
                _cluster(base).stop()
            except BackstopError:
                pass  # a broken sandbox is being thrown away anyway
        shutil.rmtree(base)
    base.mkdir(parents=True, exist_ok=True)
    cluster = _cluster(base)
    if not (cluster.data_dir / "PG_VERSION").exists():
        _say(f"creating a private PostgreSQL cluster in {cluster.data_dir} (binaries: {cluster.bin_dir})")
        cluster.init()
    # Also when already running: a sandbox made before password mode is switched over here.
    cluster.start()
    _say(f"PostgreSQL listening on 127.0.0.1:{cluster.port}")
    # The repository first: the server archives its WAL into it from now on (a sandbox started before
    # archiving was part of the demo gets it at its next start: `backstop demo --stop`, then `backstop demo`).
    cfg_path = _write_config(base, cluster.dsn(DB_NAME))
    (base / "wal-spool").mkdir(mode=0o700, exist_ok=True)
    asyncio.run(_init_repository(cfg_path))
    _let_server_archive(cluster, base)
    import psycopg

    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (DB_NAME,)).fetchone()
    if not exists:
        from core.sandbox.warranty import generate

        _say(f"loading warranty-cost data: {claims} claims …")
        cluster.create_database(DB_NAME)
        generate(cluster.dsn(DB_NAME), claims=claims)
    rc = asyncio.run(_backup_and_show(cfg_path, history=not exists))
    if rc == 0:
        from core.sandbox.fleet import prepare_fleet

        fleet = prepare_fleet(base, cluster, DB_NAME, cluster.dsn(DB_NAME))
        _say(f"A fleet in the sandbox (the catalog on PostgreSQL, one agent; README, \"A fleet\"):\n"
             f"  backstop --config {fleet / 'agent.yaml'} agent &\n"
             f"  backstop --config {fleet / 'control.yaml'} schedule run hourly   (or: daemon)\n"
             f"  backstop --config {fleet / 'control.yaml'} agents")
    return cfg_path, rc


async def _build_history(engine: Engine, repository: Path) -> None:
    """A first sandbox gets a history for the console's charts: real backups of growing data, measured restores
    and drills into scratch databases (dropped afterwards), and one backup that failed for a real cause."""
    from core.drills.runner import DrillRequest
    from core.postgres.logical import drop_database
    from core.sandbox.warranty import append_claims

    dsn = engine.config.database(DB_NAME).dsn
    snapshots = []
    for _ in range(HISTORY_BACKUPS):
        _say(f"history: the claims grow by {GROWTH:.0%}, then a backup …")
        await asyncio.to_thread(append_claims, dsn, GROWTH)
        snapshots.append((await engine.backup(DB_NAME)).id)
    # The backup disk is unplugged for one backup: it fails naming the target, and is back for the rest.
    unplugged = repository.with_name(repository.name + ".unplugged")
    repository.rename(unplugged)
    try:
        await engine.backup(DB_NAME)
    except BackstopError as exc:
        _say(f"history: a backup while the repository's disk was away failed as it should: {exc}")
    finally:
        unplugged.rename(repository)
    for k, sid in enumerate(snapshots):
        scratch = f"{DB_NAME}_demo_restore_{k}"
        res = await engine.restore(DB_NAME, scratch, snapshot=sid)
        await drop_database(dsn, scratch)
        _say(f"history: restore of snapshot {sid[:8]} into {scratch} took {res.duration_s:.1f} s (dropped since)")
        # A real drill: restore into scratch, table digests and amcheck, RTO, a sealed report with its MAC.
        report = await engine.drill(DrillRequest(DB_NAME, snapshot=sid, scheduled_by="demo"))
        _say(f"history: drill {report.id} of snapshot {sid[:8]}: {report.verdict}, recovered in "
             f"{report.recovery_s:.1f} s (`backstop drill report {report.id}`)")


async def _init_repository(cfg_path: Path) -> None:
    from core.engine import Engine

    async with Engine(load_config(cfg_path)) as engine:
        res = await engine.init()
        if res.created_on:
            _say(f"created an encrypted repository on {', '.join(res.created_on)}")


async def _backup_and_show(cfg_path: Path, history: bool = False) -> int:
    from core.engine import Engine

    async with Engine(load_config(cfg_path)) as engine:
        _say(f"backing up database {DB_NAME} …")
        rec = await engine.backup(DB_NAME)
        _say(f"snapshot {rec.short_id}: {rec.size_bytes / 2**20:.1f} MiB logical, "
             f"{rec.stored_bytes / 2**20:.1f} MiB new in the repository\n")
        if history:
            await _build_history(engine, cfg_path.parent / "repository")
            _say("")
        rows = engine.snapshots()
        if rows:
            print_table(SNAPSHOT_COLUMNS, snapshot_rows(rows))
        else:
            _say("no snapshots")
        _say("")
        for line in check_lines(await engine.check(read_data=True)):
            _say(line)
    _say(
        f"\nTry it yourself:\n  export BACKSTOP_CONFIG={cfg_path}\n"
        f"  backstop backup --db {DB_NAME}\n  backstop backup --db {DB_NAME} --type physical\n"
        f"  backstop wal status\n  backstop snapshots\n"
        f"  backstop restore --db {DB_NAME} --into {DB_NAME}_copy\n  backstop check --read-data\n"
        f"  backstop tui\n  backstop daemon   (runs the sandbox's schedules; `backstop schedule list`)\n"
        "Stop the sandbox server with: backstop demo --stop"
    )
    return 0


