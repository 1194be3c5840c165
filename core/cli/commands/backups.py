"""`backstop backup`, `snapshots`, `restore` (also `restore --force`, which replaces a database) and `export`."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, completes, completes_files, engine_command, identity
from core.cli.output import EXIT_OK, SNAPSHOT_COLUMNS, err, print_json, print_table, size, snapshot_rows
from core.errors import UsageError

if TYPE_CHECKING:
    from core.engine import Engine

async def cmd_backup(engine: Engine, args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    rec = await engine.backup(args.db)
    if args.json:
        print_json(rec.to_json())
    else:
        print(rec.id)
        err(f"snapshot {rec.short_id} of {rec.db}: {size(rec.size_bytes)} logical, {size(rec.stored_bytes)} new "
            f"in {time.monotonic() - t0:.1f} s; {rec.verified_summary}")
    return EXIT_OK


async def cmd_snapshots(engine: Engine, args: argparse.Namespace) -> int:
    rows = engine.snapshots(args.db)
    if args.json:
        print_json([r.to_json() for r in rows], indent=1)
        return EXIT_OK
    if not rows:
        print("no snapshots" + (f" of {args.db}" if args.db else ""))
        return EXIT_OK
    print_table(SNAPSHOT_COLUMNS, snapshot_rows(rows))
    return EXIT_OK


async def cmd_restore(engine: Engine, args: argparse.Namespace) -> int:
    if args.force:
        return await restore_force(engine, args)
    res = await engine.restore(args.db, args.into, args.snapshot, args.table, target=args.target,
                               only_target=args.target is not None, patterns=args.pattern, schemas=args.schema)
    if args.json:
        print_json({"snapshot": res.snapshot_id, "db": res.db, "into": res.into, "tables": res.tables,
                    "bytes": res.bytes, "duration_s": round(res.duration_s, 3), "warnings": res.warnings,
                    "left_out": res.left_out})
    else:
        what = ", ".join(res.tables) if res.tables else "whole database"
        print(f"restored snapshot {res.snapshot_id[:8]} of {res.db} ({what}) into {res.into} "
              f"in {res.duration_s:.1f} s ({size(res.bytes)})")
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
                    "warnings": r.warnings})
    else:
        print(f"restored snapshot {r.snapshot_id[:8]} of {r.db} into {r.into} in {r.duration_s:.1f} s "
              f"({size(r.bytes)})")
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
                    "take a logical full snapshot of a database; prints the snapshot id", common)
    completes(p.add_argument("--db", required=True, metavar="NAME", help="database name from the config"), "databases")

    p = add_command(sub, "snapshots", engine_command(cmd_snapshots), "list snapshots", common)
    completes(p.add_argument("--db", metavar="NAME", help="only this database"), "databases")

    p = add_command(sub, "restore", engine_command(cmd_restore), "restore a snapshot into a new database", common)
    completes(p.add_argument("--db", required=True, metavar="NAME", help="database name from the config"), "databases")
    completes(p.add_argument("--snapshot", default="latest", metavar="ID",
                             help="snapshot id or prefix, or 'latest' (default)"), "snapshot-ref")
    p.add_argument("--into", required=True, metavar="NEW_DB", help="name of the new database to create")
    p.add_argument("--table", action="append", default=[], metavar="SCHEMA.TABLE",
                   help="restore this table (exactly: quote as PostgreSQL does, 'public.\"My Table\"'), with its "
                        "indexes, constraints, triggers, policies, grants and partitions (repeatable)")
    p.add_argument("--pattern", action="append", default=[], metavar="[SCHEMA.]TABLE",
                   help="restore the tables matching a psql-style pattern, e.g. 'ledger.claim*' (repeatable)")
    p.add_argument("--schema", action="append", default=[], metavar="NAME",
                   help="restore every table of this schema (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="if --into exists, replace it (operator with a one-time code; the old one is kept aside)")
    completes(p.add_argument("--target", metavar="NAME",
                             help="read only from this target (default: any intact copy, first target first)"),
              "targets")

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
