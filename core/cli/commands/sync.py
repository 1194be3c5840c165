"""`backstop sync`: copy to each target what it lacks from a copy that verifies (a quorum write left it out)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, completes, engine_command
from core.cli.output import EXIT_FAILED, EXIT_OK, err, print_json, size, warn

if TYPE_CHECKING:
    from core.engine import Engine


async def cmd_sync(engine: Engine, args: argparse.Namespace) -> int:
    rep = await engine.sync(args.target, dry_run=args.dry_run)
    if args.json:
        print_json(rep.to_json())
    else:
        verb = "would copy" if rep.dry_run else "copied"
        for t in rep.targets:
            if t.skipped is not None:
                print(f"target {t.target}: SKIPPED: {t.skipped}")
                continue
            done = f", completing {len(t.snapshots)} snapshot(s)" if t.snapshots else ""
            print(f"target {t.target}: {verb} {t.objects} object(s), {size(t.bytes)}{done}")
            for p in t.problems:
                print(f"  MISSING {p}")
        for n in rep.notes:
            err(f"note: {n}")
    if not rep.ok:
        warn("some targets are not complete; bring them back (or repair them) and run `backstop sync` again")
        return EXIT_FAILED
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, "sync", engine_command(cmd_sync),
                    "copy to each target every object it lacks (left out of a quorum write, or a new target), "
                    "from a copy that verifies", common)
    completes(p.add_argument("--target", metavar="NAME", help="sync only this target"), "targets")
    p.add_argument("--dry-run", action="store_true", help="only report what would be copied")
