#!/usr/bin/env python3
"""Issue 13's figures: logical and physical restore drills on a ~1 GB database, step by step.

One private cluster (wal_level=replica, archive_mode=on, archive_command =
`backstop wal-push`, run as the server's account) holding one database of
pgbench tables plus warranty claims (``--scale``, ``--claims``; the defaults
make about 1 GB). One logical and one physical backup are taken, pgbench
writes for ``--write-seconds`` and its WAL is archived, then ``--rounds``
rounds alternate:

  logical   `backstop drill run --type logical`: restore into a scratch
            database, table digests and amcheck, drop;
  baseline  `pg_dump -Fc -Z0 | pg_restore -d SCRATCH` of the same database
            (what the stock tools take to copy it, with no checks), dropped;
  physical  `backstop drill run --type physical`: a scratch cluster
            recovered to a random archived point, pg_verifybackup with
            checksums, amcheck, removed.

Reported per kind (medians over the rounds): the recovery time (restore
until the data is usable), each step's seconds and share of the drill's
wall time, the checks, the RTO verdict, the drill's peak RSS (GNU time) and
the ratio of the logical drill's recovery time to the baseline's.

    .venv/bin/python bench/drill_bench.py --scale 2 --claims 20000 --rounds 1 --out /tmp/drill-tiny.json
    .venv/bin/python bench/drill_bench.py            # ~1 GB, 2 rounds, bench/results/drill.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import backup_bench as bb  # noqa: E402
from physical_bench import Account, Backstop, set_archive_command, start_cluster, wait_archived  # noqa: E402
from tests.fixtures.server_account import let_run_python  # noqa: E402

DB = bb.DB


def drill(bs: Backstop, kind: str, rnd: int, logs: Path) -> dict[str, Any]:
    """One `backstop drill run`; its report plus wall time and peak RSS."""
    run, doc = bb.backstop(bs.ops_config, ["drill", "run", "--db", DB, "--type", kind],
                           logs / f"drill-{kind}-{rnd}.log", logs / f"drill-{kind}-{rnd}.json")
    return {"kind": kind, "round": rnd, "wall_s": run.wall_s, "peak_rss_kib": max(run.rss_kib),
            "verdict": doc["verdict"], "recovery_s": doc["recovery_s"], "rto_s": doc["rto_s"],
            "steps": {s["name"]: s["seconds"] for s in doc["steps"]},
            "checks": [(c["name"], c["ok"], c["detail"]) for c in doc["checks"]],
            "point_reached": doc["point_reached"], "error": doc.get("error")}


def baseline(cluster: Any, rnd: int, logs: Path) -> dict[str, Any]:
    """pg_dump | pg_restore of the same database into a scratch one (no checks), then dropped."""
    scratch = f"{DB}_baseline_{rnd}"
    cluster.drop_database(scratch)
    cluster.create_database(scratch)
    dump = [str(cluster.bin_dir / "pg_dump"), "-Fc", "-Z0", cluster.dsn(DB)]
    restore = [str(cluster.bin_dir / "pg_restore"), "--no-owner", "-d", cluster.dsn(scratch)]
    run = bb.run_pipeline([dump, restore], logs / f"baseline-{rnd}.log")
    cluster.drop_database(scratch)
    return {"kind": "baseline", "round": rnd, "wall_s": run.wall_s}


def summarise(rows: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    mine = [r for r in rows if r["kind"] == kind]
    if not mine:
        return None
    out: dict[str, Any] = {"rounds": len(mine), "wall_s": statistics.median(r["wall_s"] for r in mine)}
    if kind == "baseline":
        return out
    out["recovery_s"] = statistics.median(r["recovery_s"] for r in mine)
    out["verdicts"] = [r["verdict"] for r in mine]
    out["peak_rss_mib"] = max(r["peak_rss_kib"] for r in mine) / 1024
    steps = sorted({s for r in mine for s in r["steps"]})
    out["steps_s"] = {s: statistics.median(r["steps"].get(s, 0.0) for r in mine) for s in steps}
    out["steps_share"] = {s: round(v / out["wall_s"], 3) for s, v in out["steps_s"].items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=40, help="pgbench scale (40: about 600 MB)")
    ap.add_argument("--claims", type=int, default=900_000, help="warranty claims (900,000: about 420 MB)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--write-seconds", type=int, default=10, help="pgbench writes between the backups and the drills")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "backstop-drill-bench")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drill.json")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)

    work = args.workdir
    bb.remove(work)
    work.mkdir(parents=True)
    logs = work / "logs"
    logs.mkdir()
    passphrase = bb.write_passphrase(work)
    cluster = start_cluster(work)
    acct = Account(cluster.owner)
    if cluster.owner is not None:
        let_run_python(cluster.owner[0])
    rows: list[dict[str, Any]] = []
    try:
        t = time.perf_counter()
        built = bb.build_database(cluster, DB, args.scale, args.claims, logs / "build.log")
        db_bytes = bb.database_bytes(cluster.dsn(DB))
        print(f"database {DB}: {db_bytes / 2**20:.0f} MiB, built in {built:.0f} s", flush=True)
        bs = Backstop.create(work / "backstop", cluster, passphrase, acct, logs / "init.log")
        # A physical drill's restore_command (`backstop wal-fetch`) runs as the server's account with the
        # operator's config: that account must read it, its passphrase and its spool.
        acct.give(passphrase, bs.ops_config.parent)
        set_archive_command(cluster, bs.archive_command())
        wait_archived(cluster)
        for kind in ("logical", "physical"):
            run, _ = bb.backstop(bs.ops_config, ["backup", "--db", DB, "--type", kind], logs / f"backup-{kind}.log",
                                 logs / f"backup-{kind}.json")
            print(f"{kind} backup: {run.wall_s:.1f} s", flush=True)
        bb.run_pipeline([[str(cluster.bin_dir / "pgbench"), "-n", "-c", "2", "-T", str(args.write_seconds),
                          cluster.dsn(DB)]], logs / "pgbench.log")
        wait_archived(cluster)
        for rnd in range(args.rounds):
            order = ("logical", "baseline", "physical") if rnd % 2 == 0 else ("physical", "baseline", "logical")
            for kind in order:
                row = baseline(cluster, rnd, logs) if kind == "baseline" else drill(bs, kind, rnd, logs)
                rows.append(row)
                print(f"round {rnd} {kind}: {row['wall_s']:.1f} s"
                      + (f", recovery {row['recovery_s']:.1f} s, {row['verdict']}" if "verdict" in row else ""),
                      flush=True)
        bs.stop_pusher()
        summary = {k: summarise(rows, k) for k in ("logical", "physical", "baseline")}
        lg, bl = summary["logical"], summary["baseline"]
        ratios = [r["recovery_s"] / b["wall_s"] for r, b in zip(
            [r for r in rows if r["kind"] == "logical"], [r for r in rows if r["kind"] == "baseline"], strict=False)]
        doc = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(),
               "cpus": os.cpu_count(), "note": args.note, "database_bytes": db_bytes, "scale": args.scale,
               "claims": args.claims, "took_s": round(time.perf_counter() - t, 1), "summary": summary,
               "logical_recovery_vs_pg_restore": statistics.median(ratios) if ratios and lg and bl else None,
               "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1))
        print(json.dumps(summary, indent=1))
        print(f"logical drill recovery / pg_dump|pg_restore: {doc['logical_recovery_vs_pg_restore']}")
        print(f"results in {args.out}")
    finally:
        try:
            cluster.stop()
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"could not stop the bench cluster: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
