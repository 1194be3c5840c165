"""`backstop wal status [--pgdata DIR] [--json]`: the WAL archive, its gaps and freshness, the backlog, push latency.

(`wal-push` and `wal-fetch`, which PostgreSQL runs, live on the fast path in core/cli/wal.py.)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, add_group, completes_files, engine_command
from core.cli.output import EXIT_OK, duration, print_json, warn

if TYPE_CHECKING:
    from core.engine import Engine


def _spool(config_arg: str | None) -> Any:
    """The spool of this config when it exists (wal status only reads it)."""
    from core.wal.spool import SpoolError, config_path, spool_of

    try:
        spool = spool_of(config_path(config_arg))
    except SpoolError:
        return None
    return spool if os.path.isdir(spool.root) else None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


async def cmd_wal_status(engine: Engine, args: argparse.Namespace) -> int:
    st = await engine.wal_status(_spool(args.config), Path(args.pgdata) if args.pgdata else None)
    if args.json:
        print_json(st.to_json(), indent=1)
        return EXIT_OK
    if st.system_identifier is None and not st.timelines:
        print("WAL archive: empty (set archive_command = 'backstop --config PATH wal-push %p')")
    else:
        print(f"WAL archive of database system {st.system_identifier} "
              f"(segments of {(st.wal_segment_size or 0) // (1024 * 1024)} MiB)")
    for t in st.timelines:
        span = f"{t.first} .. {t.last}" if t.first else "no segments"
        print(f"  timeline {t.timeline}: {span}  ({t.segments} segment(s))"
              + (f", also {', '.join(t.other_files)}" if t.other_files else ""))
        for a, b in t.gaps:
            print(f"    gap: {a}" + (f" .. {b}" if b != a else "") + " missing")
    if st.newest is not None:
        print(f"newest archived: {st.newest}, {duration(st.newest_age_s)} ago")
    for target, n in st.missing_on.items():
        warn(f"target '{target}' lacks {n} WAL file(s) the other targets hold")
    for target, why in st.unreachable.items():
        warn(f"target '{target}' was not read: {why}")
    if st.backlog is not None:
        oldest = f", oldest waiting {duration(st.backlog_oldest_age_s)}" if st.backlog else ""
        print(f"backlog in {st.pgdata}: {len(st.backlog)} file(s) waiting to be pushed{oldest}")
    if st.latency_count:
        lat = st.latency
        print(f"push latency (last {st.latency_count}): p50 {_ms(lat.get('p50'))}, p90 {_ms(lat.get('p90'))}, "
              f"p99 {_ms(lat.get('p99'))}, max {_ms(lat.get('max'))}")
    if st.spool is not None:
        print(f"spool {st.spool}: pusher " + (f"running (pid {st.pusher_pid})" if st.pusher_pid else "not running"))
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    group = add_group(sub, "wal", "the WAL archive (continuous archiving for point-in-time restores)", common,
                      description="")
    p = add_command(group, "status", engine_command(cmd_wal_status),
                    "archived range per timeline, gaps, age of the newest segment, backlog, push latency", common)
    completes_files(p.add_argument("--pgdata", metavar="DIR", default=None,
                                   help="the cluster's data directory, for the backlog of .ready files "
                                        "(default: the one wal-push last archived from)"))
