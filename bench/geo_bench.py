"""`backstop sync` and `check --read-data` between two S3 servers (issue 12), against raw boto3 reads.

Starts two SeaweedFS servers on free loopback ports (``tests/fixtures/s3.py``'s
``SeaweedServer``) as two regions A and B, and a private PostgreSQL cluster
holding one unlogged table of random ``bytea`` (incompressible, nothing to
deduplicate) of about ``--size`` bytes. One real ``backstop backup`` stores it
on A only (a config naming A alone; a second config over the same catalog
names A and B). Then, ``--rounds`` times, B's bucket is emptied and re-created
(untimed) and, alternating the order inside each round:

- ``raw-read-A``: boto3, list A's bucket and GET every object, ``--parallel``
  at once (sync's own ``_PARALLEL``, 4); bytes per second;
- ``raw-copy``: boto3 GET from A and PUT to a scratch bucket on B, same
  parallelism (how fast these two servers can copy at all);
- ``sync``: ``backstop sync --target B`` into the empty B; afterwards B must
  hold every object A holds (config included; ``locks/`` aside) with the same size;

then, with B complete, alternating:

- ``check``: ``backstop check --read-data`` over A and B (bytes it read from both, per second);
- ``raw-read-AB``: boto3 reads of every object of A, then of B.

Figures: MB/s (10^6 bytes/s) medians, and the medians of the per-round ratios
sync/raw-read-A and check/raw-read-AB. Peak RSS of each backstop process
comes from GNU time (``%M``).

    .venv/bin/python bench/geo_bench.py --size 200MB --rounds 1 --out /tmp/geo-small.json   # ~2 minutes
    .venv/bin/python bench/geo_bench.py --note "other helpers' tests running"                # 2 GB, 3 rounds
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from backup_bench import (  # noqa: E402
    CommandFailed,
    backstop,
    backstop_bin,
    sql,
    start_cluster,
    write_passphrase,
)
from core.config import parse_size  # noqa: E402
from core.ops.sync import _PARALLEL as SYNC_PARALLEL  # noqa: E402
from tests.fixtures.s3 import SeaweedServer, stop_servers  # noqa: E402  (sets dummy AWS credentials)

DB = "geo"
ROW_BYTES = 1 << 20  # one random bytea value per row
BUCKET_A, BUCKET_B, SCRATCH = "geo-a", "geo-b", "geo-scratch"


# -- data set and servers -------------------------------------------------------------


def build_table(dsn: str, size: int) -> dict[str, Any]:
    """An unlogged table of ``size`` random bytes in ``ROW_BYTES`` values (no WAL, no TOAST compression)."""
    import psycopg

    t0 = time.perf_counter()
    rows = max(1, size // ROW_BYTES)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS blobs")
        conn.execute("CREATE UNLOGGED TABLE blobs (id int PRIMARY KEY, b bytea)")
        conn.execute("ALTER TABLE blobs ALTER COLUMN b SET STORAGE EXTERNAL")  # random bytes: no pglz attempt
        with conn.cursor() as cur, cur.copy("COPY blobs (id, b) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "bytea"])
            for i in range(rows):
                copy.write_row((i, os.urandom(ROW_BYTES)))
        conn.execute("VACUUM (ANALYZE) blobs")
        conn.execute("CHECKPOINT")
        table = int(conn.execute("SELECT pg_total_relation_size('blobs')").fetchone()[0])  # type: ignore[index]
    return {"rows": rows, "row_bytes": ROW_BYTES, "random_bytes": rows * ROW_BYTES, "table_bytes": table,
            "build_s": round(time.perf_counter() - t0, 1)}


def ensure_table(cluster: Any, workdir: Path, size: int) -> dict[str, Any]:
    """Build the table unless this workdir's cluster already holds one of this size."""
    marker = workdir / "geo-dataset.json"
    want = {"db": DB, "size": size, "row_bytes": ROW_BYTES}
    if marker.exists() and json.loads(marker.read_text()).get("want") == want and sql(
            cluster.dsn(), f"SELECT 1 FROM pg_database WHERE datname = '{DB}'"):
        info: dict[str, Any] = json.loads(marker.read_text())["info"]
        print(f"reusing table blobs ({info['random_bytes'] / 1e6:.0f} MB) in {workdir}", flush=True)
        return {**info, "reused": True}
    marker.unlink(missing_ok=True)
    cluster.drop_database(DB)
    cluster.create_database(DB)
    info = build_table(cluster.dsn(DB), size)
    marker.write_text(json.dumps({"want": want, "info": info}))
    return info


