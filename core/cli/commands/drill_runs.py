"""`backstop drill run` (one restore drill now) and `backstop drill list` (the drills recorded).

The ``drill`` group is shared with ``drill_reports.py`` (report, verify): whichever registers first makes it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, add_group, completes, engine_command
from core.cli.output import EXIT_FAILED, EXIT_OK, Column, duration, print_json, print_table, printable, utc

if TYPE_CHECKING:
    from core.drills.model import DrillReport
    from core.engine import Engine

DRILL_HELP = "restore drills: run one now, list them, show and verify their reports"
_COLUMNS = (Column("ID", 30), Column("DB", 12), Column("KIND", 9), Column("TARGET", 12), Column("SNAPSHOT", 10),
            Column("RECOVERY / RTO", 18), Column("VERDICT", 8), Column("WHEN (UTC)"))


def _recovery(r: DrillReport) -> str:
    return f"{duration(r.recovery_s)} / {duration(r.rto_s)}"


def _reads(r: DrillReport) -> str:
    from core.repository.sources import TargetShare, summarise

    return summarise([TargetShare(**s) for s in r.sources])


async def cmd_drill_run(engine: Engine, args: argparse.Namespace) -> int:
    from core.cli.context import identity
    from core.drills.runner import DrillRequest

    who = identity(args).operator
    report = await engine.drill(DrillRequest(db=args.db, target=args.target, snapshot=args.snapshot, kind=args.type,
                                             scheduled_by=f"operator:{who}"))
    if args.json:
        print_json(report.to_json(), indent=1)
    else:
        print(printable(f"drill {report.id}: {report.verdict.upper()}"))
        print(printable(f"  {report.kind} restore of {report.db} snapshot {report.snapshot_id[:8] or '-'} "
                        f"from target {report.target or '-'} into {report.scratch or '-'} "
                        f"({'removed' if report.scratch_removed else 'NOT removed: drop it by hand'})"))
        if report.sources:
            print(printable(f"  {_reads(report)}"))
        print(f"  recovery {report.recovery_s:.1f} s, RTO {report.rto_s / 60:g} min")
        for c in report.checks:
            print(printable(f"  [{'ok' if c.ok else 'FAILED'}] {c.name}: {c.detail}"))
        if report.error:
            print(printable(f"  error: {report.error}"))
    return EXIT_OK if report.passed else EXIT_FAILED


async def cmd_drill_list(engine: Engine, args: argparse.Namespace) -> int:
    if args.db:
        engine.config.database(args.db)  # a ConfigError naming the configured databases
    rows = engine.catalog.drills(args.db)
    if args.json:
        print_json([{"id": r.id, "db": r.db, "kind": r.kind, "target": r.target, "snapshot": r.snapshot_id,
                     "recovery_s": round(r.recovery_s, 3), "rto_s": r.rto_s, "verdict": r.verdict,
                     "started_at": r.started_at, "scheduled_by": r.scheduled_by, "error": r.error}
                    for r in rows], indent=1)
        return EXIT_OK
    if not rows:
        print("no drills yet: run one with `backstop drill run --db NAME`, or add a drill schedule (README)")
        return EXIT_OK
    print_table(_COLUMNS, [[r.id, r.db, r.kind, r.target or "-", r.snapshot_id[:8] or "-", _recovery(r),
                            r.verdict, utc(r.started_at)] for r in rows])
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this module's `backstop drill` subcommands (the group is shared with the other drill module)."""
    dsub = add_group(sub, "drill", DRILL_HELP, common)
    p = add_command(dsub, "run", engine_command(cmd_drill_run), "run a restore drill now: restore into a scratch "
                    "database, check integrity, measure the recovery time against the RTO, clean up", common)
    completes(p.add_argument("--db", required=True, metavar="NAME", help="the configured database to drill"),
              "databases")
    completes(p.add_argument("--target", metavar="NAME",
                             help="read only from this target (default: the one drilled longest ago)"), "targets")
    completes(p.add_argument("--snapshot", default="latest", metavar="ID",
                             help="snapshot id or prefix, latest (default) or random (within the retention "
                                  "window)"), "snapshot-ref")
    p.add_argument("--type", choices=("logical", "physical"), default=None,
                   help="logical (default: a scratch database) or physical (a scratch cluster recovered to a "
                        "random archived point)")
    p = add_command(dsub, "list", engine_command(cmd_drill_list), "the drills recorded, newest first", common)
    completes(p.add_argument("--db", metavar="NAME", help="only this database's drills"), "databases")
