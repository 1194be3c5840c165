#!/usr/bin/env python3
"""Issue 9's benchmark: logical snapshots as per-table streams (format 2), against its targets.

Phases (each alternates its commands round by round, A B A B ..., on one private
cluster, because the VM's speed drifts by up to 2x within minutes; see
/work/shared/BASELINE.md and bench/README.md):

  backup   `backstop backup` (this checkout) into a fresh repository each round,
           against the previous single-stream Backstop (`--old-rev`, run from a
           git worktree, also into a fresh repository each round) and
           `pg_dump -Fd -Z0 -jN`;
  restore  `backstop restore` of the whole database, against CREATE DATABASE +
           `pg_restore -jN` of the directory dump;
  table    `backstop restore --table` of the smallest non-empty table (by its
           stored bytes in the snapshot), in the same rounds as the whole
           restore it is compared with;
  rss      peak RSS of the backstop process tree (summed over its processes)
           during one backup and one restore, at the main data set's size and
           at each --rss-size.

Targets: backup <= 1.2x pg_dump -Fd (moonshot 1.0x) and <= 0.6x the old
backup; whole restore <= 1.0x pg_restore; table restore <= 0.05x the whole
restore; peak RSS < 300 MB at ~1 GB and ~3 GB.

Quick check: .venv/bin/python bench/logical_bench.py --scale 3 --claims 50000 --rounds 2 --rss-size 2:20000
The full run is in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backup_bench as bb  # noqa: E402  (cluster, data set, measuring, alternation, summary)
from core.postgres.cluster import LocalCluster  # noqa: E402

DB = bb.DB
OLD_REV = "5018b28"  # the last single-stream ("format 1") logical backup
MB = 1_000_000
RSS_LIMIT_BYTES = 300 * MB
PHASES = ("backup", "restore", "table", "rss")


# -- the previous Backstop, from a git worktree -----------------------------------------------


@dataclass(frozen=True)
class OldBackstop:
    """Another revision's CLI, run as `python -m core.cli` with that checkout first on the import path."""

    root: Path
    commit: str

    @property
    def cli(self) -> list[str]:
        return [sys.executable, "-m", "core.cli"]

    @property
    def env(self) -> dict[str, str]:
        # PYTHONPATH comes before the venv's editable finder (a meta path hook appended after the path
        # finder), so `core` resolves to the worktree, not to this checkout.
        return {**bb.child_env(), "PYTHONPATH": str(self.root)}

    def kw(self) -> dict[str, Any]:
        return {"cli": self.cli, "env": self.env, "cwd": self.root}


