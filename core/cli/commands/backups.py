"""`backstop backup`, `snapshots`, `restore` (also `restore --force`, which replaces a database) and `export`."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, completes, completes_files, engine_command, identity
from core.cli.output import EXIT_OK, SNAPSHOT_COLUMNS, err, print_json, print_table, size, snapshot_rows, warn
from core.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from core.engine import Engine
    from core.postgres.recovery import RecoveryTarget


async def cmd_backup(engine: Engine, args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    rec = await engine.backup(args.db, args.type)
    if args.json:
        print_json(rec.to_json())
    else:
        print(rec.id)
        wal = (f" (WAL {rec.start_lsn} to {rec.stop_lsn} on timeline {rec.timeline}: {rec.status})"
               if rec.is_physical else "")
        err(f"snapshot {rec.short_id} of {rec.db}: {size(rec.size_bytes)} {rec.kind}{wal}, {size(rec.stored_bytes)} "
            f"new in {time.monotonic() - t0:.1f} s; {rec.verified_summary}")
    return EXIT_OK


async def cmd_snapshots(engine: Engine, args: argparse.Namespace) -> int:
    rows, warnings = await engine.refresh_snapshot_status(engine.snapshots(args.db))
    for w in warnings:
        warn(w)
    configured = [t.name for t in engine.config.targets]

    def missing(r: Any) -> list[str]:  # configured targets without a copy (a quorum write; sync fills them)
        return [t for t in configured if t not in r.targets]

    if args.json:
        print_json([{**r.to_json(), "missing_targets": missing(r)} for r in rows], indent=1)
        return EXIT_OK
    if not rows:
        print("no snapshots" + (f" of {args.db}" if args.db else ""))
        return EXIT_OK
    table = list(snapshot_rows(rows))
    for r, row in zip(rows, table, strict=True):
        if missing(r):
            row[7] = f"{row[7]} (MISSING {','.join(missing(r))})"
    print_table(SNAPSHOT_COLUMNS, table)
    incomplete = sum(1 for r in rows if missing(r))
    if incomplete:
        warn(f"{incomplete} snapshot(s) lack a copy on some target; `backstop sync` copies them there")
    return EXIT_OK


async def cmd_restore(engine: Engine, args: argparse.Namespace) -> int:
    if args.type == "physical":
        return await restore_physical(engine, args)
    if args.table and (args.target_immediate or any(getattr(args, f"target_{t}") is not None
                                                    for t in ("time", "lsn", "xid", "name"))):
        return await restore_table_at_moment(engine, args)
    physical_only = [o for o, v in (("--pgdata", args.pgdata), ("--start", args.start), ("--port", args.port),
                                    ("--archive-mode", args.archive_mode), ("--target-timeline", args.target_timeline),
                                    ("--target-action", args.target_action)) if v]
    if physical_only or any(getattr(args, f"target_{t}") is not None for t in ("time", "lsn", "xid", "name")) \
            or args.target_immediate:
        raise UsageError(f"{(physical_only or ['point-in-time targets'])[0]} belongs to physical restores: add "
                         "--type physical --pgdata DIR")
    if not args.into:
        raise UsageError("restore needs --into NEW_DB (a logical restore), or --type physical --pgdata DIR")
    if args.by_agent:
        return await restore_by_agent(engine, args)
    if args.force:
        return await restore_force(engine, args)
    res = await engine.restore(args.db, args.into, args.snapshot, args.table, target=args.target,
                               only_target=args.target is not None, patterns=args.pattern, schemas=args.schema)
    if args.json:
        print_json({"snapshot": res.snapshot_id, "db": res.db, "into": res.into, "tables": res.tables,
                    "bytes": res.bytes, "duration_s": round(res.duration_s, 3), "warnings": res.warnings,
                    "left_out": res.left_out, "sources": [s.to_json() for s in res.sources]})
    else:
        what = ", ".join(res.tables) if res.tables else "whole database"
        print(f"restored snapshot {res.snapshot_id[:8]} of {res.db} ({what}) into {res.into} "
              f"in {res.duration_s:.1f} s ({size(res.bytes)})")
        print(res.read_summary())
    return EXIT_OK


async def restore_by_agent(engine: Engine, args: argparse.Namespace) -> int:
    """`restore --by-agent`: the agent beside the database restores; the code (with --force) is checked here."""
    from core.fleet.restore_dispatch import RestoreOrder

    if args.pattern or args.schema or args.target:
        raise UsageError("--by-agent takes --snapshot, --table and --force; --pattern, --schema and --target are"
                         " for restores run on this host")
    order = RestoreOrder(args.db, args.into, args.snapshot, tuple(args.table), overwrite=args.force)
    job = await engine.dispatch_restore(order, identity(args))
    warn(f"queued as fleet job {job.id} for agent {job.agent}; waiting for it")
    seen: list[str] = []

    def progress(j: Any) -> None:
        phase = str((j.progress or {}).get("phase") or "")
        if phase and phase not in seen:
            seen.append(phase)
            warn(f"agent {j.agent}: {phase}")

    done = await engine.wait_for_fleet_job(job.id, progress)
    result = done.result or {}
    if args.json:
        print_json({"job": done.id, "agent": done.agent, **result})
    else:
        print(f"agent {done.agent} restored snapshot {str(result.get('snapshot', ''))[:8]} of {args.db} into "
              f"{args.into} in {float(result.get('duration_s') or 0):.1f} s (fleet job {done.id})")
    return EXIT_OK


async def restore_physical(engine: Engine, args: argparse.Namespace) -> int:
    """`restore --type physical`: a new data directory recovered to a point in time (started with --start)."""
    from pathlib import Path

    from core.ops.physical_restore import PhysicalRestoreRequest

    logical_only = [o for o, v in (("--into", args.into), ("--table", args.table), ("--pattern", args.pattern),
                                   ("--schema", args.schema), ("--force", args.force), ("--target", args.target)) if v]
    if logical_only:
        raise UsageError(f"{logical_only[0]} belongs to logical restores; a physical restore writes a whole cluster "
                         "into --pgdata DIR (for tables at a moment leave out --type physical: --table with a "
                         "--target-* option and --into NEW_DB)")
    if not args.pgdata:
        raise UsageError("restore --type physical needs --pgdata DIR (a new or empty directory)")
    target, config_path = _moment(args)
    res = await engine.restore_physical(PhysicalRestoreRequest(
        db=args.db, pgdata=Path(args.pgdata), config_path=config_path, snapshot=args.snapshot,
        target=target, start=args.start, port=args.port, archive_mode=args.archive_mode or "off"))
    if args.json:
        print_json(res.to_json())
        return EXIT_OK
    print(f"restored physical snapshot {res.snapshot_id[:8]} of {res.db} into {res.pgdata} ({res.files} files, "
          f"{size(res.bytes)}) in {res.duration_s:.1f} s; pg_verifybackup: {res.verified}")
    print(res.read_summary())
    point = res.recovery
    if point is None:
        print(f"recovery to {res.target.describe()} starts with the server (WAL from {res.wal_from}): "
              f"{res.start_command}")
    else:
        commit = f", last commit {point.commit_time}" if point.commit_time else ""
        where = f"; listening on 127.0.0.1:{res.port}" if point.state != "shut down" else ""
        print(f"recovered to {res.target.describe()}: {point.state} at LSN {point.lsn or 'unknown'}{commit}"
              f"{f' (timeline {point.timeline})' if point.timeline else ''}{where}")
    return EXIT_OK


def _moment(args: argparse.Namespace) -> tuple[RecoveryTarget, Path]:
    """The --target-* options as a recovery target, and the config file (absolute) that wal-fetch will read."""
    import os
    from pathlib import Path

    from core.config import CONFIG_ENV
    from core.postgres.recovery import make_target

    target = make_target(time=args.target_time, lsn=args.target_lsn, xid=args.target_xid, name=args.target_name,
                         immediate=args.target_immediate, action=args.target_action, timeline=args.target_timeline)
    return target, Path(args.config or os.environ.get(CONFIG_ENV, "")).absolute()


async def restore_table_at_moment(engine: Engine, args: argparse.Namespace) -> int:
    """`restore --table T --target-* X --into NEW_DB`: tables as they were at a moment, through a scratch cluster."""
    from core.ops.table_at_moment import TableAtMomentRequest

    wrong = [o for o, v in (("--pattern", args.pattern), ("--schema", args.schema), ("--force", args.force),
                            ("--target", args.target), ("--pgdata", args.pgdata), ("--start", args.start),
                            ("--port", args.port), ("--archive-mode", args.archive_mode)) if v]
    if wrong:
        raise UsageError(f"{wrong[0]} does not go with tables at a moment (--table with a --target-* option): "
                         "name each table with --table and the new database with --into")
    if not args.into:
        raise UsageError("tables at a moment go into a new database: add --into NEW_DB")
    target, config_path = _moment(args)
    res = await engine.restore_table_at_moment(TableAtMomentRequest(
        db=args.db, tables=tuple(args.table), into=args.into, target=target, config_path=config_path,
        snapshot=args.snapshot))
    if args.json:
        print_json(res.to_json())
        return EXIT_OK
    point = res.point
    commit = f", last commit {point.commit_time}" if point.commit_time else ""
    tables = ", ".join(f"{t.table} ({t.rows} rows)" for t in res.tables)
    print(f"restored {tables} of {res.db} as of {res.target.describe()} into {res.into} in {res.duration_s:.1f} s "
          f"(physical snapshot {res.snapshot_id[:8]}, recovery {point.state} at LSN {point.lsn or 'unknown'}"
          f"{commit})")
    return EXIT_OK


async def restore_force(engine: Engine, args: argparse.Namespace) -> int:
    """`restore --force`: replace an existing database, keeping the old one aside."""
    if args.table or args.pattern or args.schema:
        raise UsageError("--force replaces a whole database; to bring back tables, restore them into a new "
                         "database (without --force) and copy the rows over")
    res = await engine.restore_over(args.db, args.into, args.snapshot, identity(args))
    r = res.restore
    if args.json:
        print_json({"snapshot": r.snapshot_id, "db": r.db, "into": r.into, "replaced": res.replaced_by_restore,
                    "previous_kept_as": res.aside, "bytes": r.bytes, "duration_s": round(r.duration_s, 3),
                    "warnings": r.warnings, "sources": [s.to_json() for s in r.sources]})
    else:
        print(f"restored snapshot {r.snapshot_id[:8]} of {r.db} into {r.into} in {r.duration_s:.1f} s "
              f"({size(r.bytes)})")
        print(r.read_summary())
        if res.aside:
            err(f"the previous database {r.into} is kept as {res.aside}; drop it when you no longer need it")
    return EXIT_OK


async def cmd_export(engine: Engine, args: argparse.Namespace) -> int:
    res = await engine.export(args.db, args.output, args.format, args.snapshot)
    if args.json:
        print_json({"snapshot": res.snapshot_id, "db": res.db, "format": res.format, "path": res.path,
                    "bytes": res.bytes, "tables": res.tables, "pg_dump_version": res.pg_dump_version,
                    "duration_s": round(res.duration_s, 3), "restore_with": res.restore_hint,
                    "warnings": res.warnings})
    else:
        print(f"exported snapshot {res.snapshot_id[:8]} of {res.db} as a {res.format} "
              f"{'SQL script' if res.format == 'plain' else 'pg_dump archive'} ({res.tables} tables, "
              f"{size(res.bytes)}) to {res.path} in {res.duration_s:.1f} s")
        major = res.pg_dump_version.split(".")[0].split()[0] if res.pg_dump_version else ""
        made_by = f" (written by pg_dump {major}: use PostgreSQL {major} tools or newer)" if major else ""
        print(f"restore it with: {res.restore_hint}{made_by}")
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, "backup", engine_command(cmd_backup),
                    "take a full snapshot of a database (logical) or of its cluster (physical); prints the "
                    "snapshot id", common)
    completes(p.add_argument("--db", required=True, metavar="NAME", help="database name from the config"), "databases")
    p.add_argument("--type", choices=("logical", "physical"), default="logical",
                   help="logical (default): this database, restorable table by table; physical: a base backup of "
                        "the whole cluster, restorable to any moment its archived WAL reaches")

    p = add_command(sub, "snapshots", engine_command(cmd_snapshots), "list snapshots", common)
    completes(p.add_argument("--db", metavar="NAME", help="only this database"), "databases")

    p = add_command(sub, "restore", engine_command(cmd_restore), "restore a snapshot into a new database", common,
                    description="restore a snapshot into a new database (whole, or --table ...); with --table and a "
                                "--target-* option, those tables as they were at that moment (a physical snapshot "
                                "and the WAL recovered in a scratch cluster under restore.scratch_dir, then "
                                "copied into --into NEW_DB); with --type physical, a whole cluster into --pgdata")
    completes(p.add_argument("--db", required=True, metavar="NAME", help="database name from the config"), "databases")
    completes(p.add_argument("--snapshot", default="latest", metavar="ID",
                             help="snapshot id or prefix, or 'latest' (default)"), "snapshot-ref")
    p.add_argument("--into", metavar="NEW_DB", help="name of the new database to create (logical restores)")
    p.add_argument("--table", action="append", default=[], metavar="SCHEMA.TABLE",
                   help="restore this table (exactly: quote as PostgreSQL does, 'public.\"My Table\"'), with its "
                        "indexes, constraints, triggers, policies, grants and partitions (repeatable); with "
                        "--target-time/-lsn/-xid/-name: as it was at that moment")
    p.add_argument("--pattern", action="append", default=[], metavar="[SCHEMA.]TABLE",
                   help="restore the tables matching a psql-style pattern, e.g. 'ledger.claim*' (repeatable)")
    p.add_argument("--schema", action="append", default=[], metavar="NAME",
                   help="restore every table of this schema (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="if --into exists, replace it (operator with a one-time code; the old one is kept aside)")
    p.add_argument("--by-agent", action="store_true",
                   help="on a fleet's catalog: have the agent beside the database run it (the code for --force is "
                        "checked here, by the control plane); waits and shows its progress")
    completes(p.add_argument("--target", metavar="NAME",
                             help="read only from this target (default: any intact copy, first target first)"),
              "targets")
    _physical_restore_options(p)

    p = add_command(sub, "export", engine_command(cmd_export),
                    "write a snapshot as a standard pg_dump archive (pg_restore) or SQL script (psql)", common)
    completes(p.add_argument("--db", required=True, metavar="NAME", help="database name from the config"), "databases")
    completes(p.add_argument("--snapshot", default="latest", metavar="ID",
                             help="snapshot id or prefix, or 'latest' (default)"), "snapshot-ref")
    p.add_argument("--format", required=True, choices=("custom", "directory", "plain"),
                   help="custom or directory: a pg_dump -Fc or -Fd archive, for pg_restore; plain: an SQL script, "
                        "for psql")
    completes_files(p.add_argument("-o", "--output", required=True, metavar="PATH",
                                   help="where to write it: a new file (custom, plain) or a new or empty directory"))


def _physical_restore_options(p: argparse.ArgumentParser) -> None:
    """`restore --type physical`: a data directory, recovered to a point in time."""
    p.add_argument("--type", choices=("logical", "physical"), default="logical",
                   help="logical (default): into a new database; physical: a whole cluster into --pgdata DIR")
    completes_files(p.add_argument("--pgdata", metavar="DIR", help="physical: the new data directory (absent or "
                                                                    "empty)"))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target-time", metavar="ISO8601",
                   help="physical, or --table: recover to this moment (no UTC offset: this machine's local time)")
    g.add_argument("--target-lsn", metavar="LSN",
                   help="physical, or --table: recover to this WAL location, e.g. 0/3000148")
    g.add_argument("--target-xid", metavar="XID",
                   help="physical, or --table: recover to the commit of this transaction")
    g.add_argument("--target-name", metavar="NAME",
                   help="physical, or --table: recover to this pg_create_restore_point() name")
    g.add_argument("--target-immediate", action="store_true",
                   help="physical, or --table: stop as soon as the base backup is consistent")
    p.add_argument("--target-action", choices=("promote", "pause", "shutdown"),
                   help="physical: what the server does at the target (default promote; with --table promote or "
                        "pause); without a target it recovers to the end of the archive and promotes")
    p.add_argument("--target-timeline", metavar="latest|current|N",
                   help="physical: the timeline to recover along (default latest)")
    p.add_argument("--archive-mode", choices=("off", "preserve"),
                   help="physical: off (default) keeps the restored cluster from archiving into this repository; "
                        "preserve keeps the backup's archive settings")
    p.add_argument("--start", action="store_true",
                   help="physical: start the server (as an unprivileged user, on 127.0.0.1) and wait for recovery")
    p.add_argument("--port", type=int, metavar="P", help="physical: with --start, the port (default: a free one)")
