"""`backstop daemon` (run the schedules until stopped) and `backstop schedule list|run` (see core/schedule/)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, add_group, engine_command
from core.cli.output import EXIT_FAILED, EXIT_OK, Column, print_json, print_table, printable, utc

if TYPE_CHECKING:
    from core.engine import Engine

_COLUMNS = (Column("NAME", 14), Column("ACTION", 13), Column("DB", 12), Column("NEXT RUN (UTC)", 21),
            Column("LAST SLOT (UTC)", 28), Column("OUTCOME"))


def cmd_daemon(args: argparse.Namespace) -> int:
    from core.schedule.daemon import run_daemon

    return run_daemon(args.config, once=args.once, timestamps=args.timestamps, metrics_listen=args.metrics_listen)


def _when(ts: float | None) -> str:
    return "-" if ts is None else utc(ts, "%Y-%m-%d %H:%M:%S")


async def cmd_schedule_list(engine: Engine, args: argparse.Namespace) -> int:
    # The same overview the console's Settings screen shows (core/schedule/overview.py).
    rows: list[dict[str, Any]] = [r.to_json() for r in engine.schedule_overview(datetime.now(UTC))]
    if args.json:
        print_json(rows, indent=1)
        return EXIT_OK
    if not rows:
        print("no schedules: add a schedules: section to the config (see README, Schedules)")
        return EXIT_OK
    print_table(_COLUMNS, [[r["name"], r["action"], r["db"] or "-",
                            _when(datetime.fromisoformat(r["next_run"]).timestamp()) if r["next_run"] else "-",
                            (r["last_slot"] or "-").replace("T", " ").replace("Z", ""),
                            printable(r["last_state"] + (f": {r['last_error']}" if r["last_error"] else ""))
                            if r["last_state"] else "never run"] for r in rows])
    return EXIT_OK


async def cmd_schedule_run(engine: Engine, args: argparse.Namespace) -> int:
    from core.schedule.clock import RealClock
    from core.schedule.daemon import runner_for, setup_daemon_logging
    from core.schedule.scheduler import Scheduler

    setup_daemon_logging()
    sched = Scheduler(engine.config.schedules, engine.catalog, runner_for(engine), RealClock())
    out = await sched.run_now(args.name)
    if args.json:
        print_json({"name": out.name, "slot": out.slot, "state": out.state, "error": out.error,
                    "result": out.result})
    else:
        print(printable(f"schedule {out.name}: {out.state}" + (f": {out.error}" if out.error else "")))
    return EXIT_OK if out.state == "succeeded" else EXIT_FAILED


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, "daemon", cmd_daemon, "run the configured schedules until stopped (foreground)", common,
                    description="Run the schedules of the config in the foreground until SIGTERM (systemd: "
                                "config/backstop-daemon.service). SIGHUP reloads the config.")
    p.add_argument("--once", action="store_true",
                   help="look at the schedules once, run what is due, wait for it and exit (for tests and cron)")
    p.add_argument("--timestamps", action="store_true", help="prefix log lines with the time (not under systemd)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", default=None,
                   help="serve Prometheus metrics at http://HOST:PORT/metrics while the daemon runs "
                        "(e.g. 127.0.0.1:9187; see `backstop metrics`)")
    s = add_group(sub, "schedule", "list the schedules or run one now", common)
    p = add_command(s, "list", engine_command(cmd_schedule_list),
                    "each schedule's next run, last run and last outcome", common)
    p = add_command(s, "run", engine_command(cmd_schedule_run), "run one schedule now (claims and leases as the "
                    "daemon does)", common)
    p.add_argument("name", metavar="NAME", help="the schedule's name in the config")
