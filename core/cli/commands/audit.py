"""`backstop audit list|verify`: the tamper-evident audit log."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, add_group, engine_command, identity
from core.cli.output import EXIT_FAILED, EXIT_OK, print_json, printable, utc
from core.errors import UsageError

if TYPE_CHECKING:
    from core.engine import Engine


def parse_since(text: str) -> float:
    """``--since``: a duration back from now (24h, 7d) or an ISO date/time (UTC unless it says)."""
    from core.config import parse_duration

    try:
        return time.time() - parse_duration(text).total_seconds()
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: expected a duration (24h, 7d) or a date/time (2026-01-31T08:00)") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


async def cmd_audit_list(engine: Engine, args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    rows = engine.audit_entries(since=since, limit=args.limit)
    if args.json:
        print_json([e.to_json() for e in rows], indent=1)
        return EXIT_OK
    if not rows:
        print("no audit entries" + (" in that period" if since else ""))
        return EXIT_OK
    for e in rows:
        detail = e.details
        extra = " ".join(f"{k}={v}" for k, v in detail.items() if k in ("reason", "error", "previous_kept_as")
                         and v is not None)
        line = (f"#{e.seq:<5} {utc(e.ts)}  {e.operator:<16} {e.host:<16} {e.action:<20} {e.outcome:<10} {e.subject}"
                + (f"  ({extra})" if extra else ""))
        print(printable(line))
    return EXIT_OK


async def cmd_audit_verify(engine: Engine, args: argparse.Namespace) -> int:
    res = await engine.check_audit(identity(args))
    if args.json:
        print_json({"ok": res.ok, "entries": res.entries, "problems": res.problems, "notes": res.notes,
                    "copies": res.copies}, indent=1)
    else:
        copies = ", ".join(f"{t} {n}/{res.entries}" for t, n in res.copies.items()) or "none reachable"
        if res.ok:
            print(f"audit log intact: {res.entries} entries, keyed hash chain verified; copies: {copies}")
        for p in res.problems:
            print(f"TAMPERED: {p}")
        for n in res.notes:
            print(f"  note: {n}")
    return EXIT_OK if res.ok else EXIT_FAILED


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    aud = add_group(sub, "audit", "the tamper-evident audit log", common)
    p = add_command(aud, "list", engine_command(cmd_audit_list), "list audit entries, oldest first", common)
    p.add_argument("--since", metavar="WHEN", help="a duration back from now (24h, 7d) or a date/time (UTC)")
    p.add_argument("--limit", type=int, metavar="N", help="only the newest N entries")
    add_command(aud, "verify", engine_command(cmd_audit_verify),
                "check the keyed hash chain and the repository copies; exit 1 naming the first bad entry", common)
