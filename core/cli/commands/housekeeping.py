"""`backstop forget` and `prune`: delete snapshots, then the data no snapshot needs."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, completes, engine_command, identity
from core.cli.output import EXIT_OK, err, print_json, printable, size
from core.errors import UsageError

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
    removed = await engine.forget_snapshots(args.snapshot, identity(args))
    if args.json:
        print_json({"forgotten": removed})
    else:
        for sid in removed:
            print(f"forgot snapshot {sid[:8]}")
        err("their data stays in the repository until `backstop prune` removes what no snapshot needs")
    return EXIT_OK


async def cmd_prune(engine: Engine, args: argparse.Namespace) -> int:
    grace = parse_grace(args.grace) if args.grace is not None else None
    rep = await engine.prune_repository(identity(args), grace_s=grace, dry_run=args.dry_run)
    if args.json:
        print_json(rep.to_json())
        return EXIT_OK
    verb = "would delete" if rep.dry_run else "deleted"
    print(f"{verb} {len(rep.packs_deleted)} of {rep.packs_total} pack(s) ({size(rep.bytes_freed)} per target); "
          f"{rep.snapshots} snapshot(s) kept; {rep.packs_too_young} unneeded pack(s) younger than the grace period "
          "kept")
    for line in rep.leftovers:
        print(printable(f"  removed leftover: {line}"))
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, "forget", engine_command(cmd_forget), "delete snapshots from every target and the catalog",
                    common)
    completes(p.add_argument("snapshot", nargs="+", metavar="SNAPSHOT", help="snapshot id or unique prefix"),
              "snapshots")
    p = add_command(sub, "prune", engine_command(cmd_prune),
                    "delete packs no snapshot needs (older than the grace period)", common)
    p.add_argument("--grace", metavar="DURATION", help="keep unneeded packs younger than this (default 24h)")
    p.add_argument("--dry-run", action="store_true", help="only report what would be deleted (needs no code)")
