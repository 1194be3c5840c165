"""`backstop catalog rebuild` and `backstop jobs`: the catalog, which is only an index of the repository."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, add_group, engine_command
from core.cli.output import EXIT_OK, print_json, utc, warn

if TYPE_CHECKING:
    from core.engine import Engine


async def cmd_catalog_rebuild(engine: Engine, args: argparse.Namespace) -> int:
    res = await engine.rebuild_catalog()
    if args.json:
        print_json({"snapshots": res.snapshots, "removed": res.removed, "security": res.security,
                    "repaired": res.repaired, "warnings": res.warnings, "drills": res.drills}, indent=1)
        return EXIT_OK
    print(f"catalog rebuilt: {res.snapshots} snapshot(s) read from the repository")
    if res.drills:
        print(f"  {res.drills} drill report(s) taken back from their sealed copies")
    for sid in res.removed:
        print(f"  removed snapshot {sid[:8]}: no target holds it")
    for line in [*res.repaired, *res.security]:
        print(f"  {line}")
    for w in res.warnings:
        warn(w)
    return EXIT_OK


async def cmd_jobs(engine: Engine, args: argparse.Namespace) -> int:
    rows = engine.catalog.jobs(limit=args.limit)
    if args.json:
        print_json([j.to_json() for j in rows], indent=1)
        return EXIT_OK
    for j in rows:
        dur = f"{(j.finished_at or time.time()) - j.started_at:.1f}s"
        print(f"{j.id}  {utc(j.started_at)}  {j.kind:<8} {j.state:<10} {dur:>8}  {j.description}"
              + (f"\n    error: {j.error}" if j.error else ""))
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    cat = add_group(sub, "catalog", "catalog maintenance", common, description="")
    add_command(cat, "rebuild", engine_command(cmd_catalog_rebuild),
                "re-read snapshots from the repository into the catalog", common, description="")

    p = add_command(sub, "jobs", engine_command(cmd_jobs), "list recent jobs", common)
    p.add_argument("--limit", type=int, default=20)
