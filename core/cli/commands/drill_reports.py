"""`backstop drill report` and `backstop drill verify`: a drill's report for an auditor, and its seal checked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, add_group, completes, completes_files, engine_command
from core.cli.output import EXIT_FAILED, EXIT_OK, err, print_json, printable
from core.errors import UsageError

if TYPE_CHECKING:
    from core.engine import Engine

DRILL_HELP = "restore drills: run one now, list them, show and verify their reports"


async def cmd_drill_report(engine: Engine, args: argparse.Namespace) -> int:
    fmt = "json" if getattr(args, "json", False) and args.format is None else (args.format or "md")
    text = await engine.drill_report(args.id, args.quarter, args.db, fmt)
    if args.output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return EXIT_OK
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--output {args.output}: cannot write it ({exc.strerror}); give a writable path") from None
    err(f"wrote {args.output}")
    return EXIT_OK


async def cmd_drill_verify(engine: Engine, args: argparse.Namespace) -> int:
    res = await engine.drill_verify(args.id)
    if getattr(args, "json", False):
        print_json(res.to_json())
        return EXIT_OK if res.ok else EXIT_FAILED
    if res.ok:
        where = ", ".join(res.sealed_on)
        alone = "" if res.from_catalog else " (not in the catalog: verified from the sealed copies alone)"
        print(f"report {res.drill_id}: MAC verifies, sealed copy on {where} matches{alone}")
        return EXIT_OK
    for problem in res.problems:
        err(printable(problem))
    return EXIT_FAILED


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `drill report` and `drill verify` (the group is shared with the other drill module)."""
    dsub = add_group(sub, "drill", DRILL_HELP, common)
    p = add_command(dsub, "report", engine_command(cmd_drill_report),
                    "a drill's report (or a quarter's drills) as Markdown, self-contained HTML or JSON", common)
    p.add_argument("id", nargs="?", metavar="ID", help="drill id or unique prefix (`backstop drill list`)")
    p.add_argument("--quarter", metavar="YEARQN",
                   help="every drill started in that quarter (UTC), such as 2026Q4, gathered into one document")
    completes(p.add_argument("--db", metavar="NAME", help="with --quarter: only this database's drills"),
              "databases")
    p.add_argument("--format", choices=("md", "html", "json"), default=None, help="output format (default md)")
    completes_files(p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout"))
    p = add_command(dsub, "verify", engine_command(cmd_drill_verify),
                    "check a drill report's MAC and its sealed copy on every target", common)
    p.add_argument("id", metavar="ID", help="drill id or unique prefix")
