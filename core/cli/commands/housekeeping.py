"""`backstop forget` and `prune`: delete snapshots, then the data no snapshot needs."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, completes, engine_command, identity
from core.cli.output import EXIT_OK, Column, err, print_json, print_table, printable, size, warn
from core.errors import UsageError
from core.storage.immutability import when

if TYPE_CHECKING:
    from core.engine import Engine


def parse_grace(text: str) -> float:
    """``--grace``: a duration (24h, 7d) in seconds."""
    from core.config import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise UsageError(f"--grace: {exc}") from None


async def cmd_forget(engine: Engine, args: argparse.Namespace) -> int:
    if bool(args.snapshot) == (args.db is not None):
        raise UsageError("forget takes either snapshot ids or --db NAME (to apply its retention rules), not both "
                         "and not neither")
    if args.db is not None:
        return await _forget_by_rules(engine, args)
    if args.dry_run:
        raise UsageError("--dry-run goes with --db NAME (it shows what the retention rules would remove)")
    removed = await engine.forget_snapshots(args.snapshot, identity(args))
    if args.json:
        print_json({"forgotten": removed})
    else:
        for sid in removed:
            print(f"forgot snapshot {sid[:8]}")
        err("their data stays in the repository until `backstop prune` removes what no snapshot needs")
    return EXIT_OK


async def _forget_by_rules(engine: Engine, args: argparse.Namespace) -> int:
    rep = await engine.apply_retention(args.db, identity(args), dry_run=args.dry_run)
    if args.json:
        print_json(rep.to_json())
    else:
        print_table(_DECISION_COLUMNS, _decision_rows(rep))
        wal = rep.wal
        if wal.remove:
            verb = "would delete" if rep.dry_run else "deleted"
            print(f"WAL: {verb} {len(wal.remove)} file(s) ({wal.remove[0]} to {wal.remove[-1]}); kept from "
                  f"{wal.keep_from}, the start of the oldest retained physical snapshot {str(wal.oldest_snapshot)[:8]}")
        elif wal.note:
            print(f"WAL: nothing to delete: {wal.note}")
        else:
            print(f"WAL: nothing to delete (all {wal.kept} file(s) from {wal.keep_from} on are needed)")
        if rep.wal_locked_until is not None:
            print(f"WAL: trimming stopped at a file locked until {when(rep.wal_locked_until)} (object_lock); "
                  "a later run deletes the rest")
        if rep.dry_run:
            err(f"dry run: {len(rep.plan.remove)} of {len(rep.plan.decisions)} snapshot(s) would be forgotten; "
                "nothing was changed")
        else:
            err(f"forgot {len(rep.forgotten)} snapshot(s); their data stays in the repository until `backstop prune` "
                "removes what no snapshot needs")
    if rep.plan.alert:
        warn(rep.plan.alert)
    return EXIT_OK


_DECISION_COLUMNS = (Column("SNAPSHOT", 8), Column("KIND", 8, gap="  "), Column("FINISHED", 25, gap="  "),
                     Column("STORED", 10, ">", gap="  "), Column("DECISION", 8, gap="  "), Column("WHY", gap="  "))


def _decision_rows(rep: Any) -> list[list[object]]:
    remove = "would go" if rep.dry_run else "removed"
    return [[d.snapshot_id[:8], d.kind, d.time.isoformat(), size(d.stored_bytes), "keep" if d.keep else remove,
             printable("; ".join(d.reasons))] for d in rep.plan.decisions]


async def cmd_prune(engine: Engine, args: argparse.Namespace) -> int:
    grace = parse_grace(args.grace) if args.grace is not None else None
    rep = await engine.prune_repository(identity(args), grace_s=grace, dry_run=args.dry_run,
                                        append_only_override=args.append_only_override)
    if args.json:
        print_json(rep.to_json())
        return EXIT_OK
    would = rep.dry_run
    print(f"{'would delete' if would else 'deleted'} {len(rep.packs_deleted)} of {rep.packs_total} pack(s) "
          f"({size(rep.bytes_freed)} per target); {rep.snapshots} snapshot(s) kept")
    print(f"  {'would mark' if would else 'marked'} {rep.packs_marked} unneeded pack(s) for deletion; "
          f"{rep.packs_waiting} marked pack(s) wait out the grace period; {rep.packs_too_young} unneeded pack(s) "
          "younger than it left alone")
    if rep.packs_rescued:
        print(f"  {'would put' if would else 'put'} {rep.packs_rescued} marked pack(s) back: a snapshot written "
              "while they were marked needs them")
    for line in rep.immutability_lines():
        print(f"  {line}")
    for line in rep.leftovers:
        print(printable(f"  removed leftover: {line}"))
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, "forget", engine_command(cmd_forget),
                    "delete snapshots (named, or by a database's retention rules) from every target and the catalog",
                    common)
    completes(p.add_argument("snapshot", nargs="*", metavar="SNAPSHOT", help="snapshot id or unique prefix"),
              "snapshots")
    completes(p.add_argument("--db", metavar="NAME",
                             help="apply this database's retention rules (its `retention:` config entry) instead"),
              "databases")
    p.add_argument("--dry-run", action="store_true",
                   help="with --db: list every snapshot with keep/remove and why, and the WAL that would go; "
                        "change nothing (needs no code)")
    p = add_command(sub, "prune", engine_command(cmd_prune),
                    "mark packs no snapshot needs; delete those marked longer ago than the grace period", common)
    p.add_argument("--grace", metavar="DURATION",
                   help="how long a pack stays marked before it is deleted, and how old an unneeded pack must be "
                        "to be marked; longer than any backup (default 24h; 0 deletes at once, unsafe beside backups)")
    p.add_argument("--dry-run", action="store_true", help="only report what would be deleted (needs no code)")
    p.add_argument("--append-only-override", metavar="TARGET",
                   help="also delete on this append-only target (run on the host that holds it): the snapshots "
                        "forgotten elsewhere, then what prune deletes; audited")