def start_servers(base: Path) -> tuple[SeaweedServer, SeaweedServer]:
    a, b = SeaweedServer(data_dir=base / "region-a"), SeaweedServer(data_dir=base / "region-b")
    a.launch()
    b.launch()
    try:
        a.wait_ready()
        b.wait_ready()
    except BaseException:
        stop_servers([a, b])
        raise
    return a, b


def s3_client(server: SeaweedServer, parallel: int) -> Any:
    """A boto3 client for ``server`` with room for ``parallel`` requests at once (the fixture's dummy credentials)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                        config=Config(connect_timeout=10, read_timeout=120, max_pool_connections=max(10, parallel),
                                      retries={"mode": "standard", "max_attempts": 3}))


def keys_of(c: Any, bucket: str) -> dict[str, int]:
    """Every object of ``bucket``: key -> size."""
    return {o["Key"]: int(o["Size"]) for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}


def empty_bucket(c: Any, bucket: str) -> None:
    """Delete ``bucket`` with everything in it and create it again (SeaweedFS frees the collection's volumes)."""
    from botocore.exceptions import ClientError

    try:
        keys = list(keys_of(c, bucket))
    except ClientError:
        keys = []
    for i in range(0, len(keys), 1000):
        c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
    try:
        c.delete_bucket(Bucket=bucket)
    except ClientError:
        pass
    c.create_bucket(Bucket=bucket)
    if keys_of(c, bucket):
        sys.exit(f"bucket {bucket} is not empty after emptying it")


# -- CPU accounting ------------------------------------------------------------------


_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """User+system CPU seconds of every live process in process group ``pgid`` (a weed server)."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After "(comm)": state ppid pgrp ...; utime and stime are fields 14 and 15 of the whole line.
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


class CpuMeter:
    """CPU seconds spent during a block: this process, its waited-for children, each weed server."""

    def __init__(self, servers: dict[str, SeaweedServer]) -> None:
        self.servers = servers

    def snap(self) -> dict[str, float]:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        out = {"bench": me.ru_utime + me.ru_stime, "backstop": kids.ru_utime + kids.ru_stime}
        for name, srv in self.servers.items():
            out[f"weed_{name}"] = group_cpu_s(srv.proc.pid) if srv.proc is not None else 0.0
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before[k], 2) for k in before}


# -- raw boto3 baselines --------------------------------------------------------------


def raw_read(sources: list[tuple[Any, str]], parallel: int) -> dict[str, Any]:
    """List and GET every object of each (client, bucket) in turn, ``parallel`` at once; bytes and seconds."""
    t0 = time.perf_counter()
    total = objects = 0
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        for c, bucket in sources:
            keys = list(keys_of(c, bucket))

            def get(key: str, c: Any = c, bucket: str = bucket) -> int:
                return len(c.get_object(Bucket=bucket, Key=key)["Body"].read())

            for n in pool.map(get, keys):
                total += n
                objects += 1
    return {"wall_s": time.perf_counter() - t0, "bytes": total, "objects": objects}


def raw_copy(src: Any, src_bucket: str, dst: Any, dst_bucket: str, parallel: int) -> dict[str, Any]:
    """GET each object of the source and PUT it to the destination, ``parallel`` at once."""
    t0 = time.perf_counter()
    keys = list(keys_of(src, src_bucket))

    def copy(key: str) -> int:
        data = src.get_object(Bucket=src_bucket, Key=key)["Body"].read()
        dst.put_object(Bucket=dst_bucket, Key=key, Body=data)
        return len(data)

    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        sizes = list(pool.map(copy, keys))
    return {"wall_s": time.perf_counter() - t0, "bytes": sum(sizes), "objects": len(sizes)}


# -- configs ---------------------------------------------------------------------------


def s3_entry(server: SeaweedServer, bucket: str, name: str, priority: int) -> dict[str, Any]:
    return {"name": name, "type": "s3", "bucket": bucket, "endpoint_url": server.endpoint_url, "region": "us-east-1",
            "priority": priority, "role": "primary" if name == "A" else "secondary"}


def write_configs(d: Path, a: SeaweedServer, b: SeaweedServer, cluster: Any, passphrase: Path) -> tuple[Path, Path]:
    """backstop-a.yaml (target A alone: the backups) and backstop.yaml (A and B), one catalog."""
    d.mkdir(parents=True, exist_ok=True)
    common = {"catalog": {"url": f"sqlite:///{d / 'catalog.db'}"},
              "encryption": {"passphrase_file": str(passphrase)},
              "databases": [{"name": DB, "dsn": cluster.dsn(DB), "bin_dir": str(cluster.bin_dir)}]}
    ta, tb = s3_entry(a, BUCKET_A, "A", 10), s3_entry(b, BUCKET_B, "B", 20)
    only_a, both = d / "backstop-a.yaml", d / "backstop.yaml"
    only_a.write_text(yaml.safe_dump({**common, "targets": [ta]}, sort_keys=False))
    both.write_text(yaml.safe_dump({**common, "targets": [ta, tb]}, sort_keys=False))
    return only_a, both


# -- profiles ----------------------------------------------------------------------------


def profile_ops(base: Path, cfg: Path, cb: Any, logs: Path, top: int = 25) -> dict[str, Any]:
    """sync into an emptied B and check --read-data once each under cProfile; their top functions by own time."""
    import io
    import pstats

    found: dict[str, Any] = {}
    for op, args in (("sync", ["sync", "--target", "B"]), ("check", ["check", "--read-data"])):
        if op == "sync":
            empty_bucket(cb, BUCKET_B)
        prof = base / "profiles" / f"{op}.prof"
        prof.parent.mkdir(parents=True, exist_ok=True)
        run, _ = backstop(cfg, args, logs / f"profile-{op}.log", base / f"profile-{op}.json",
                          cli=[sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "core.cli"], cwd=ROOT)
        text = io.StringIO()
        stats = pstats.Stats(str(prof), stream=text)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        print(f"\n== {op} under cProfile: {run.wall_s:.1f} s ==\n{text.getvalue()}", flush=True)
        found[op] = {"wall_s": round(run.wall_s, 2), "file": str(prof), "top": text.getvalue().splitlines()}
    return found


# -- the rounds ------------------------------------------------------------------------


def mb_s(n: int, s: float) -> float:
    return n / s / 1e6 if s > 0 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--size", default="2GB", help="random bytes in the table, about the repository's stored size "
                                                  "(default 2GB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=SYNC_PARALLEL,
                    help=f"objects at once in the raw boto3 reads and copy (default: sync's own, {SYNC_PARALLEL})")
    ap.add_argument("--workdir", type=Path, help="keep the PostgreSQL cluster and its table here and reuse them "
                                                 "(default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory (servers' data, logs)")
    ap.add_argument("--profile", action="store_true",
                    help="after the rounds, run sync and check once more under cProfile (untimed; top functions "
                         "printed and kept in the JSON)")
    ap.add_argument("--note", default="", help="recorded in the JSON, e.g. what else ran on the machine")
    ap.add_argument("--out", type=Path, help="results (default bench/results/geo.json from 1 GB on, "
                                             "else bench/results/geo-small-<time>.json)")
    a = ap.parse_args()
    size = parse_size(a.size)
    if a.rounds < 1 or size < ROW_BYTES:
        ap.error("--rounds must be at least 1 and --size at least 1MiB")
    out = a.out or ROOT / "bench" / "results" / ("geo.json" if size >= 10**9 else
                                                 f"geo-small-{time.strftime('%Y%m%dT%H%M%S')}.json")
    if a.workdir:
        a.workdir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="backstop-geo-bench-", dir=a.workdir))
    pgdir = a.workdir / "geo" if a.workdir else base
    pgdir.mkdir(parents=True, exist_ok=True)
    logs = base / "logs"
    servers: list[SeaweedServer] = []
    cluster = None
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        sa, sb = start_servers(base)
        servers = [sa, sb]
        print(f"SeaweedFS A on {sa.endpoint_url}, B on {sb.endpoint_url}", flush=True)
        cluster = start_cluster(pgdir)
        dataset = ensure_table(cluster, pgdir, size)
        print(f"table blobs: {dataset['random_bytes'] / 1e6:.0f} MB random bytea in {dataset['rows']} rows "
              f"(built in {dataset['build_s']} s)", flush=True)
        ca, cb = s3_client(sa, a.parallel), s3_client(sb, a.parallel)
        cfg_a, cfg = write_configs(base / "backstop", sa, sb, cluster, write_passphrase(base))

        run, _ = backstop(cfg_a, ["init"], logs / "init.log", base / "init.json")
        t0 = time.perf_counter()
        brun, bdoc = backstop(cfg_a, ["backup", "--db", DB], logs / "backup.log", base / "backup.json")
        stored_a = keys_of(ca, BUCKET_A)
        repo_bytes = sum(v for k, v in stored_a.items() if not k.startswith("locks/"))
        build = {"init_s": round(run.wall_s, 2), "backup_s": round(brun.wall_s, 2),
                 "backup_peak_rss_kib": max(brun.rss_kib), "backup": {k: bdoc.get(k) for k in
                                                                      ("id", "size_bytes", "stored_bytes")},
                 "objects_on_A": len(stored_a), "stored_bytes_on_A": repo_bytes,
                 "backup_mb_s": round(mb_s(repo_bytes, time.perf_counter() - t0), 1)}
        print(f"backup to A alone: {brun.wall_s:.1f} s, repository {repo_bytes / 1e6:.0f} MB in {len(stored_a)} "
              f"objects, peak RSS {max(brun.rss_kib) / 1024:.0f} MiB", flush=True)

        runs: list[dict[str, Any]] = []

        meter = CpuMeter({"A": sa, "B": sb})
        cpu0: dict[str, float] = {}

        def record(rnd: int, label: str, wall: float, nbytes: int, **extra: Any) -> None:
            cpu = CpuMeter.delta(cpu0, meter.snap())
            runs.append({"round": rnd, "op": label, "wall_s": round(wall, 3), "bytes": nbytes,
                         "mb_s": round(mb_s(nbytes, wall), 1), "cpu_s": cpu, **extra})
            rss = f", peak RSS {extra['peak_rss_kib'] / 1024:.0f} MiB" if extra.get("peak_rss_kib") else ""
            busy = " ".join(f"{k} {v:.1f}" for k, v in cpu.items() if v >= 0.05)
            print(f"  [{rnd}/{a.rounds}] {label:<12} {wall:7.2f} s {nbytes / 1e6:8.0f} MB "
                  f"{mb_s(nbytes, wall):7.1f} MB/s{rss}; CPU s: {busy}", flush=True)

        def start() -> None:
            cpu0.clear()
            cpu0.update(meter.snap())

        def do_raw_a(rnd: int) -> None:
            start()
            r = raw_read([(ca, BUCKET_A)], a.parallel)
            record(rnd, "raw-read-A", r["wall_s"], r["bytes"], objects=r["objects"])

        def do_raw_copy(rnd: int) -> None:
            empty_bucket(cb, SCRATCH)
            start()
            r = raw_copy(ca, BUCKET_A, cb, SCRATCH, a.parallel)
            record(rnd, "raw-copy", r["wall_s"], r["bytes"], objects=r["objects"])
            empty_bucket(cb, SCRATCH)

        def do_sync(rnd: int) -> None:
            empty_bucket(cb, BUCKET_B)
            start()
            r, doc = backstop(cfg, ["sync", "--target", "B"], logs / f"sync-{rnd}.log", base / f"sync-{rnd}.json")
            (tb,) = [t for t in doc["targets"] if t["target"] == "B"]
            if not doc["ok"] or tb["skipped"] or tb["problems"]:
                sys.exit(f"sync did not complete B: {json.dumps(doc)[:2000]}")
            want = {k: v for k, v in keys_of(ca, BUCKET_A).items() if not k.startswith("locks/")}
            got = {k: v for k, v in keys_of(cb, BUCKET_B).items() if not k.startswith("locks/")}
            if want != got:
                sys.exit(f"after sync B differs from A: missing {sorted(set(want) - set(got))[:5]}, extra "
                         f"{sorted(set(got) - set(want))[:5]}, sizes differ "
                         f"{[k for k in want if k in got and want[k] != got[k]][:5]}")
            if "config" not in got:
                sys.exit("sync did not write config to B")
            record(rnd, "sync", r.wall_s, tb["bytes"], objects=tb["objects"], peak_rss_kib=max(r.rss_kib),
                   same_as_A=True)

        def do_check(rnd: int) -> None:
            start()
            try:
                r, doc = backstop(cfg, ["check", "--read-data"], logs / f"check-{rnd}.log",
                                  base / f"check-{rnd}.json")
            except CommandFailed as exc:
                sys.exit(f"check --read-data failed: {exc}\n{(base / f'check-{rnd}.json').read_text()[:3000]}")
            per = {t["target"]: t["bytes_read"] for t in doc["targets"]}
            if not doc["ok"] or set(per) != {"A", "B"}:
                sys.exit(f"check --read-data is not clean: {json.dumps(doc)[:3000]}")
            record(rnd, "check", r.wall_s, sum(per.values()), bytes_per_target=per, peak_rss_kib=max(r.rss_kib))

        def do_sync_noop(rnd: int) -> None:
            start()
            r, doc = backstop(cfg, ["sync", "--target", "B"], logs / f"noop-{rnd}.log", base / f"noop-{rnd}.json")
            (tb,) = [t for t in doc["targets"] if t["target"] == "B"]
            if not doc["ok"] or tb["objects"]:
                sys.exit(f"a second sync still copied something: {json.dumps(doc)[:2000]}")
            record(rnd, "sync-noop", r.wall_s, 0, peak_rss_kib=max(r.rss_kib))

        def do_raw_ab(rnd: int) -> None:
            start()
            r = raw_read([(ca, BUCKET_A), (cb, BUCKET_B)], a.parallel)
            record(rnd, "raw-read-AB", r["wall_s"], r["bytes"], objects=r["objects"])

        first = [do_raw_a, do_raw_copy, do_sync]
        second = [do_check, do_raw_ab, do_sync_noop]
        for rnd in range(1, a.rounds + 1):
            k = (rnd - 1) % len(first)
            for fn in first[k:] + first[:k]:
                fn(rnd)
            k = (rnd - 1) % len(second)
            for fn in second[k:] + second[:k]:
                fn(rnd)

        def by(op: str) -> dict[int, dict[str, Any]]:
            return {x["round"]: x for x in runs if x["op"] == op}

        summary: dict[str, Any] = {}
        for op in ("raw-read-A", "raw-copy", "sync", "check", "raw-read-AB", "sync-noop"):
            rs = list(by(op).values())
            summary[op] = {"median_mb_s": round(statistics.median(x["mb_s"] for x in rs), 1),
                           "min_mb_s": min(x["mb_s"] for x in rs), "max_mb_s": max(x["mb_s"] for x in rs),
                           "median_wall_s": round(statistics.median(x["wall_s"] for x in rs), 2),
                           "bytes": rs[-1]["bytes"]}
            if any("peak_rss_kib" in x for x in rs):
                summary[op]["peak_rss_mib"] = round(max(x["peak_rss_kib"] for x in rs) / 1024, 1)
            summary[op]["median_cpu_s"] = {k: round(statistics.median(x["cpu_s"][k] for x in rs), 2)
                                           for k in rs[0]["cpu_s"]}
        ratios = {
            "sync_over_raw_read_A": [by("sync")[r]["mb_s"] / by("raw-read-A")[r]["mb_s"] for r in by("sync")],
            "sync_over_raw_copy": [by("sync")[r]["mb_s"] / by("raw-copy")[r]["mb_s"] for r in by("sync")],
            "check_over_raw_read_AB": [by("check")[r]["mb_s"] / by("raw-read-AB")[r]["mb_s"] for r in by("check")],
        }
        summary["ratios"] = {k: {"median": round(statistics.median(v), 3), "per_round": [round(x, 3) for x in v]}
                             for k, v in ratios.items()}
        print(f"\n{'operation':<12} {'median MB/s':>11} {'min-max':>15} {'median s':>9} {'peak RSS':>9}")
        for op in ("raw-read-A", "raw-copy", "sync", "raw-read-AB", "check", "sync-noop"):
            s = summary[op]
            rss = f"{s['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in s else "-"
            print(f"{op:<12} {s['median_mb_s']:>11.1f} {s['min_mb_s']:>7.1f}-{s['max_mb_s']:<7.1f} "
                  f"{s['median_wall_s']:>9.2f} {rss:>9}")
        for k, v in summary["ratios"].items():
            print(f"{k}: median {v['median']:.3f} (rounds {v['per_round']})")
        profiles = profile_ops(base, cfg, cb, logs) if a.profile else {}
        load = os.getloadavg()
        doc = {"params": {"size": size, "rounds": a.rounds, "parallel": a.parallel, "sync_parallel": SYNC_PARALLEL,
                          "note": a.note},
               "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                               "backstop": backstop_bin(), "started": started,
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "loadavg_at_end": [round(x, 2) for x in load],
                               "rss_method": "GNU time %M" if Path("/usr/bin/time").exists() else "none",
                               "seaweedfs": "weed server, one per region, tests/fixtures/s3.py settings"},
               "dataset": dataset, "build": build, "summary": summary, "measurements": runs,
               **({"profiles": profiles} if profiles else {})}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nwrote {out}")
    finally:
        stop_servers(servers)
        if cluster is not None:
            cluster.stop()
        if a.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
            if not a.workdir:
                shutil.rmtree(pgdir, ignore_errors=True)


if __name__ == "__main__":
    main()
