"""`backstop catalog rebuild|migrate` and `backstop jobs`: the catalog, which is only an index of the repository."""

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


async def cmd_catalog_migrate(engine: Engine, args: argparse.Namespace) -> int:
    from core.catalog.sqlite import SqliteCatalog
    from core.errors import ConfigError
    from core.ops.catalog_migrate import migrate_catalog

    if engine.config.catalog.is_postgres or not isinstance(engine.catalog, SqliteCatalog):
        raise ConfigError("catalog migrate: the catalog is already on PostgreSQL; it moves from an SQLite file")
    res = migrate_catalog(engine.catalog, args.to)
    if args.json:
        print_json({"to": res.url, "rows": res.rows, "seconds": round(res.seconds, 3)}, indent=1)
        return EXIT_OK
    print(f"catalog copied to {res.url}: {res.total} row(s) in {len(res.rows)} tables in {res.seconds:.1f}s")
    for table, n in res.rows.items():
        if n:
            print(f"  {table:<18} {n}")
    print(f"next: set catalog.url to {res.url} in the config of every host (the SQLite file is left as it was)")
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
    p = add_command(cat, "migrate", engine_command(cmd_catalog_migrate),
                    "copy this SQLite catalog into an empty PostgreSQL catalog (the fleet's control plane)", common)
    p.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host:port/dbname (no password:"
                   " ~/.pgpass, PGPASSWORD or ?passfile=PATH)")

    p = add_command(sub, "jobs", engine_command(cmd_jobs), "list recent jobs", common)
    p.add_argument("--limit", type=int, default=20)
