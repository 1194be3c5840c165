#!/usr/bin/env python3
"""Backstop against pg_dump on one private PostgreSQL cluster, in one run.

Phases (each alternates the commands round by round, A B A B ..., because the
VM's speed drifts by up to 2x within minutes; see /work/shared/BASELINE.md):

  full     `backstop backup` into a fresh repository each round, against
           `pg_dump -Fc -Z0 | zstd -3 -T1`, `pg_dump -Fd -Z0 -j2` and,
           with --with-zlib, `pg_dump -Fc` (zlib);
  repeat   a second backup of the unchanged database into the last full
           round's repository, against `pg_dump -Fc -Z0 > /dev/null`;
  restore  `backstop restore` into a new database, against
           `pg_restore -j2` of the last directory-format dump.

Usage: .venv/bin/python bench/backup_bench.py --scale 10 --claims 300000 --rounds 3 --out bench/results/small.json
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/backup_bench.py` from any directory

from core.postgres.cluster import LocalCluster  # noqa: E402
from core.sandbox import warranty  # noqa: E402

DB = "bench"  # the database name in Postgres and in the Backstop config
ZSTD_HINT = "apt-get install -y zstd"
# Tables compared between the source and every restored copy (cheap counts:
# enough to catch a restore that silently lost data).
CHECK_TABLES = ("public.pgbench_accounts", "public.pgbench_history", "warranty.claims", "warranty.cost_entries")


# -- running and measuring commands ------------------------------------------------


class CommandFailed(RuntimeError):
    """A measured command exited non-zero; the message carries its log tail."""


@dataclass(frozen=True)
class Run:
    """Wall time of a command (pipeline) and the peak RSS of each of its processes."""

    wall_s: float
    rss_kib: list[int]
    # With run_pipeline(tree=True): the largest sum of the RSS of every process under the command
    # (sampled every 10 ms), in KiB; None otherwise.
    tree_peak_kib: int | None = None


def child_env() -> dict[str, str]:
    # PG* variables or a BACKSTOP_CONFIG from the caller's shell would point
    # the tools somewhere else than the private cluster.
    # PYTHONDONTWRITEBYTECODE (set in some CI and agent shells) would make every backstop call compile its
    # modules again; an installed backstop reads cached bytecode.
    return {k: v for k, v in os.environ.items()
            if not k.startswith("PG") and k not in ("BACKSTOP_CONFIG", "PYTHONDONTWRITEBYTECODE")}


def log_tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:])


GNU_TIME = "/usr/bin/time"


class RssPoller:
    """Fallback without /usr/bin/time: samples each process's RSS every 10 ms (can miss short peaks)."""

    def __init__(self, pids: Sequence[int]) -> None:
        import psutil  # only needed on machines without GNU time

        self._gone = psutil.Error  # NoSuchProcess, AccessDenied, ZombieProcess
        self._procs = [psutil.Process(pid) for pid in pids]
        self.peak_kib = [0] * len(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            for i, proc in enumerate(self._procs):
                try:
                    self.peak_kib[i] = max(self.peak_kib[i], proc.memory_info().rss // 1024)
                except self._gone:  # exited between samples
                    continue

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


class TreeRssSampler:
    """Peak of the summed RSS of whole process trees, sampled every ``interval`` seconds from /proc.

    Each sample walks /proc for parent links (about 1 ms with ~100 processes), so children that
    come and go (pg_dump, pg_restore) are counted while they live. Pages shared between processes
    (libraries, copy-on-write) count once per process: the sum overstates rather than understates.
    A peak shorter than the interval can be missed; GNU time's per-process figure covers those.
    """

    PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

    def __init__(self, roots: Sequence[int], skip_roots: bool, interval: float = 0.01) -> None:
        self._roots = set(roots)
        self._skip_roots = skip_roots  # the roots are /usr/bin/time wrappers, not part of the command
        self._interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @staticmethod
    def _parents() -> dict[int, int]:
        parents: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
                parents[int(name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
        return parents

    def _tree(self) -> set[int]:
        children: dict[int, list[int]] = {}
        for pid, ppid in self._parents().items():
            children.setdefault(ppid, []).append(pid)
        found: set[int] = set()
        todo = list(self._roots)
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            found.add(pid)
            todo.extend(children.get(pid, ()))
        return found - self._roots if self._skip_roots else found

    def _rss_kib(self, pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * self.PAGE_KIB
        except (OSError, ValueError, IndexError):
            return 0

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            total = sum(self._rss_kib(pid) for pid in self._tree())
            self.peak_kib = max(self.peak_kib, total)
            self.samples += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def _read_gnu_time(path: Path) -> int:
    # GNU time writes "Command exited with non-zero status N" before the
    # figure when the command fails; the figure is always the last line.
    lines = path.read_text().strip().splitlines()
    return int(lines[-1]) if lines and lines[-1].isdigit() else 0


def run_pipeline(stages: Sequence[Sequence[str]], log: Path, stdout_path: Path | None = None, *,
                 env: dict[str, str] | None = None, cwd: Path | None = None, tree: bool = False) -> Run:
    """Run ``stages`` as a shell-like pipeline; wall time and each process's peak RSS.

    ``env`` replaces :func:`child_env` and ``cwd`` sets the working directory (another checkout's CLI).
    With ``tree`` the peak summed RSS of all the pipeline's processes is sampled too (Run.tree_peak_kib);
    the sampling thread costs some CPU, so timed comparisons leave it off.

    RSS comes from `/usr/bin/time -f %M` around each stage. os.wait4 on our
    own children would be wrong: Linux carries the parent's RSS high-water
    mark across vfork+exec, so every child would report at least this
    Python's RSS. time's own fork starts from a 1 MiB process.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    use_time = os.access(GNU_TIME, os.X_OK)
    rss_files = [log.with_suffix(f".rss{i}") for i in range(len(stages))]
    with open(log, "ab") as err, open(stdout_path or os.devnull, "wb") as out:
        err.write(f"$ {' | '.join(' '.join(s) for s in stages)}\n".encode())
        err.flush()
        procs: list[subprocess.Popen[bytes]] = []
        poller: RssPoller | None = None
        sampler: TreeRssSampler | None = None
        t0 = time.perf_counter()
        try:
            prev = None
            for i, argv in enumerate(stages):
                last = i == len(stages) - 1
                cmd = [GNU_TIME, "-f", "%M", "-o", str(rss_files[i]), *argv] if use_time else list(argv)
                p = subprocess.Popen(cmd, stdin=prev if prev is not None else subprocess.DEVNULL,
                                     stdout=out if last else subprocess.PIPE, stderr=err,
                                     env=child_env() if env is None else env, cwd=cwd)
                if prev is not None:
                    prev.close()  # the consumer alone holds the read end, so its death stops the producer
                prev = p.stdout
                procs.append(p)
            if not use_time:
                poller = RssPoller([p.pid for p in procs])
            if tree:
                sampler = TreeRssSampler([p.pid for p in procs], skip_roots=use_time)
            for p in procs:
                p.wait()
            wall = time.perf_counter() - t0
        except BaseException:
            for p in procs:
                if p.returncode is None:
                    p.kill()
                    p.wait()
            raise
        finally:
            rss = poller.stop() if poller else [_read_gnu_time(f) if f.exists() else 0 for f in rss_files]
            tree_kib = sampler.stop() if sampler else None
            for f in rss_files:
                f.unlink(missing_ok=True)
    failed = [(s[0], p.returncode) for s, p in zip(stages, procs, strict=False) if p.returncode != 0]
    if failed:
        name, rc = failed[0]
        raise CommandFailed(f"{Path(name).name} exited with {rc}; log {log}:\n{log_tail(log)}")
    # A peak between two samples still shows in the per-process figure: the tree held at least that.
    return Run(wall, rss, max(tree_kib, *rss) if tree_kib is not None else None)


def tree_bytes(path: Path) -> int:
    """Apparent size of a file or of every file under a directory (`du -sb`)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                continue
    return total


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# -- the source cluster and its data set ---------------------------------------------


def start_cluster(workdir: Path) -> LocalCluster:
    """Create (or reuse) and start the private cluster with default, durable settings."""
    cluster = LocalCluster(data_dir=workdir / "pg")
    # no_sync only skips initdb's own final fsync; the server keeps fsync=on.
    cluster.init(no_sync=True)
    cluster.start()
    return cluster


def sql(dsn: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def build_database(cluster: LocalCluster, db: str, scale: int, claims: int, log: Path) -> float:
    """`pgbench -i -s scale` plus ``claims`` warranty claims in a new database; returns seconds taken."""
    t0 = time.perf_counter()
    pgbench = cluster.bin_dir / "pgbench"
    if not pgbench.is_file():
        sys.exit(f"error: {pgbench} is missing; install the PostgreSQL server package that ships pgbench")
    cluster.drop_database(db)
    cluster.create_database(db)
    dsn = cluster.dsn(db)
    print(f"  pgbench -i -s {scale} …", flush=True)
    run_pipeline([[str(pgbench), "-i", "-s", str(scale), "-q", dsn]], log)
    print(f"  warranty.generate(claims={claims}) …", flush=True)
    warranty.generate(dsn, claims)
    # Set hint bits and the visibility map now: otherwise the first timed
    # dump would dirty and write every freshly loaded page.
    sql(dsn, "VACUUM (ANALYZE)")
    sql(dsn, "CHECKPOINT")
    return time.perf_counter() - t0


def ensure_database(cluster: LocalCluster, workdir: Path, db: str, scale: int, claims: int, log: Path) -> float:
    """Build the data set unless this workdir already holds the same one (saves minutes at full size)."""
    marker = workdir / f"dataset-{db}.json"
    want = {"db": db, "scale": scale, "claims": claims}
    if marker.exists() and json.loads(marker.read_text()) == want and sql(
            cluster.dsn(), f"SELECT 1 FROM pg_database WHERE datname = '{db}'"):
        print(f"  reusing database {db} (scale {scale}, {claims} claims) from {workdir}")
        return 0.0
    marker.unlink(missing_ok=True)
    seconds = build_database(cluster, db, scale, claims, log)
    marker.write_text(json.dumps(want))
    return seconds


def database_bytes(dsn: str) -> int:
    return int(sql(dsn, "SELECT pg_database_size(current_database())")[0][0])


def table_counts(dsn: str) -> dict[str, int]:
    return {t: int(sql(dsn, f"SELECT count(*) FROM {t}")[0][0]) for t in CHECK_TABLES}


def settle(dsn: str) -> None:
    """Flush what the previous command left dirty, so the next one does not pay for it."""
    sql(dsn, "CHECKPOINT")
    os.sync()


# -- Backstop ------------------------------------------------------------------------


def backstop_bin() -> str:
    exe = Path(sys.executable).with_name("backstop")
    found = str(exe) if exe.exists() else shutil.which("backstop")
    if not found:
        sys.exit("error: no `backstop` script next to this Python; run with the project's .venv/bin/python")
    return found


def write_passphrase(workdir: Path) -> Path:
    path = workdir / "passphrase"
    if not path.exists():
        path.write_text("correct horse battery staple, benchmark only\n")
        path.chmod(0o600)
    return path


def write_config(rdir: Path, cluster: LocalCluster, dbs: Sequence[str], passphrase: Path,
                 workers: int | None, settings: dict[str, Any] | None = None) -> Path:
    """A config with one local target ``rdir/repo`` and its own catalog (so rounds stay independent).

    ``settings``: further top-level keys (e.g. ``jobs``); older Backstop versions refuse keys they do not know.
    """
    rdir.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "catalog": {"url": f"sqlite:///{rdir / 'catalog.db'}"},
        "encryption": {"passphrase_file": str(passphrase)},
        "targets": [{"name": "local", "type": "local", "path": str(rdir / "repo")}],
        # bin_dir pinned: Backstop must run the very pg_dump the comparisons run.
        "databases": [{"name": d, "dsn": cluster.dsn(d), "bin_dir": str(cluster.bin_dir)} for d in dbs],
    }
    if workers is not None:
        cfg["workers"] = workers
    cfg.update(settings or {})
    path = rdir / "backstop.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def backstop(config: Path, args: Sequence[str], log: Path, out: Path, *, cli: Sequence[str] | None = None,
             env: dict[str, str] | None = None, cwd: Path | None = None,
             tree: bool = False) -> tuple[Run, dict[str, Any]]:
    """Run `backstop --config CFG --json ARGS`; returns the run and its JSON output.

    ``cli`` replaces the `backstop` script (e.g. `python -m core.cli` of another checkout, with ``env``
    and ``cwd`` pointing there); ``tree`` as in :func:`run_pipeline`.
    """
    run = run_pipeline([[*(cli or [backstop_bin()]), "--config", str(config), "--json", *args]], log, out,
                       env=env, cwd=cwd, tree=tree)
    text = out.read_text()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise CommandFailed(f"backstop printed no JSON ({text[:200]!r}); log {log}:\n{log_tail(log)}") from None
    return run, doc


def backstop_init(config: Path, log: Path, out: Path, **kw: Any) -> float:
    return backstop(config, ["init"], log, out, **kw)[0].wall_s


# -- measurements and alternation -----------------------------------------------------


@dataclass
class Measurement:
    phase: str
    label: str
    round: int
    wall_s: float
    max_rss_kib: int | None  # largest process of the command (pipeline stages are separate processes)
    stored_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Contender = tuple[str, Callable[[int], Measurement]]


@dataclass
class Bench:
    """Everything the phases share."""

    workdir: Path
    cluster: LocalCluster
    passphrase: Path
    jobs: int
    workers: int | None
    logs: Path
    source_counts: dict[str, int] = field(default_factory=dict)

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(DB)

    def tool(self, name: str) -> str:
        return str(self.cluster.bin_dir / name)

    def log(self, label: str, rnd: int) -> Path:
        return self.logs / f"{label}-{rnd}.log"


def alternate(bench: Bench, contenders: Sequence[Contender], rounds: int) -> list[Measurement]:
    """A B A B …: every round runs each contender once, in the same order."""
    results: list[Measurement] = []
    for rnd in range(rounds):
        for label, fn in contenders:
            settle(bench.dsn)
            m = fn(rnd)
            results.append(m)
            rss = f", peak RSS {m.max_rss_kib / 1024:.0f} MiB" if m.max_rss_kib else ""
            stored = f", {human(m.stored_bytes)}" if m.stored_bytes is not None else ""
            print(f"  [{m.phase} {rnd + 1}/{rounds}] {label:<28} {m.wall_s:7.2f} s{stored}{rss}", flush=True)
    return results


# -- phase: full backup ------------------------------------------------------------------


def full_backstop(bench: Bench, rounds: int) -> Contender:
    def fn(rnd: int) -> Measurement:
        rdir = bench.workdir / "full" / f"r{rnd}"
        remove(rdir)  # a fresh repository: every round is a first, full backup
        cfg = write_config(rdir, bench.cluster, [DB], bench.passphrase, bench.workers)
        init_s = backstop_init(cfg, bench.log("backstop-init", rnd), rdir / "init.json")
        settle(bench.dsn)
        run, doc = backstop(cfg, ["backup", "--db", DB], bench.log("backstop-backup", rnd), rdir / "backup.json")
        m = Measurement("full", "backstop backup", rnd, run.wall_s, max(run.rss_kib), tree_bytes(rdir / "repo"),
                        {"init_s": init_s, "dump_bytes": doc["size_bytes"], "reported_new_bytes": doc["stored_bytes"],
                         "snapshot": doc["id"]})
        if rnd < rounds - 1:
            remove(rdir)  # the last round's repository serves the repeat and restore phases
        return m
    return "backstop backup", fn


def full_zstd(bench: Bench) -> Contender:
    label = "pg_dump -Fc -Z0 | zstd -3"

    def fn(rnd: int) -> Measurement:
        path = bench.workdir / "dumps" / f"zstd-{rnd}.pgdump.zst"
        path.parent.mkdir(parents=True, exist_ok=True)
        run = run_pipeline([[bench.tool("pg_dump"), "-Fc", "-Z0", f"--dbname={bench.dsn}"],
                            ["zstd", "-3", "-T1", "-q"]], bench.log("zstd", rnd), path)
        m = Measurement("full", label, rnd, run.wall_s, max(run.rss_kib), tree_bytes(path))
        remove(path)
        return m
    return label, fn


def dir_dump_path(bench: Bench, rnd: int) -> Path:
    return bench.workdir / "dumps" / f"dir-{rnd}"


def full_dir(bench: Bench, rounds: int) -> Contender:
    label = f"pg_dump -Fd -Z0 -j{bench.jobs}"

    def fn(rnd: int) -> Measurement:
        path = dir_dump_path(bench, rnd)
        remove(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        run = run_pipeline([[bench.tool("pg_dump"), "-Fd", "-Z0", f"-j{bench.jobs}", "-f", str(path),
                             f"--dbname={bench.dsn}"]], bench.log("dir", rnd))
        m = Measurement("full", label, rnd, run.wall_s, max(run.rss_kib), tree_bytes(path))
        if rnd < rounds - 1:
            remove(path)  # the last one is what pg_restore reads in the restore phase
        return m
    return label, fn


def full_zlib(bench: Bench) -> Contender:
    label = "pg_dump -Fc (zlib)"

    def fn(rnd: int) -> Measurement:
        path = bench.workdir / "dumps" / f"zlib-{rnd}.pgdump"
        path.parent.mkdir(parents=True, exist_ok=True)
        run = run_pipeline([[bench.tool("pg_dump"), "-Fc", "-f", str(path), f"--dbname={bench.dsn}"]],
                           bench.log("zlib", rnd))
        m = Measurement("full", label, rnd, run.wall_s, max(run.rss_kib), tree_bytes(path))
        remove(path)
        return m
    return label, fn


# -- phase: repeat backup of the unchanged database ------------------------------------------


def repeat_backstop(bench: Bench, config: Path) -> Contender:
    label = "backstop backup (repeat)"

    def fn(rnd: int) -> Measurement:
        repo = config.parent / "repo"
        before = tree_bytes(repo)
        run, doc = backstop(config, ["backup", "--db", DB], bench.log("backstop-repeat", rnd),
                            config.parent / f"repeat-{rnd}.json")
        return Measurement("repeat", label, rnd, run.wall_s, max(run.rss_kib), tree_bytes(repo) - before,
                           {"reported_new_bytes": doc["stored_bytes"], "dump_bytes": doc["size_bytes"],
                            "snapshot": doc["id"]})
    return label, fn


def repeat_read(bench: Bench) -> Contender:
    label = "pg_dump -Fc -Z0 > /dev/null"

    def fn(rnd: int) -> Measurement:
        run = run_pipeline([[bench.tool("pg_dump"), "-Fc", "-Z0", f"--dbname={bench.dsn}"]], bench.log("devnull", rnd))
        return Measurement("repeat", label, rnd, run.wall_s, max(run.rss_kib))
    return label, fn


# -- phase: restore ------------------------------------------------------------------------------


def check_restored(bench: Bench, db: str) -> bool:
    """Row counts of the restored copy against the source; a mismatch is printed loudly."""
    got = table_counts(bench.cluster.dsn(db))
    if got != bench.source_counts:
        print(f"  WARNING: {db} differs from the source: {got} != {bench.source_counts}", flush=True)
        return False
    return True


def restore_backstop(bench: Bench, config: Path) -> Contender:
    label = "backstop restore"

    def fn(rnd: int) -> Measurement:
        into = f"r_{rnd}"
        bench.cluster.drop_database(into)
        run, doc = backstop(config, ["restore", "--db", DB, "--into", into], bench.log("backstop-restore", rnd),
                            config.parent / f"restore-{rnd}.json")
        ok = check_restored(bench, into)
        bench.cluster.drop_database(into)  # untimed: keeps the cluster at one copy between rounds
        return Measurement("restore", label, rnd, run.wall_s, max(run.rss_kib), None,
                           {"restored_ok": ok, "reported_duration_s": doc["duration_s"], "bytes": doc["bytes"]})
    return label, fn


def restore_pg(bench: Bench, dump_dir: Path) -> Contender:
    label = f"pg_restore -j{bench.jobs} (dir)"

    def fn(rnd: int) -> Measurement:
        into = f"p_{rnd}"
        bench.cluster.drop_database(into)
        # CREATE DATABASE is timed too: `backstop restore` creates its target database.
        t0 = time.perf_counter()
        bench.cluster.create_database(into, template="template0")
        create_s = time.perf_counter() - t0
        run = run_pipeline([[bench.tool("pg_restore"), f"-j{bench.jobs}", f"--dbname={bench.cluster.dsn(into)}",
                             "--exit-on-error", str(dump_dir)]], bench.log("pg_restore", rnd))
        ok = check_restored(bench, into)
        bench.cluster.drop_database(into)
        return Measurement("restore", label, rnd, create_s + run.wall_s, max(run.rss_kib), None,
                           {"restored_ok": ok, "create_s": create_s})
    return label, fn


# -- summary ----------------------------------------------------------------------------------


def human(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def median_or_none(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(results: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Per phase and command: medians, and the median of per-round ratios against Backstop."""
    rows: list[dict[str, Any]] = []
    for phase in dict.fromkeys(m.phase for m in results):
        in_phase = [m for m in results if m.phase == phase]
        ref_label = in_phase[0].label  # Backstop runs first in every phase
        ref = {m.round: m.wall_s for m in in_phase if m.label == ref_label}
        for label in dict.fromkeys(m.label for m in in_phase):
            ms = [m for m in in_phase if m.label == label]
            # Ratios pair each run with the Backstop run of the same round (adjacent in time).
            ratios = [ref[m.round] / m.wall_s for m in ms if m.round in ref and m.wall_s > 0]
            rows.append({
                "phase": phase, "command": label, "runs": len(ms),
                "median_wall_s": statistics.median(m.wall_s for m in ms),
                "min_wall_s": min(m.wall_s for m in ms), "max_wall_s": max(m.wall_s for m in ms),
                "median_ratio_backstop_over_this": statistics.median(ratios) if label != ref_label else None,
                "ratios": ratios if label != ref_label else None,
                "median_stored_bytes": median_or_none([m.stored_bytes for m in ms]),
                "median_peak_rss_kib": median_or_none([m.max_rss_kib for m in ms]),
            })
    return rows


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    head = (f"{'phase':<8} {'command':<28} {'median':>8} {'min–max':>15} {'backstop/x':>10} {'stored':>11}"
            f" {'peak RSS':>9}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        ratio = r["median_ratio_backstop_over_this"]
        rss = r["median_peak_rss_kib"]
        print(f"{r['phase']:<8} {r['command']:<28} {r['median_wall_s']:7.2f}s "
              f"{r['min_wall_s']:6.2f}–{r['max_wall_s']:6.2f}s "
              f"{(f'{ratio:.2f}x' if ratio is not None else '—'):>10} "
              f"{human(r['median_stored_bytes']):>11} {(f'{rss / 1024:.0f} MiB' if rss else '—'):>9}")
    print("backstop/x: median over rounds of (Backstop's wall time / this command's, same round); "
          ">1 means Backstop is slower.")


def environment(cluster: LocalCluster) -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unavailable"
    return {
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "kernel": platform.release(), "pg_dump": version([str(cluster.bin_dir / "pg_dump"), "--version"]),
        "zstd": version(["zstd", "--version"]) if shutil.which("zstd") else None,
        "backstop": version([backstop_bin(), "--version"]),
        "server": str(sql(cluster.dsn(), "SHOW server_version")[0][0]),
        "rss_method": "GNU time %M" if os.access(GNU_TIME, os.X_OK) else "psutil polling every 10 ms",
    }


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10; the baseline is 130)")
    p.add_argument("--claims", type=int, default=300_000, help="warranty claims (default 300000; baseline 3000000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per phase (default 3)")
    p.add_argument("--jobs", type=int, default=2, help="-j for pg_dump -Fd and pg_restore (default 2)")
    p.add_argument("--workers", type=int, help="Backstop's `workers` setting (default: Backstop's own)")
    p.add_argument("--with-zlib", action="store_true", help="also time pg_dump -Fc with zlib (slow)")
    p.add_argument("--workdir", type=Path,
                   help="keep the cluster and data set here and reuse them on the next run (default: a temp dir "
                        "under /tmp, deleted at the end)")
    p.add_argument("--keep", action="store_true", help="do not delete the temporary workdir")
    p.add_argument("--out", type=Path, help="JSON results (default bench/results/backup-<time>.json)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.scale < 1 or args.claims < 1:
        p.error("--rounds, --scale and --claims must be at least 1")
    return args


def zstd_available() -> bool:
    if shutil.which("zstd"):
        return True
    print(f"NOTE: the zstd CLI is not on PATH; skipping `pg_dump | zstd`. Install it with: {ZSTD_HINT}")
    return False


def run_phases(bench: Bench, args: argparse.Namespace) -> list[Measurement]:
    results: list[Measurement] = []
    full: list[Contender] = [full_backstop(bench, args.rounds)]
    if zstd_available():
        full.append(full_zstd(bench))
    full.append(full_dir(bench, args.rounds))
    if args.with_zlib:
        full.append(full_zlib(bench))
    print(f"\nfull backup, {args.rounds} round(s): {' | '.join(label for label, _ in full)}")
    results += alternate(bench, full, args.rounds)

    config = bench.workdir / "full" / f"r{args.rounds - 1}" / "backstop.yaml"
    print(f"\nrepeat backup of the unchanged database into {config.parent / 'repo'}")
    results += alternate(bench, [repeat_backstop(bench, config), repeat_read(bench)], args.rounds)

    print("\nrestore into a new database (row counts checked against the source, untimed)")
    restore = [restore_backstop(bench, config), restore_pg(bench, dir_dump_path(bench, args.rounds - 1))]
    results += alternate(bench, restore, args.rounds)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / "bench" / "results" / f"backup-{stamp}.json"
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="backstop-bench-", dir="/tmp")) if temporary else args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir {workdir}")
    cluster = start_cluster(workdir)
    try:
        bench = Bench(workdir, cluster, write_passphrase(workdir), args.jobs, args.workers, workdir / "logs" / stamp)
        print(f"cluster on port {cluster.port} ({cluster.bin_dir}); building the data set")
        build_s = ensure_database(cluster, workdir, DB, args.scale, args.claims, bench.log("build", 0))
        bench.source_counts = table_counts(bench.dsn)
        db_bytes = database_bytes(bench.dsn)
        print(f"database {DB}: {human(db_bytes)} ({build_s:.0f} s to build); rows {bench.source_counts}")
        # Warm-up (untimed): pulls the tables into the page cache, as in the baseline.
        run_pipeline([[bench.tool("pg_dump"), "-Fc", "-Z0", f"--dbname={bench.dsn}"]], bench.log("warmup", 0))
        results = run_phases(bench, args)
        rows = summarize(results)
        print_table(rows)
        doc = {
            "started": stamp, "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "environment": environment(cluster),
            "database": {"name": DB, "bytes": db_bytes, "build_s": build_s, "row_counts": bench.source_counts},
            "summary": rows, "measurements": [asdict(m) for m in results],
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nraw numbers: {out}\nlogs: {bench.logs}")
        if not all(m.extra.get("restored_ok", True) for m in results):
            print("ERROR: at least one restore did not match the source (see WARNING lines above)")
            return 1
        return 0
    except CommandFailed as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