@contextmanager
def old_worktree(rev: str) -> Iterator[OldBackstop]:
    """A detached worktree of ``rev``, removed again at the end."""
    tmp = Path(tempfile.mkdtemp(prefix="backstop-old-"))
    root = tmp / "wt"
    git = ["git", "-C", str(bb.ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", "--quiet", str(root), rev], check=True)
    try:
        commit = subprocess.run([*git, "rev-parse", rev], check=True, capture_output=True, text=True).stdout.strip()
        old = OldBackstop(root, commit)
        # The import must really come from the worktree, or the "old" figures would be this checkout's.
        where = subprocess.run([*old.cli[:1], "-c", "import core; print(core.__file__)"], env=old.env,
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        if not Path(where).resolve().is_relative_to(root.resolve()):
            raise RuntimeError(f"the old CLI imports core from {where}, not from the worktree {root}")
        yield old
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(root)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


# -- shared state ----------------------------------------------------------------------------------


@dataclass
class LBench(bb.Bench):
    old: OldBackstop | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # the new Backstop's jobs / restore_jobs

    def new_config(self, rdir: Path, dbs: Sequence[str] = (DB,)) -> Path:
        return bb.write_config(rdir, self.cluster, dbs, self.passphrase, self.workers, self.settings)


def rephase(contender: bb.Contender, phase: str, label: str | None = None) -> bb.Contender:
    """backup_bench's contenders under this bench's phase name."""
    name, fn = contender

    def run(rnd: int) -> bb.Measurement:
        m = fn(rnd)
        m.phase = phase
        m.label = label or m.label
        return m
    return label or name, run


# -- phase: backup ------------------------------------------------------------------------------


def new_repo_dir(bench: LBench, rnd: int | str) -> Path:
    return bench.workdir / "logical" / "new" / f"r{rnd}"


def backup_new(bench: LBench, rounds: int) -> bb.Contender:
    label = "backstop backup"

    def fn(rnd: int) -> bb.Measurement:
        rdir = new_repo_dir(bench, rnd)
        bb.remove(rdir)  # a fresh repository: every round is a first, full backup
        cfg = bench.new_config(rdir)
        init_s = bb.backstop_init(cfg, bench.log("new-init", rnd), rdir / "init.json")
        bb.settle(bench.dsn)
        run, doc = bb.backstop(cfg, ["backup", "--db", DB], bench.log("new-backup", rnd), rdir / "backup.json")
        m = bb.Measurement("backup", label, rnd, run.wall_s, max(run.rss_kib), bb.tree_bytes(rdir / "repo"),
                           {"init_s": init_s, "dump_bytes": doc["size_bytes"], "snapshot": doc["id"],
                            "config": str(cfg)})
        if rnd < rounds - 1:
            bb.remove(rdir)  # the last round's repository serves the restore and table phases
        return m
    return label, fn


def old_label(old: OldBackstop) -> str:
    return f"backstop backup ({old.commit[:7]})"


def backup_old(bench: LBench) -> bb.Contender:
    old = bench.old
    assert old is not None
    label = old_label(old)

    def fn(rnd: int) -> bb.Measurement:
        rdir = bench.workdir / "logical" / "old" / f"r{rnd}"
        bb.remove(rdir)
        # The old config knows no `jobs`; `workers` it has.
        cfg = bb.write_config(rdir, bench.cluster, [DB], bench.passphrase, bench.workers)
        init_s = bb.backstop_init(cfg, bench.log("old-init", rnd), rdir / "init.json", **old.kw())
        bb.settle(bench.dsn)
        run, doc = bb.backstop(cfg, ["backup", "--db", DB], bench.log("old-backup", rnd), rdir / "backup.json",
                               **old.kw())
        m = bb.Measurement("backup", label, rnd, run.wall_s, max(run.rss_kib), bb.tree_bytes(rdir / "repo"),
                           {"init_s": init_s, "dump_bytes": doc["size_bytes"], "snapshot": doc["id"]})
        bb.remove(rdir)
        return m
    return label, fn


# -- phase: restore and table restore ---------------------------------------------------------------


@dataclass(frozen=True)
class TableChoice:
    name: str  # as typed: schema.table
    stream_bytes: int  # the COPY stream's plaintext size
    stored_bytes: int  # its chunks as stored (compressed, sealed)
    source_rows: int
    streams: list[dict[str, Any]]  # every table stream of the snapshot, smallest stored first


def snapshot_streams(config: Path, sid: str) -> list[dict[str, Any]]:
    """Each table stream of a format 2 snapshot: name, plaintext bytes, stored bytes (from the index)."""
    from core.config import load_config
    from core.engine import Engine
    from core.postgres.names import show_relation

    async def read() -> list[dict[str, Any]]:
        async with Engine(load_config(config)) as engine:
            repo = await engine.open_repository()
            manifest = await repo.read_manifest(sid)
            index = await repo.load_index(common=False)
        out = []
        for f in manifest.files:
            if f.relation is None:
                continue
            stored = sum(index.chunks[bytes.fromhex(c)].length for c in f.chunks)
            out.append({"table": show_relation((f.relation[0], f.relation[1])), "stream_bytes": f.size,
                        "stored_bytes": stored, "chunks": len(f.chunks)})
        return out

    streams = asyncio.run(read())
    if not streams:
        raise bb.CommandFailed(f"snapshot {sid[:8]} has no per-table streams: is this checkout format 2?")
    return sorted(streams, key=lambda s: (s["stored_bytes"], s["stream_bytes"], s["table"]))


def choose_table(bench: LBench, config: Path, sid: str, wanted: str | None) -> TableChoice:
    streams = snapshot_streams(config, sid)
    if wanted:
        pick = next((s for s in streams if s["table"] == wanted), None)
        if pick is None:
            raise bb.CommandFailed(f"--table {wanted}: not in the snapshot ({', '.join(s['table'] for s in streams)})")
    else:
        pick = next((s for s in streams if s["stream_bytes"] > 0), None)
        if pick is None:
            raise bb.CommandFailed("every table stream of the snapshot is empty")
    rows = int(bb.sql(bench.dsn, f"SELECT count(*) FROM {pick['table']}")[0][0])
    return TableChoice(pick["table"], pick["stream_bytes"], pick["stored_bytes"], rows, streams)


def restore_table(bench: LBench, config: Path, choice: TableChoice) -> bb.Contender:
    label = "backstop restore --table"

    def fn(rnd: int) -> bb.Measurement:
        into = f"t_{rnd}"
        bench.cluster.drop_database(into)
        run, doc = bb.backstop(config, ["restore", "--db", DB, "--into", into, "--table", choice.name],
                               bench.log("table-restore", rnd), config.parent / f"table-{rnd}.json")
        # Untimed: the table's rows are all there, and nothing but what it needs was restored.
        got = int(bb.sql(bench.cluster.dsn(into), f"SELECT count(*) FROM {choice.name}")[0][0])
        tables = [str(r[0]) for r in bb.sql(bench.cluster.dsn(into),
                  "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                  "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')")]
        ok = got == choice.source_rows
        if not ok:
            print(f"  WARNING: {into}.{choice.name} has {got} rows, the source {choice.source_rows}", flush=True)
        bench.cluster.drop_database(into)
        return bb.Measurement("table", label, rnd, run.wall_s, max(run.rss_kib), None,
                              {"restored_ok": ok, "table": choice.name, "rows": got, "tables_in_db": sorted(tables),
                               "reported_duration_s": doc["duration_s"], "bytes": doc["bytes"]})
    return label, fn


def prepare_restore_inputs(bench: LBench) -> tuple[Path, str, Path]:
    """Without the backup phase: one untimed backup and one directory dump to restore from."""
    rdir = new_repo_dir(bench, "prep")
    bb.remove(rdir)
    cfg = bench.new_config(rdir)
    bb.backstop_init(cfg, bench.log("prep-init", 0), rdir / "init.json")
    _, doc = bb.backstop(cfg, ["backup", "--db", DB], bench.log("prep-backup", 0), rdir / "backup.json")
    dump = bench.workdir / "dumps" / "dir-prep"
    bb.remove(dump)
    dump.parent.mkdir(parents=True, exist_ok=True)
    bb.run_pipeline([[bench.tool("pg_dump"), "-Fd", "-Z0", f"-j{bench.jobs}", "-f", str(dump),
                      f"--dbname={bench.dsn}"]], bench.log("prep-dir", 0))
    return cfg, str(doc["id"]), dump


# -- phase: rss ----------------------------------------------------------------------------------------


@dataclass
class RssSample:
    db: str
    db_bytes: int
    round: int
    command: str  # backup | restore
    wall_s: float
    tree_peak_kib: int  # summed RSS of the process tree, sampled (at least the largest process)
    largest_process_kib: int  # GNU time %M of the largest single process
    restored_ok: bool | None = None


def rss_round(bench: LBench, db: str, db_bytes: int, counts: dict[str, int], rnd: int) -> list[RssSample]:
    rdir = bench.workdir / "logical" / "rss" / f"{db}-r{rnd}"
    bb.remove(rdir)
    cfg = bench.new_config(rdir, [db])
    bb.backstop_init(cfg, bench.log(f"rss-init-{db}", rnd), rdir / "init.json")
    bb.settle(bench.cluster.dsn())
    run, _ = bb.backstop(cfg, ["backup", "--db", db], bench.log(f"rss-backup-{db}", rnd), rdir / "b.json", tree=True)
    out = [RssSample(db, db_bytes, rnd, "backup", run.wall_s, run.tree_peak_kib or 0, max(run.rss_kib))]
    into = f"{db}_rss"
    bench.cluster.drop_database(into)
    bb.settle(bench.cluster.dsn())
    run, _ = bb.backstop(cfg, ["restore", "--db", db, "--into", into], bench.log(f"rss-restore-{db}", rnd),
                         rdir / "r.json", tree=True)
    got = {t: int(bb.sql(bench.cluster.dsn(into), f"SELECT count(*) FROM {t}")[0][0]) for t in counts}
    ok = got == counts
    if not ok:
        print(f"  WARNING: {into} differs from {db}: {got} != {counts}", flush=True)
    bench.cluster.drop_database(into)
    out.append(RssSample(db, db_bytes, rnd, "restore", run.wall_s, run.tree_peak_kib or 0, max(run.rss_kib), ok))
    bb.remove(rdir)
    return out


# -- targets -------------------------------------------------------------------------------------------


@dataclass
class Target:
    what: str
    limit: str
    value: float | None
    shown: str
    passed: bool | None  # None: not measured
    note: str = ""
    ratios: list[float] | None = None


def per_round_ratios(results: Sequence[bb.Measurement], num: tuple[str, str],
                     den: tuple[str, str]) -> list[float]:
    """num/den wall time per round, for (phase, label) pairs measured in the same round."""
    a = {m.round: m.wall_s for m in results if (m.phase, m.label) == num}
    b = {m.round: m.wall_s for m in results if (m.phase, m.label) == den}
    return [a[r] / b[r] for r in sorted(a) if r in b and b[r] > 0]


def ratio_target(what: str, ratios: list[float], limit: float, moonshot: float | None = None) -> Target:
    if not ratios:
        return Target(what, f"<= {limit:.2f}x", None, "—", None, "not measured")
    med = statistics.median(ratios)
    note = ""
    if moonshot is not None:
        note = f"moonshot <= {moonshot:.2f}x: {'PASS' if med <= moonshot else 'MISS'}"
    return Target(what, f"<= {limit:.2f}x", med, f"{med:.3f}x", med <= limit, note, ratios)


def targets(results: Sequence[bb.Measurement], rss: Sequence[RssSample], jobs: int,
            old: OldBackstop | None) -> list[Target]:
    new_b = ("backup", "backstop backup")
    old_rev = old.commit[:7] if old else OLD_REV
    out = [ratio_target(f"backup / pg_dump -Fd -Z0 -j{jobs}",
                        per_round_ratios(results, new_b, ("backup", f"pg_dump -Fd -Z0 -j{jobs}")), 1.2, 1.0),
           ratio_target(f"backup / old single-stream backup ({old_rev})",
                        per_round_ratios(results, new_b, ("backup", old_label(old) if old else "")), 0.6),
           ratio_target(f"whole restore / pg_restore -j{jobs}",
                        per_round_ratios(results, ("restore", "backstop restore"),
                                         ("restore", f"pg_restore -j{jobs} (dir)")), 1.0),
           ratio_target("table restore / whole restore",
                        per_round_ratios(results, ("table", "backstop restore --table"),
                                         ("restore", "backstop restore")), 0.05)]
    for db in dict.fromkeys(s.db for s in rss):
        for cmd in ("backup", "restore"):
            mine = [s for s in rss if s.db == db and s.command == cmd]
            peak = max(s.tree_peak_kib for s in mine) * 1024  # the worst round: a limit, not a typical value
            out.append(Target(f"peak RSS, {cmd} of {db} ({mine[0].db_bytes / 1e9:.2f} GB)", "< 300 MB", peak,
                              f"{peak / MB:.0f} MB", peak < RSS_LIMIT_BYTES,
                              f"largest process {max(s.largest_process_kib for s in mine) * 1024 / MB:.0f} MB"))
    return out


def print_targets(rows: Sequence[Target]) -> None:
    head = f"{'target':<52} {'limit':>10} {'measured':>10}  result"
    print("\n" + head + "\n" + "-" * (len(head) + 20))
    for t in rows:
        result = "—" if t.passed is None else ("PASS" if t.passed else "MISS")
        note = f"  ({t.note})" if t.note else ""
        print(f"{t.what:<52} {t.limit:>10} {t.shown:>10}  {result}{note}")
    print("Ratios: median over rounds of (this command's wall time / the other's, same round). "
          "RSS: the largest sum over backstop's process tree (python + pg_dump/pg_restore), worst round.")


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10; issue 9's is 130)")
    p.add_argument("--claims", type=int, default=300_000, help="warranty claims (default 300000; issue 9's 3000000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the backup and restore phases (default 3)")
    p.add_argument("--jobs", type=int, default=2,
                   help="-j of pg_dump -Fd and pg_restore, and the new Backstop's `jobs` and `restore_jobs` "
                        "(default 2)")
    p.add_argument("--workers", type=int, help="Backstop's `workers` setting, old and new (default: Backstop's own)")
    p.add_argument("--old-rev", default=OLD_REV, help=f"the single-stream Backstop to compare with (default {OLD_REV})")
    p.add_argument("--table", metavar="SCHEMA.TABLE",
                   help="the table the table phase restores (default: the smallest non-empty one, by stored bytes)")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated subset of {','.join(PHASES)} (default: all)")
    p.add_argument("--rss-size", action="append", default=[], type=parse_size, metavar="SCALE:CLAIMS",
                   help="a further data set the rss phase measures, besides the main one (repeatable; "
                        "35:1000000 is ~1 GB)")
    p.add_argument("--rss-rounds", type=int, default=2, help="rounds of the rss phase (default 2)")
    p.add_argument("--workdir", type=Path,
                   help="keep the cluster and data sets here and reuse them on the next run (default: a temp dir "
                        "under /tmp, deleted at the end)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary workdir, and the last repository and directory dump")
    p.add_argument("--out", type=Path, help="JSON results (default bench/results/logical-<time>.json)")
    args = p.parse_args(argv)
    if min(args.rounds, args.scale, args.claims, args.jobs, args.rss_rounds) < 1:
        p.error("--rounds, --scale, --claims, --jobs and --rss-rounds must be at least 1")
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if unknown := set(args.phases) - set(PHASES):
        p.error(f"--phases: unknown {', '.join(sorted(unknown))} (choose from {', '.join(PHASES)})")
    return args


def parse_size(text: str) -> tuple[int, int]:
    try:
        scale, claims = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SCALE:CLAIMS, e.g. 35:1000000, not {text!r}") from None
    return scale, claims


def rss_db_name(scale: int, claims: int) -> str:
    return f"rss_s{scale}_c{claims}"  # as bench/rss_scaling.py names them: a shared workdir reuses them


def run_phases(bench: LBench, args: argparse.Namespace, doc: dict[str, Any]) -> tuple[list[bb.Measurement],
                                                                                     list[RssSample]]:
    results: list[bb.Measurement] = []
    phases = set(args.phases)
    config: Path | None = None
    sid = ""
    dump: Path | None = None
    if "backup" in phases:
        contenders = [backup_new(bench, args.rounds)]
        if bench.old is not None:
            contenders.append(backup_old(bench))
        contenders.append(rephase(bb.full_dir(bench, args.rounds), "backup"))
        print(f"\nbackup, {args.rounds} round(s): {' | '.join(label for label, _ in contenders)}")
        results += bb.alternate(bench, contenders, args.rounds)
        last = [m for m in results if m.label == "backstop backup"][-1]
        config, sid = Path(last.extra["config"]), str(last.extra["snapshot"])
        dump = bb.dir_dump_path(bench, args.rounds - 1)
    if phases & {"restore", "table"}:
        if config is None:
            print("\npreparing (untimed): one backup and one directory dump to restore from")
            config, sid, dump = prepare_restore_inputs(bench)
        assert dump is not None
        contenders = [rephase(bb.restore_backstop(bench, config), "restore")]
        if "restore" in phases:
            contenders.append(rephase(bb.restore_pg(bench, dump), "restore"))
        if "table" in phases:
            choice = choose_table(bench, config, sid, args.table)
            doc["table"] = asdict(choice)
            why = "as --table says" if args.table else f"the smallest non-empty of {len(choice.streams)} table streams"
            print(f"\ntable restore of {choice.name}: {bb.human(choice.stored_bytes)} stored, "
                  f"{bb.human(choice.stream_bytes)} of COPY text, {choice.source_rows} rows ({why})")
            contenders.append(restore_table(bench, config, choice))
        print(f"\nrestore into new databases, {args.rounds} round(s) (row counts checked, untimed): "
              f"{' | '.join(label for label, _ in contenders)}")
        results += bb.alternate(bench, contenders, args.rounds)
    rss: list[RssSample] = []
    if "rss" in phases:
        sizes: list[tuple[str, int, dict[str, int]]] = [(DB, doc["database"]["bytes"], bench.source_counts)]
        for scale, claims in args.rss_size:
            db = rss_db_name(scale, claims)
            print(f"data set {db}:")
            bb.ensure_database(bench.cluster, bench.workdir, db, scale, claims, bench.log(f"build-{db}", 0))
            size = bb.database_bytes(bench.cluster.dsn(db))
            sizes.append((db, size, bb.table_counts(bench.cluster.dsn(db))))
            doc.setdefault("rss_databases", {})[db] = {"scale": scale, "claims": claims, "bytes": size}
            print(f"  {bb.human(size)} ({size / 1e9:.2f} GB)")
        print(f"\npeak RSS of the backstop process tree, {args.rss_rounds} round(s): backup, then restore, per size")
        for rnd in range(args.rss_rounds):
            for db, size, counts in sizes:  # sizes alternate so drift hits each alike
                got = rss_round(bench, db, size, counts, rnd)
                rss += got
                print(f"  [rss {rnd + 1}/{args.rss_rounds}] {db:<22} " + "; ".join(
                    f"{s.command} {s.wall_s:.1f} s, tree {s.tree_peak_kib / 1024:.0f} MiB "
                    f"(largest process {s.largest_process_kib / 1024:.0f} MiB)" for s in got), flush=True)
    return results, rss


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or bb.ROOT / "bench" / "results" / f"logical-{stamp}.json"
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="backstop-logical-", dir="/tmp")) if temporary else args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir {workdir}")
    cluster: LocalCluster | None = None
    with old_worktree(args.old_rev) if "backup" in args.phases else _nothing() as old:
        if old is not None:
            print(f"old Backstop: {old.commit[:10]} in {old.root}")
        cluster = bb.start_cluster(workdir)
        try:
            bench = LBench(workdir, cluster, bb.write_passphrase(workdir), args.jobs, args.workers,
                           workdir / "logs" / stamp, old=old,
                           settings={"jobs": args.jobs, "restore_jobs": args.jobs})
            print(f"cluster on port {cluster.port} ({cluster.bin_dir}); building the data set")
            t0 = time.perf_counter()
            build_s = bb.ensure_database(cluster, workdir, DB, args.scale, args.claims, bench.log("build", 0))
            bench.source_counts = bb.table_counts(bench.dsn)
            db_bytes = bb.database_bytes(bench.dsn)
            print(f"database {DB}: {bb.human(db_bytes)} ({db_bytes / 1e9:.2f} GB; {build_s:.0f} s to build); "
                  f"rows {bench.source_counts}")
            # Warm-up (untimed): pulls the tables into the page cache, as in the baseline.
            bb.run_pipeline([[bench.tool("pg_dump"), "-Fc", "-Z0", f"--dbname={bench.dsn}"]], bench.log("warmup", 0))
            doc: dict[str, Any] = {
                "started": stamp,
                "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "environment": {**bb.environment(cluster), "old_rev": old.commit if old else None,
                                "new_rev": _head()},
                "database": {"name": DB, "bytes": db_bytes, "build_s": build_s, "row_counts": bench.source_counts},
            }
            results, rss = run_phases(bench, args, doc)
            rows = bb.summarize(results)
            if rows:
                bb.print_table(rows)  # backstop/x: the phase's first command (the new Backstop) over each other
            tgts = targets(results, rss, args.jobs, old)
            print_targets(tgts)
            doc.update({"summary": rows, "targets": [asdict(t) for t in tgts],
                        "measurements": [asdict(m) for m in results], "rss": [asdict(s) for s in rss],
                        "elapsed_s": time.perf_counter() - t0})
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=1) + "\n")
            print(f"\nraw numbers: {out}\nlogs: {bench.logs}")
            if not all(m.extra.get("restored_ok", True) for m in results) or not all(
                    s.restored_ok in (None, True) for s in rss):
                print("ERROR: at least one restore did not match the source (see WARNING lines above)")
                return 1
            return 0
        except bb.CommandFailed as exc:
            print(f"\nERROR: {exc}", file=sys.stderr)
            return 1
        finally:
            cluster.stop()
            if not args.keep:
                # Repositories and dumps are made fresh by every run; the cluster and data sets stay in --workdir.
                shutil.rmtree(workdir / "logical", ignore_errors=True)
                for rnd in [*range(args.rounds), "prep"]:
                    shutil.rmtree(workdir / "dumps" / f"dir-{rnd}", ignore_errors=True)
            if temporary and not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _head() -> str:
    return subprocess.run(["git", "-C", str(bb.ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip() + (" (with uncommitted changes)" if subprocess.run(
                              ["git", "-C", str(bb.ROOT), "status", "--porcelain", "--untracked-files=no"],
                              capture_output=True, text=True).stdout.strip() else "")


if __name__ == "__main__":
    sys.exit(main())
