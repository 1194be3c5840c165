"""Retention planning over 1,000 synthetic snapshots: time and peak memory.

Three figures:

1. ``plan_retention`` alone (pure): 1,000 snapshots of one database (a
   logical one every 6 hours and a physical one a day, about 200 days), the
   issue's example rules (keep_last 7, daily 14, weekly 8, monthly 12,
   yearly 7, min_age_days 30, max_bytes 500GB); median of ``--runs`` runs,
   peak Python allocation by tracemalloc;
2. ``plan_wal_trim`` over 20,000 archived WAL names and 200 physical snapshots;
3. ``forget --db --dry-run`` in-process (Engine.apply_retention): the same
   1,000 snapshots in a real SQLite catalog, a real local repository
   (opened each run), no WAL; median wall time and the process's peak RSS
   growth (the engine's imports included).

    .venv/bin/python bench/retention_bench.py            # 20 runs
    .venv/bin/python bench/retention_bench.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import RetentionConfig, parse_config  # noqa: E402
from core.postgres.wal import format_lsn, segment_file  # noqa: E402
from core.records import SnapshotRecord  # noqa: E402
from core.retention.policy import RetainedFacts, plan_retention  # noqa: E402
from core.retention.wal import PhysicalStart, plan_wal_trim  # noqa: E402

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
RULES = {"keep_last": 7, "keep_daily": 14, "keep_weekly": 8, "keep_monthly": 12, "keep_yearly": 7,
         "min_age_days": 30, "max_bytes": "500GB"}
SEG = 16 * 2**20


def records(n: int = 1000) -> list[SnapshotRecord]:
    """``n`` snapshots, newest at NOW: every 5th a physical one (one a day), the rest logical (every 6 h)."""
    out = []
    for i in range(n):
        t = (NOW - timedelta(hours=6 * i)).isoformat(timespec="seconds")
        phys = i % 4 == 0
        out.append(SnapshotRecord(f"{i:064x}", "bench", "physical" if phys else "logical", t, t,
                                  50 * 2**30, (3 if phys else 1) * 2**30, ["local1"],
                                  start_lsn=format_lsn((1000 - i) * 4 * SEG + 0x28) if phys else None,
                                  stop_lsn=format_lsn((1000 - i) * 4 * SEG + SEG) if phys else None,
                                  timeline=1 if phys else None, system_identifier="1" if phys else None,
                                  wal_segment_size=SEG if phys else None))
    return out


def measure(fn: Callable[[], object], runs: int) -> tuple[float, int]:
    """(median seconds, peak traced bytes) of ``fn``."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak


async def dry_run_in_process(recs: list[SnapshotRecord], runs: int) -> list[float]:
    from core.catalog.store import Catalog
    from core.engine import Engine
    from core.repository.repo import Repository
    from core.storage.factory import make_storages

    base = Path(tempfile.mkdtemp(prefix="backstop-retention-bench-"))
    pf = base / "passphrase"
    pf.write_text("bench passphrase\n")
    pf.chmod(0o600)
    config = parse_config({"catalog": {"url": f"sqlite:///{base / 'catalog.db'}"},
                           "encryption": {"passphrase_file": str(pf)},
                           "targets": [{"name": "local1", "type": "local", "path": str(base / "repo")}],
                           "databases": [{"name": "bench", "dsn": "dbname=bench", "retention": RULES}]},
                          base / "backstop.yaml")
    (store,) = make_storages(config.targets)
    await store.prepare()
    await Repository.init([store], config.encryption.passphrase(), config.repository)
    await store.close()
    cat = Catalog(config.catalog.sqlite_path)
    for r in recs:
        cat.add_snapshot(r)
    cat.close()
    times = []
    try:
        async with Engine(config) as engine:
            for _ in range(runs):
                t0 = time.perf_counter()
                rep = await engine.apply_retention("bench", dry_run=True, now=NOW)
                times.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert len(rep.plan.decisions) == len(recs)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    recs = records()
    rules = RetentionConfig.model_validate(RULES)
    snaps = [RetainedFacts.of(r) for r in recs]
    plan = plan_retention(snaps, rules, NOW)
    secs, peak = measure(lambda: plan_retention(snaps, rules, NOW), args.runs)
    print(f"plan_retention: {len(snaps)} snapshots, {len(plan.remove)} to remove, alert={plan.alert is not None}: "
          f"median {secs * 1000:.2f} ms, peak {peak / 2**10:.0f} KiB traced")

    names = [segment_file(1, n) for n in range(1, 20001)]
    starts = [PhysicalStart(r.id, r.start_lsn, 1) for r in recs if r.start_lsn][:200]
    wal = plan_wal_trim(starts, names)
    secs, peak = measure(lambda: plan_wal_trim(starts, names), args.runs)
    print(f"plan_wal_trim: {len(names)} WAL names, {len(starts)} physical snapshots, {len(wal.remove)} to delete: "
          f"median {secs * 1000:.2f} ms, peak {peak / 2**10:.0f} KiB traced")

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = asyncio.run(dry_run_in_process(recs, max(3, args.runs // 4)))
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"forget --db --dry-run (in-process, SQLite catalog of {len(recs)}, local repository opened each run): "
          f"median {statistics.median(times) * 1000:.0f} ms over {len(times)} runs "
          f"(min {min(times) * 1000:.0f} ms); process peak RSS {rss1 / 1024:.0f} MiB (+{(rss1 - rss0) / 1024:.0f} MiB, "
          "the engine's imports included)")


if __name__ == "__main__":
    main()
