#!/usr/bin/env python3
"""What the per-table digests (core/repository/table_digest.py) cost: alone, and inside a logical backup.

Phases, on one private cluster (backup_bench.py's data set: `pgbench -i -s SCALE`
plus CLAIMS warranty claims):

  digest   the COPY text of the largest tables, concatenated to about --stream-mb
           MB in a file, then fed in 1 MiB blocks to CopyDigest (and to SHA-256,
           for scale); best of --rounds, in MB/s and rows/s;
  backup   a logical backup (in process, through Engine, into a fresh local
           repository each round) with digests and without (CopyDigest swapped
           for a class that does nothing), alternating A B A B, --rounds each;
           the median of each and of the per-round ratios, and the CPU seconds of
           the backing-up process (its threads: where the digest runs; the
           server's and psql's CPU are not in it).

Usage: .venv/bin/python bench/digest_bench.py --scale 10 --claims 300000 --rounds 3 --workdir /var/tmp/integ-bench
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import backup_bench as bb  # noqa: E402
from core.config import load_config  # noqa: E402
from core.drills.integrity import check_indexes, check_tables  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.ops import backup as backup_op  # noqa: E402
from core.repository.table_digest import CopyDigest  # noqa: E402

MB = 1_000_000
BLOCK = 1 << 20


class _NoDigest(CopyDigest):
    """What the backup runs without digests: the same calls, no work."""

    def update(self, block: bytes | bytearray | memoryview) -> None:
        pass


VARIANTS = {"with": CopyDigest, "without": _NoDigest}


def copy_stream(cluster: Any, db: str, out: Path, want_bytes: int) -> int:
    """COPY the largest tables (as the backup does: through psql, same settings) into ``out``; returns rows."""
    dsn = cluster.dsn(db)
    tables = bb.sql(dsn, "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n "
                         "ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN "
                         "('pg_catalog', 'information_schema') ORDER BY pg_table_size(c.oid) DESC")
    with out.open("wb") as f:
        for (table,) in tables:
            if f.tell() >= want_bytes:
                break
            subprocess.run([str(cluster.bin_dir / "psql"), "--no-psqlrc", "-q", "-d", dsn, "-c",
                            f"COPY {table} TO STDOUT"], stdout=f, check=True)
    return sum(1 for _ in out.open("rb"))


def time_digest(path: Path, rounds: int) -> dict[str, Any]:
    size = path.stat().st_size
    data = path.read_bytes()  # from memory: the digest's own speed, not the disk's
    blocks = [memoryview(data)[i:i + BLOCK] for i in range(0, size, BLOCK)]
    best: dict[str, float] = {}
    rows = 0
    for _ in range(rounds):
        t = time.perf_counter()
        d = CopyDigest()
        for b in blocks:
            d.update(b)
        rows = d.result().rows
        best["digest"] = min(best.get("digest", 1e9), time.perf_counter() - t)
        t = time.perf_counter()
        h = hashlib.sha256()
        for b in blocks:
            h.update(b)
        best["sha256"] = min(best.get("sha256", 1e9), time.perf_counter() - t)
    return {"bytes": size, "rows": rows, "avg_row_bytes": round(size / max(rows, 1), 1),
            "digest_mb_s": round(size / MB / best["digest"], 1), "digest_rows_per_s": round(rows / best["digest"]),
            "sha256_mb_s": round(size / MB / best["sha256"], 1)}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def one_backup(config: Path) -> tuple[float, float]:
    """Wall seconds of one backup, and CPU seconds of this process's threads in it (where the digest runs)."""
    async with Engine(load_config(config)) as engine:
        await engine.init()
        t, c = time.perf_counter(), _cpu()
        await engine.backup(bb.DB)
        return time.perf_counter() - t, _cpu() - c


async def time_checks(cluster: Any, rdir: Path, passphrase: Path) -> dict[str, Any]:
    """A drill's checks on a restored copy: every table's digest, then amcheck (heapallindexed)."""
    shutil.rmtree(rdir, ignore_errors=True)
    config = bb.write_config(rdir, cluster, [bb.DB], passphrase, workers=None, settings={"jobs": 2})
    backup_op.CopyDigest = CopyDigest  # type: ignore[misc]
    into = f"{bb.DB}_check"
    cluster.drop_database(into)
    try:
        async with Engine(load_config(config)) as engine:
            await engine.init()
            rec = await engine.backup(bb.DB)
            manifest = await (await engine.open_repository()).read_manifest(rec.id)
            t = time.perf_counter()
            await engine.restore(bb.DB, into)
            restore_s = time.perf_counter() - t
        t = time.perf_counter()
        tables = await check_tables(cluster.dsn(into), manifest)
        tables_s = time.perf_counter() - t
        t = time.perf_counter()
        amcheck = await check_indexes(cluster.dsn(into))
        amcheck_s = time.perf_counter() - t
    finally:
        cluster.drop_database(into)
        shutil.rmtree(rdir, ignore_errors=True)
    return {"restore_s": round(restore_s, 2), "check_tables_s": round(tables_s, 2),
            "tables_ok": sum(c.ok for c in tables), "tables": len(tables), "amcheck_s": round(amcheck_s, 2),
            "amcheck": amcheck.detail if amcheck else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--claims", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stream-mb", type=int, default=200)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="backstop-digest-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = bb.start_cluster(workdir)
    result: dict[str, Any] = {"scale": args.scale, "claims": args.claims, "rounds": args.rounds}
    try:
        bb.ensure_database(cluster, workdir, bb.DB, args.scale, args.claims, workdir / "build.log")
        result["database_bytes"] = bb.database_bytes(cluster.dsn(bb.DB))
        stream = workdir / "copy-stream.txt"
        copy_stream(cluster, bb.DB, stream, args.stream_mb * MB)
        result["digest"] = time_digest(stream, args.rounds)
        stream.unlink()
        print("digest:", json.dumps(result["digest"]), flush=True)

        passphrase = bb.write_passphrase(workdir)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for rnd in range(args.rounds):
            for variant, cls in VARIANTS.items():
                rdir = workdir / f"repo-{variant}-{rnd}"
                shutil.rmtree(rdir, ignore_errors=True)
                config = bb.write_config(rdir, cluster, [bb.DB], passphrase, workers=None, settings={"jobs": 2})
                backup_op.CopyDigest = cls  # type: ignore[misc]
                bb.settle(cluster.dsn(bb.DB))
                seconds, cpu_s = asyncio.run(one_backup(config))
                times[variant].append(seconds)
                cpu[variant].append(cpu_s)
                print(f"round {rnd + 1} digests {variant:7s}: {seconds:.2f} s, backstop CPU {cpu_s:.2f} s", flush=True)
                shutil.rmtree(rdir, ignore_errors=True)
        result["backup"] = {v: {"wall_s": times[v], "cpu_s": cpu[v],
                                "median_wall_s": round(statistics.median(times[v]), 2),
                                "median_cpu_s": round(statistics.median(cpu[v]), 2),
                                "median_ratio_to_without": round(statistics.median(
                                    [a / b for a, b in zip(times[v], times["without"], strict=True)]), 3)}
                            for v in VARIANTS}
        print("backup:", json.dumps({v: {k: x for k, x in r.items() if k.startswith("median")}
                                     for v, r in result["backup"].items()}), flush=True)
        result["check"] = asyncio.run(time_checks(cluster, workdir / "repo-check", passphrase))
        print("check:", json.dumps(result["check"]), flush=True)
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        cluster.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
