"""Benchmark of the operator console over a large catalog.

    .venv/bin/python bench/tui_bench.py [--snapshots 100000] [--events 1000000]

Seeds a catalog with 100,000 snapshots and 1,000,000 job events (plus
verifications and restores), then measures:

1. time from starting `backstop tui` (a fresh Python process: interpreter,
   imports, engine, app) to the first full paint of the dashboard with its
   KPIs, alerts and running jobs (goal < 1.0 s);
2. catalog screen: from pressing 3 to the listing shown, then `end` to the
   last of the 100,000 rows painted (goal < 0.5 s);
3. CPU while idle on the dashboard (goal < 2% of a core);
4. CPU while three jobs report progress at 200 events/s each, and how many
   progress repaints per job per second reach the screen (goal <= ~10).

Runs headless (Textual's test driver renders every frame but writes nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_seconds() -> float:
    """User + system CPU of this process (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def seed(base: Path, snapshots: int, events: int) -> Path:
    from tests.fixtures.console import Scale, write_console_setup

    per_job = max(3, events // snapshots)
    t0 = time.monotonic()
    setup = write_console_setup(base, scale=Scale(snapshots=snapshots, days=365, events_per_job=per_job, restores=60))
    print(f"seeded {snapshots:,} snapshots, {snapshots * per_job:,} job events in {time.monotonic() - t0:.1f} s "
          f"({setup.config.catalog.sqlite_path.stat().st_size / 2**20:.0f} MiB catalog)", flush=True)
    return setup.path


# -- child: `backstop tui` until the dashboard is painted ---------------------------------------------


def child_startup(config: str) -> None:
    """Exactly what `backstop tui` does (core.cli._tui), headless; reports when the dashboard is painted."""
    from core.config import load_config
    from core.engine import Engine

    engine = Engine(load_config(config))
    first = engine.prefetch_dashboard()
    from tui.app import BackstopApp
    from tui.screens.dashboard import DashboardScreen

    async def main() -> None:
        app = BackstopApp(engine, own_engine=True, first_dashboard=first)
        async with app.run_test(size=(80, 24)) as pilot:
            while not (isinstance(app.screen, DashboardScreen) and app.screen.painted_at is not None):
                await asyncio.sleep(0.002)
            await pilot.pause()  # the refresh that puts the data on screen
            print(json.dumps({"painted": time.time()}), flush=True)

    asyncio.run(main())


def measure_startup(config: Path, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.time()
        proc = subprocess.run([sys.executable, __file__, "--child-startup", str(config)], capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not line:
            raise SystemExit(f"child failed: {proc.stderr[-2000:]}")
        out.append(json.loads(line[-1])["painted"] - t0)
    return out


# -- in process: catalog scrolling, idle CPU, progress ----------------------------------------------------


async def in_process(config: Path, idle_s: float, busy_s: float) -> dict[str, float]:
    from core.config import load_config
    from core.engine import Engine
    from core.events import JobFinished, JobStarted, Progress
    from tui.app import BackstopApp
    from tui.bridge import JobProgressed
    from tui.screens.catalog import CatalogScreen
    from tui.screens.dashboard import DashboardScreen
    from tui.widgets.virtual_table import VirtualTable

    progressed: list[float] = []

    def hook(msg: object) -> None:
        if isinstance(msg, JobProgressed):
            progressed.append(time.monotonic())

    res: dict[str, float] = {}
    app = BackstopApp(Engine(load_config(config)), own_engine=True)
    async with app.run_test(size=(160, 48), message_hook=hook) as pilot:
        while not (isinstance(app.screen, DashboardScreen) and app.screen.painted_at is not None):
            await asyncio.sleep(0.01)
        await app.workers.wait_for_complete()
        await pilot.pause()

        # Catalog: from the key to its first data row painted, then `end` to the last row painted
        # (timestamps taken by the table as it renders those rows).
        t0 = time.monotonic()
        await pilot.press("3")
        while not (isinstance(app.screen, CatalogScreen) and app.screen.query("#snapshots")
                   and app.screen.query_one("#snapshots", VirtualTable).first_row_rendered_at):
            await asyncio.sleep(0.001)
        table = app.screen.query_one("#snapshots", VirtualTable)
        assert table.first_row_rendered_at is not None
        t_open = table.first_row_rendered_at - t0
        t1 = time.monotonic()
        await pilot.press("end")
        while not (table.last_row_rendered_at and table.last_row_rendered_at > t1):
            await asyncio.sleep(0.001)
        t_end = table.last_row_rendered_at - t1
        assert table.cursor == table.row_count - 1, (table.cursor, table.row_count)
        res["catalog_rows"] = table.row_count
        res["catalog_open_s"] = t_open
        res["catalog_end_s"] = t_end
        res["catalog_open_and_end_s"] = t_open + t_end
        await pilot.press("1")
        await app.workers.wait_for_complete()
        await pilot.pause()
        await asyncio.sleep(1.0)

        # Idle.
        c0, w0 = cpu_seconds(), time.monotonic()
        await asyncio.sleep(idle_s)
        res["idle_cpu_pct"] = 100 * (cpu_seconds() - c0) / (time.monotonic() - w0)

        # Three jobs reporting progress at 200 events/s each (through the engine's bus, so the
        # catalog records them as in a real run).
        bus = app.engine.bus
        jobs = [f"bench{i:07d}" for i in range(3)]
        for j in jobs:
            bus.publish(JobStarted(j, kind="restore", db="warranty", description=f"bench restore {j}"))
        await asyncio.sleep(0.5)
        progressed.clear()
        c0, w0 = cpu_seconds(), time.monotonic()
        total = 10 * 2**30
        n = 0
        while time.monotonic() - w0 < busy_s:
            n += 1
            for j in jobs:
                bus.publish(Progress(j, phase="restore", bytes_done=n * 2**20, bytes_total=total, rate=200 * 2**20))
            await asyncio.sleep(1 / 200)
        elapsed = time.monotonic() - w0
        res["busy_cpu_pct"] = 100 * (cpu_seconds() - c0) / elapsed
        res["busy_events_per_s"] = 3 * n / elapsed
        res["progress_messages_per_job_per_s"] = len(progressed) / 3 / elapsed
        for j in jobs:
            bus.publish(JobFinished(j, outcome="succeeded"))
        await pilot.pause()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshots", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5, help="startup measurements (median reported)")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--busy-seconds", type=float, default=10.0)
    ap.add_argument("--child-startup", metavar="CONFIG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_startup:
        child_startup(args.child_startup)
        return
    with tempfile.TemporaryDirectory(prefix="backstop-tui-bench-") as tmp:
        config = seed(Path(tmp) / "c", args.snapshots, args.events)
        starts = sorted(measure_startup(config, args.runs))
        r = asyncio.run(in_process(config, args.idle_seconds, args.busy_seconds))
    med = starts[len(starts) // 2]
    print(f"startup to first full dashboard paint: median {med:.3f} s over {len(starts)} runs "
          f"(min {starts[0]:.3f}, max {starts[-1]:.3f}); goal < 1.0 s")
    print(f"catalog ({r['catalog_rows']:,.0f} rows): open {r['catalog_open_s']:.3f} s, end {r['catalog_end_s']:.3f} s, "
          f"open + scroll to end {r['catalog_open_and_end_s']:.3f} s; goal < 0.5 s")
    print(f"CPU idle on the dashboard: {r['idle_cpu_pct']:.2f}% of a core; goal < 2%")
    print(f"CPU with three jobs reporting {r['busy_events_per_s']:.0f} progress events/s: {r['busy_cpu_pct']:.1f}% "
          f"of a core; {r['progress_messages_per_job_per_s']:.1f} progress repaints per job per second (cap 10)")
    print(f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
