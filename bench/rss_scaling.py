#!/usr/bin/env python3
"""Does Backstop's memory grow with the database? Peak RSS at two (or more) sizes.

Builds one database per size (`pgbench -i -s SCALE` + CLAIMS warranty claims)
in a private cluster, then alternates across sizes, round by round: a full
`backstop backup` into a fresh repository, then `backstop restore` of it into
a new database. Flat memory means the peak RSS stays about the same while the
database grows.

Usage: .venv/bin/python bench/rss_scaling.py                        # ~1 GB and ~3.5 GB
       .venv/bin/python bench/rss_scaling.py --size 5:100000 --size 20:400000   # quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backup_bench as bb  # noqa: E402  (shares the cluster, config and measuring code)
from core.postgres.cluster import LocalCluster  # noqa: E402

DEFAULT_SIZES = ("35:1000000", "130:3000000")  # ~1 GB; the baseline data set


@dataclass(frozen=True)
class Size:
    scale: int
    claims: int

    @property
    def db(self) -> str:
        return f"rss_s{self.scale}_c{self.claims}"


@dataclass
class Sample:
    db: str
    round: int
    backup_s: float
    backup_rss_kib: int
    restore_s: float | None
    restore_rss_kib: int | None
    dump_bytes: int


def parse_size(text: str) -> Size:
    try:
        scale, claims = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SCALE:CLAIMS, e.g. 35:1000000, not {text!r}") from None
    return Size(scale, claims)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, action="append", metavar="SCALE:CLAIMS",
                   help=f"a data set size, repeatable (default: {' and '.join(DEFAULT_SIZES)})")
    p.add_argument("--rounds", type=int, default=2, help="rounds per size (default 2)")
    p.add_argument("--skip-restore", action="store_true", help="measure backups only")
    p.add_argument("--workdir", type=Path, help="keep and reuse the cluster and data sets here")
    p.add_argument("--keep", action="store_true", help="do not delete the temporary workdir")
    p.add_argument("--out", type=Path, help="JSON results (default bench/results/rss-<time>.json)")
    args = p.parse_args(argv)
    args.size = args.size or [parse_size(s) for s in DEFAULT_SIZES]
    return args


def measure(cluster: LocalCluster, workdir: Path, passphrase: Path, size: Size, rnd: int,
            logs: Path, restore: bool) -> Sample:
    """One full backup into a fresh repository and, optionally, its restore."""
    rdir = workdir / "rss" / f"{size.db}-r{rnd}"
    bb.remove(rdir)
    cfg = bb.write_config(rdir, cluster, [size.db], passphrase, None)
    bb.backstop_init(cfg, logs / f"init-{size.db}-{rnd}.log", rdir / "init.json")
    bb.settle(cluster.dsn())
    run, doc = bb.backstop(cfg, ["backup", "--db", size.db], logs / f"backup-{size.db}-{rnd}.log", rdir / "b.json")
    restore_s = restore_rss = None
    if restore:
        into = f"{size.db}_r"
        cluster.drop_database(into)
        bb.settle(cluster.dsn())
        rrun, _ = bb.backstop(cfg, ["restore", "--db", size.db, "--into", into],
                              logs / f"restore-{size.db}-{rnd}.log", rdir / "r.json")
        cluster.drop_database(into)
        restore_s, restore_rss = rrun.wall_s, max(rrun.rss_kib)
    bb.remove(rdir)
    return Sample(size.db, rnd, run.wall_s, max(run.rss_kib), restore_s, restore_rss, int(doc["size_bytes"]))


@dataclass(frozen=True)
class SizeSummary:
    db: str
    scale: int
    claims: int
    db_bytes: int
    dump_bytes: int
    backup_peak_rss_kib: float
    restore_peak_rss_kib: float | None


def summarize(sizes: Sequence[Size], db_bytes: dict[str, int], samples: Sequence[Sample]) -> list[SizeSummary]:
    """Medians per size."""
    rows = []
    for s in sizes:
        mine = [x for x in samples if x.db == s.db]
        restores = [x.restore_rss_kib for x in mine if x.restore_rss_kib is not None]
        rows.append(SizeSummary(s.db, s.scale, s.claims, db_bytes[s.db], mine[0].dump_bytes,
                                statistics.median(x.backup_rss_kib for x in mine),
                                statistics.median(restores) if restores else None))
    return rows


def mib(kib: float | None) -> str:
    return f"{kib / 1024:.0f} MiB" if kib is not None else "—"


def print_table(rows: Sequence[SizeSummary]) -> None:
    print(f"\n{'database':<24} {'db size':>10} {'dump':>10} {'backup RSS':>11} {'restore RSS':>12}")
    for r in rows:
        print(f"{r.db:<24} {bb.human(r.db_bytes):>10} {bb.human(r.dump_bytes):>10} "
              f"{mib(r.backup_peak_rss_kib):>11} {mib(r.restore_peak_rss_kib):>12}")
    first, last = rows[0], rows[-1]
    line = (f"largest/smallest: database x{last.db_bytes / first.db_bytes:.2f}, "
            f"backup RSS x{last.backup_peak_rss_kib / first.backup_peak_rss_kib:.2f}")
    if first.restore_peak_rss_kib and last.restore_peak_rss_kib:
        line += f", restore RSS x{last.restore_peak_rss_kib / first.restore_peak_rss_kib:.2f}"
    print("\n" + line + "  (flat memory: the RSS factors stay near 1 while the database grows)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or bb.ROOT / "bench" / "results" / f"rss-{stamp}.json"
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="backstop-rss-", dir="/tmp")) if temporary else args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs" / stamp
    print(f"workdir {workdir}")
    cluster = bb.start_cluster(workdir)
    try:
        passphrase = bb.write_passphrase(workdir)
        db_bytes: dict[str, int] = {}
        for s in args.size:
            print(f"data set {s.db}:")
            bb.ensure_database(cluster, workdir, s.db, s.scale, s.claims, logs / f"build-{s.db}.log")
            db_bytes[s.db] = bb.database_bytes(cluster.dsn(s.db))
            print(f"  {bb.human(db_bytes[s.db])}")
        samples: list[Sample] = []
        for rnd in range(args.rounds):
            for s in args.size:  # sizes alternate so drift hits each alike
                x = measure(cluster, workdir, passphrase, s, rnd, logs, not args.skip_restore)
                samples.append(x)
                restore = (f"; restore {x.restore_s:.1f} s, peak RSS {x.restore_rss_kib / 1024:.0f} MiB"
                           if x.restore_rss_kib is not None and x.restore_s is not None else "")
                print(f"  [{rnd + 1}/{args.rounds}] {s.db:<24} backup {x.backup_s:.1f} s, "
                      f"peak RSS {x.backup_rss_kib / 1024:.0f} MiB{restore}", flush=True)
        rows = summarize(args.size, db_bytes, samples)
        print_table(rows)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"started": stamp, "environment": bb.environment(cluster),
                                   "summary": [asdict(r) for r in rows], "samples": [asdict(x) for x in samples]},
                                  indent=1) + "\n")
        print(f"raw numbers: {out}")
        return 0
    except bb.CommandFailed as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
