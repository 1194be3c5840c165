"""Benchmark of one Prometheus scrape over a large catalog (goal: under 100 ms with 100,000 jobs).

    .venv/bin/python bench/metrics_bench.py [--jobs 100000] [--runs 20] [--out bench/results/metrics.json]

Seeds a catalog with a year of history: 100,000 jobs of every kind (backups,
verifications, syncs, retention runs, restores, drills; about 3 % failed,
with error classes), a snapshot per successful backup and its verification
on two targets, measured restores, schedule runs, drill reports and the
targets' stored bytes. Then times what the daemon does per scrape of
/metrics (open a read-only view of the catalog, read the aggregates, render
the exposition text), in this process: median of ``--runs``.

Rows are written with SQL in one transaction (the catalog's own write
methods stamp wall-clock times and would take minutes for this many rows);
the schema comes from the catalog's own migrations.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DAY = 86_400.0
DBS = ("warranty", "billing", "crm", "ledger")
KINDS = (("backup", 0.55, 300.0), ("verify", 0.22, 90.0), ("sync", 0.08, 600.0), ("retention", 0.05, 20.0),
         ("check", 0.06, 1200.0), ("restore", 0.03, 900.0), ("drill", 0.01, 1500.0))
CLASSES = ("TargetUnreachable", "StorageError", "IntegrityError", "PostgresError", "ConfigError")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def seed(base: Path, n_jobs: int, now: float) -> Path:
    """A config and a catalog with ``n_jobs`` jobs over the last year."""
    from core.catalog.sqlite import SqliteCatalog
    from core.drills.model import DrillReport
    from tests.fixtures.backstop import local_target, write_setup

    setup = write_setup(base, [local_target(base / "repo"), local_target(base / "repo2", "offsite")],
                        [{"name": d, "dsn": f"postgresql://postgres@127.0.0.1:9/{d}", "rto_minutes": 30 + 15 * i}
                         for i, d in enumerate(DBS)])
    path = setup.config.catalog.sqlite_path
    cat = SqliteCatalog(path)
    rng = random.Random(11)
    jobs, snaps, vers, restores, runs = [], [], [], [], []
    weights = [w for _, w, _ in KINDS]
    step = 365 * DAY / n_jobs
    for i in range(n_jobs):
        kind, _, typical = rng.choices(KINDS, weights)[0]
        db = DBS[i % len(DBS)]
        started = now - 365 * DAY + i * step
        took = typical * (0.5 + rng.random())
        failed = rng.random() < 0.03
        state = "failed" if failed else ("abandoned" if rng.random() < 0.002 else "succeeded")
        job_id = f"j{i:011d}"
        result = json.dumps({"error_class": rng.choice(CLASSES)} if failed else {})
        jobs.append((job_id, kind, db, state, started, started + took, "done", 0, None, 0.0,
                     "failed: see the log" if failed else None, f"{kind} of {db}", "host-1", 1000, result))
        if kind == "backup" and state == "succeeded":
            sid = f"{i:016x}" + "ab" * 24
            size = (200 + i // 1000) * 2**20
            snaps.append((sid, db, "logical", _iso(started), _iso(started + took), size, size // 30,
                          json.dumps(["local1", "offsite"]), job_id))
            for t in ("local1", "offsite"):
                vers.append((job_id, t, sid, started + took, started + took + 20, 1, 12, size // 30, 1, "[]"))
        if kind in ("restore", "drill"):
            restores.append((job_id, f"{i:016x}", db, f"{db}_restore_{i}", "[]", started, took, 2**30,
                             int(state == "succeeded"), None, "drill" if kind == "drill" else "restore", "local1"))
    for name, action, every in (("nightly", "backup", DAY), ("verify", "verify", DAY), ("sync", "sync", DAY / 4),
                                ("retention", "retention", DAY), ("drill", "drill", 91 * DAY)):
        t = now - 365 * DAY
        while t < now:
            st = "succeeded" if rng.random() > 0.02 else rng.choice(("failed", "missed"))
            runs.append((name, _iso(t), t, action, None, st, "cron", "host-1:1:x", "host-1", 1, t, t,
                         None if st == "missed" else t + 60, None, None))
            t += every
    db = cat.connection
    db.execute("BEGIN")
    db.executemany("INSERT INTO jobs (id, kind, db, state, started_at, finished_at, phase, bytes_done, bytes_total,"
                   " rate, error, description, host, pid, result) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", jobs)
    db.executemany("INSERT INTO snapshots (id, db, kind, started_at, finished_at, size_bytes, stored_bytes, targets,"
                   " job_id) VALUES (?,?,?,?,?,?,?,?,?)", snaps)
    db.executemany("INSERT INTO verifications (job_id, target, snapshot_id, started_at, finished_at, read_data,"
                   " objects_checked, bytes_read, ok, problems) VALUES (?,?,?,?,?,?,?,?,?,?)", vers)
    db.executemany("INSERT INTO restores (job_id, snapshot_id, db, into_db, tables, started_at, duration_s, bytes,"
                   " ok, error, kind, target) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", restores)
    db.executemany("INSERT INTO schedule_runs (name, slot, due, action, db, state, trigger, holder, host, pid,"
                   " claimed_at, started_at, finished_at, error, result) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
    db.executemany("INSERT INTO target_state (target, stored_bytes, stored_objects, stored_measured_at)"
                   " VALUES (?,?,?,?)", [("local1", 412 * 2**30, 90_000, now - 3600),
                                         ("offsite", 409 * 2**30, 89_500, now - 3600)])
    db.execute("COMMIT")
    for q in range(8):
        for d in DBS:
            at = now - (8 - q) * 91 * DAY + 7200
            cat.add_drill(DrillReport(f"{d}-{q}", d, "logical", "ab" * 32, _iso(at - DAY), "local1", [], _iso(at),
                                      at, at + 600, 480.0 + q * 10, 1800.0, "schedule:drill",
                                      "passed" if q != 3 else "failed"))
    cat.close()
    return setup.path


def scrape_once(config_path: Path, now: float) -> tuple[float, int]:
    """(seconds, bytes) of one scrape as the daemon serves it."""
    from core.catalog.sqlite import SqliteCatalog
    from core.config import load_config
    from core.metrics.collector import BackstopCollector, exposition

    config = load_config(config_path)
    cat = SqliteCatalog(config.catalog.sqlite_path)
    collector = BackstopCollector(lambda: (cat, config), clock=lambda: now)
    try:
        t0 = time.perf_counter()
        text = exposition(collector)
        return time.perf_counter() - t0, len(text)
    finally:
        cat.close()


def scrape_http(config_path: Path, now: float, runs: int) -> list[float]:
    """Seconds per GET of /metrics from the daemon's server (core/metrics/server.py), on a loopback port."""
    import socket
    import urllib.request

    from core.catalog.sqlite import SqliteCatalog
    from core.config import load_config
    from core.metrics.collector import BackstopCollector
    from core.metrics.server import MetricsServer

    config = load_config(config_path)
    cat = SqliteCatalog(config.catalog.sqlite_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = MetricsServer(f"127.0.0.1:{port}", BackstopCollector(lambda: (cat, config), clock=lambda: now)).start()
    times = []
    try:
        for _ in range(runs + 1):
            t0 = time.perf_counter()
            with urllib.request.urlopen(server.url, timeout=30) as resp:
                resp.read()
            times.append(time.perf_counter() - t0)
    finally:
        server.stop()
        cat.close()
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "metrics.json")
    args = ap.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="backstop-metrics-bench-") as tmp:
        t0 = time.monotonic()
        config = seed(Path(tmp) / "c", args.jobs, now)
        seeded_s = time.monotonic() - t0
        counts = {}
        with sqlite3.connect(str(Path(tmp) / "c" / "catalog.db")) as db:
            for table in ("jobs", "snapshots", "verifications", "restores", "schedule_runs", "drills"):
                counts[table] = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        scrape_once(config, now)  # warm the page cache and the imports, as a running daemon has them
        times, size = [], 0
        for _ in range(args.runs):
            s, size = scrape_once(config, now)
            times.append(s)
        http = scrape_http(config, now, args.runs)
    med = statistics.median(times)
    http_med = statistics.median(http)
    result = {"jobs": args.jobs, "rows": counts, "runs": args.runs, "median_ms": round(med * 1000, 2),
              "min_ms": round(min(times) * 1000, 2), "max_ms": round(max(times) * 1000, 2), "exposition_bytes": size,
              "http_median_ms": round(http_med * 1000, 2), "seed_s": round(seeded_s, 1),
              "python": sys.version.split()[0], "cpus": os.cpu_count(),
              "goal_ms": 100}
    print(f"seeded {counts} in {seeded_s:.1f} s")
    print(f"scrape: median {med * 1000:.1f} ms over {args.runs} runs (min {min(times) * 1000:.1f}, "
          f"max {max(times) * 1000:.1f}); {size:,} bytes of exposition text; goal < 100 ms")
    print(f"GET /metrics from the daemon's server: median {http_med * 1000:.1f} ms over {args.runs} runs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
