"""`backstop targets`: each configured target's health (latency, errors, bytes stored, newest write and read)."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, engine_command
from core.cli.output import EXIT_OK, Column, print_json, print_table, printable, size

if TYPE_CHECKING:
    from core.engine import Engine


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.0f}s"


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    age = max(0.0, now - ts)
    for unit, span in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if age >= span:
            return f"{age / span:.0f}{unit} ago"
    return f"{age:.0f}s ago"


_COLUMNS = (Column("TARGET", 12), Column("TYPE", 5, gap="  "), Column("ROLE", 9, gap="  "),
            Column("PRIO", 4, ">", gap="  "), Column("REGION", 10, gap="  "), Column("CALLS", 6, ">", gap="  "),
            Column("P50", 6, ">", gap="  "), Column("P95", 6, ">", gap="  "), Column("P99", 6, ">", gap="  "),
            Column("ERRORS 24H", 22, gap="  "), Column("STORED", 10, ">", gap="  "),
            Column("LAST WRITE", 10, gap="  "), Column("LAST READ", 10, gap="  "), Column("LAST ERROR", gap="  "))


async def cmd_targets(engine: Engine, args: argparse.Namespace) -> int:
    now = time.time()
    health = await asyncio.to_thread(engine.target_health, now)
    if args.json:
        print_json({"now": now, "targets": [h.to_json() for h in health]})
        return EXIT_OK
    rows = []
    for h in health:
        errors = ", ".join(f"{cls} {n}" for cls, n in h.errors.items() if n) or "none"
        stored = "-" if h.stored_bytes is None else size(h.stored_bytes)
        last_error = ("-" if h.last_error_at is None else
                      f"{_ago(h.last_error_at, now)} {h.last_error_class}: {(h.last_error or '-').splitlines()[0]}")
        prio = "-" if h.priority is None else h.priority
        rows.append([h.name, h.type, h.role or "-", prio, h.region or "-", h.calls, _ms(h.p50_s), _ms(h.p95_s),
                     _ms(h.p99_s), errors, stored, _ago(h.last_write_ok_at, now), _ago(h.last_read_ok_at, now),
                     printable(last_error)])
    print_table(_COLUMNS, rows)
    for h in health:
        if h.stored_measured_at is not None:
            print(f"{h.name}: {h.where}; {size(h.stored_bytes)} in {h.stored_objects} object(s) as listed "
                  f"{_ago(h.stored_measured_at, now)}")
        else:
            print(f"{h.name}: {h.where}; bytes stored not measured yet (`backstop check` lists them)")
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    add_command(sub, "targets", engine_command(cmd_targets),
                "each target's health over 24 h: latency percentiles, errors by class, bytes stored, last "
                "successful write and read, last error (recorded by every command; the targets are not contacted)",
                common)
