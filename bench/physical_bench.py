#!/usr/bin/env python3
"""Issue 10's benchmark: Backstop's physical backups and WAL archiving against pgBackRest, side by side.

One private cluster (wal_level=replica, archive_mode=on) whose archive_command
hands every WAL segment to BOTH tools (`backstop wal-push %p && pgbackrest
archive-push %p`), so each keeps a complete archive. Phases (the two tools
alternate A B A B ..., because the VM's speed drifts by up to 2x within
minutes; see /work/shared/BASELINE.md and bench/README.md):

  full     `backstop backup --type physical` (one repository for every round,
           so only the first round stores everything) against
           `pgbackrest backup --type=full` (zst-3, aes-256-cbc, process-max=2);
  incr     each round appends 5% more claims, then `backstop backup --type
           physical` against `pgbackrest backup --type=incr`: stored bytes;
  restore  `backstop restore --type physical --pgdata DIR` against
           `pgbackrest restore --pg1-path DIR`, into an empty directory, not started;
  walpush  the same copied WAL segments pushed one call at a time by each
           tool (as the server's account, into fresh archives), the calls
           started as PostgreSQL's archiver starts them (archiver.py): per-call
           latency, "paced" (one .ready file at a time) and "batch" (all ready at once);
  load     pgbench flat out for --load-seconds with Backstop alone archiving:
           the .ready backlog and `backstop wal status` recovery-point age, sampled;
  rss      peak RSS of the backup and restore process trees (and of every
           wal-push call and the resident pusher, sampled during the load phase);
           with --rss-scaling also on a second, ~1 GB cluster.

Quick check: .venv/bin/python bench/physical_bench.py --scale 2 --claims 20000 --rounds 1 \
    --load-seconds 20 --segments 4 --out /tmp/physical-tiny.json
The full run is in bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backup_bench as bb  # noqa: E402  (data set, measuring, alternation, summary)
from core.postgres.cluster import LocalCluster  # noqa: E402
from core.sandbox.warranty import append_claims  # noqa: E402
from core.wal.spool import Spool  # noqa: E402
from tests.fixtures.server_account import give_to, let_run_python, wal_push_command  # noqa: E402

DB = bb.DB
STANZA = "bench"
MB = 1_000_000
RSS_LIMIT_BYTES = 300 * MB
PHASES = ("full", "incr", "restore", "walpush", "load", "rss")
PGBACKREST_HINT = "apt-get update && apt-get install -y pgbackrest"
SEGMENT = 16 * 1024 * 1024
# The cluster: archiving on, otherwise PostgreSQL's defaults (fsync on). archive_command is set with
# ALTER SYSTEM (a -c option could not be changed by pg_reload_conf), per phase.
SERVER_SETTINGS = {"wal_level": "replica", "archive_mode": "on", "max_wal_senders": "10"}
PGBR_OPTIONS = {"compress-type": "zst", "compress-level": "3", "repo1-cipher-type": "aes-256-cbc",
                "process-max": "2", "start-fast": "y"}


# -- the server's OS account ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """Runs commands as the cluster's OS user (pgBackRest, wal-push); plain when that is us."""

    owner: tuple[int, int] | None  # (uid, gid) when we are root and the server is not

    def kw(self) -> dict[str, Any]:
        if self.owner is None:
            return {}
        import pwd
        name = pwd.getpwuid(self.owner[0]).pw_name
        return {"user": self.owner[0], "group": self.owner[1], "extra_groups": os.getgrouplist(name, self.owner[1])}

    def give(self, *paths: Path) -> None:
        if self.owner is not None:
            give_to(*self.owner, *paths)

    def run(self, argv: Sequence[str], log: Path, *, cwd: Path | None = None, check: bool = True,
            timeout: float = 3600) -> tuple[float, subprocess.CompletedProcess[bytes]]:
        """Run as the server's account; (wall seconds, the process). Output goes to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"$ {shlex.join(argv)}\n".encode())
            out.flush()
            t0 = time.perf_counter()
            popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     env=bb.child_env(), cwd=cwd or "/", **self.kw())
            # Not subprocess.run(timeout=...): a wait with a timeout polls with sleeps of up to 50 ms, which
            # rounded every wal-push latency up to the next step of 0.06, 0.11, 0.16 s. A plain wait() blocks
            # in waitpid and returns at the exit; a timer enforces the timeout instead.
            watchdog = threading.Timer(timeout, popen.kill)
            watchdog.start()
            try:
                returncode = popen.wait()
            finally:
                watchdog.cancel()
            wall = time.perf_counter() - t0
            proc = subprocess.CompletedProcess(list(argv), returncode)
        if check and proc.returncode != 0:
            raise bb.CommandFailed(f"{Path(argv[0]).name} exited with {proc.returncode}; log {log}:\n"
                                   f"{bb.log_tail(log)}")
        return wall, proc


# The `backstop` that archive_command runs: a regular install (set by --wal-install; None: this venv's).
WAL_BACKSTOP: Path | None = None


def regular_install(workdir: Path) -> Path:
    """This checkout installed the way production installs it (``pip install``, not editable), in its own venv.

    An editable install adds a path finder that every Python start imports through ``site`` (about 10 ms here,
    measured by ``python -X importtime``), a cost PostgreSQL's archiver would pay on each segment only on a
    developer's checkout. The venv is kept in the workdir; Backstop itself is reinstalled at each run.
    """
    venv = workdir / "venv-regular"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([*pip, str(bb.ROOT)], check=True)
    else:
        subprocess.run([*pip, "--no-deps", "--force-reinstall", str(bb.ROOT)], check=True)
    for parent in [venv, *venv.parents]:  # the server's account runs it
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o005)
    return venv / "bin" / "backstop"


def mkdir_for(acct: Account, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    acct.give(path)
    return path


# -- pgBackRest -----------------------------------------------------------------------------------------------


def ensure_pgbackrest(install: bool) -> str:
    found = shutil.which("pgbackrest")
    if found:
        return found
    if not install or os.geteuid() != 0:
        sys.exit(f"error: pgbackrest is not on PATH; install it with: {PGBACKREST_HINT}")
    print(f"pgbackrest is not on PATH: {PGBACKREST_HINT}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "pgbackrest"]):
        if subprocess.run(argv, env=env).returncode != 0:
            sys.exit(f"error: `{' '.join(argv)}` failed; install pgBackRest by hand: {PGBACKREST_HINT}")
    found = shutil.which("pgbackrest")
    if not found:
        sys.exit(f"error: pgbackrest still not on PATH after installing; {PGBACKREST_HINT}")
    return found


@dataclass
class PgBackRest:
    exe: str
    conf: Path
    repo: Path
    acct: Account

    @classmethod
    def create(cls, exe: str, root: Path, cluster: LocalCluster, acct: Account, log: Path) -> PgBackRest:
        """A posix repository under ``root`` with its own config file and stanza (created here)."""
        bb.remove(root)
        for sub in ("repo", "log", "lock", "spool"):
            (root / sub).mkdir(parents=True)
        sock = str(cluster.data_dir) if len(f"{cluster.data_dir}/.s.PGSQL.{cluster.port}") <= 107 else ""
        if not sock:
            raise bb.CommandFailed(f"the cluster's socket path under {cluster.data_dir} is too long for "
                                   "pgBackRest; use a shorter --workdir")
        glob = {"repo1-path": root / "repo", "repo1-cipher-pass": "benchmark-only-cipher-passphrase",
                "repo1-retention-full": "999", "log-path": root / "log", "lock-path": root / "lock",
                "spool-path": root / "spool", "log-level-console": "warn", "log-level-file": "info",
                **PGBR_OPTIONS}
        text = "[global]\n" + "".join(f"{k}={v}\n" for k, v in glob.items())
        text += (f"\n[{STANZA}]\npg1-path={cluster.data_dir}\npg1-port={cluster.port}\n"
                 f"pg1-socket-path={sock}\npg1-user=postgres\n")
        conf = root / "pgbackrest.conf"
        conf.write_text(text)
        conf.chmod(0o600)
        acct.give(root)
        pb = cls(exe, conf, root / "repo", acct)
        pb.run(["stanza-create"], log)
        return pb

    def argv(self, args: Sequence[str]) -> list[str]:
        return [self.exe, f"--config={self.conf}", f"--stanza={STANZA}", *args]

    def run(self, args: Sequence[str], log: Path, **kw: Any) -> float:
        return self.acct.run(self.argv(args), log, **kw)[0]

    def info(self) -> dict[str, Any]:
        out = subprocess.run(self.argv(["info", "--output=json"]), capture_output=True, check=True,
                             env=bb.child_env(), cwd="/", **self.acct.kw()).stdout
        return dict(json.loads(out)[0])

    def last_backup(self) -> dict[str, Any]:
        return dict(self.info()["backup"][-1])

    def archive_command(self) -> str:
        return shlex.join(self.argv(["archive-push"])) + " %p"


# -- Backstop ----------------------------------------------------------------------------------------------


@dataclass
class Backstop:
    """A Backstop repository: the WAL config (the server's account pushes with it) and the operator's config."""

    root: Path
    wal_config: Path
    ops_config: Path
    acct: Account

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def spool(self) -> Spool:
        return Spool(self.root / "wal" / "spool")

    @classmethod
    def create(cls, root: Path, cluster: LocalCluster | None, passphrase: Path, acct: Account, log: Path,
               db: str = DB) -> Backstop:
        bb.remove(root)
        (root / "wal").mkdir(parents=True)
        (root / "ops").mkdir()
        target = [{"name": "local", "type": "local", "path": str(root / "repo")}]
        wpass = root / "wal" / "passphrase"
        shutil.copyfile(passphrase, wpass)
        wpass.chmod(0o600)
        wal_cfg = {"catalog": {"url": f"sqlite:///{root / 'wal' / 'catalog.db'}"},
                   "encryption": {"passphrase_file": str(wpass)}, "targets": target, "databases": [],
                   "wal": {"spool_dir": str(root / "wal" / "spool")}}
        ops_cfg: dict[str, Any] = {
            "catalog": {"url": f"sqlite:///{root / 'ops' / 'catalog.db'}"},
            "encryption": {"passphrase_file": str(passphrase)}, "targets": target,
            "databases": ([{"name": db, "dsn": cluster.dsn(db), "bin_dir": str(cluster.bin_dir)}]
                          if cluster is not None else []),
            "wal": {"spool_dir": str(root / "ops" / "spool")}}
        (root / "wal" / "backstop.yaml").write_text(yaml.safe_dump(wal_cfg, sort_keys=False))
        (root / "ops" / "backstop.yaml").write_text(yaml.safe_dump(ops_cfg, sort_keys=False))
        bs = cls(root, root / "wal" / "backstop.yaml", root / "ops" / "backstop.yaml", acct)
        bb.backstop_init(bs.ops_config, log, root / "ops" / "init.json")
        # The server's account runs wal-push: it owns the WAL config, its passphrase, the spool and the repository.
        acct.give(root / "wal", root / "repo")
        return bs

    def archive_command(self) -> str:
        if WAL_BACKSTOP is None:
            return wal_push_command(self.wal_config)
        return wal_push_command(self.wal_config, WAL_BACKSTOP)

    def stop_pusher(self) -> None:
        """SIGTERM the resident pusher (and fetcher) that wal-push calls started on this repository's spool."""
        for lock in (self.spool.pusher_lock, self.spool.fetcher_lock):
            with contextlib.suppress(OSError):
                pid = self.spool.holder(lock) if os.path.isdir(self.spool.root) else None
                if pid and pid > 0:
                    os.kill(pid, signal.SIGTERM)

    def backup_bytes(self) -> int:
        """The repository without its WAL archive (wal/): what base backups stored."""
        return bb.tree_bytes(self.repo) - bb.tree_bytes(self.repo / "wal")


# -- the cluster --------------------------------------------------------------------------------------------


def set_archive_command(cluster: LocalCluster, command: str) -> None:
    escaped = command.replace("'", "''")
    bb.sql(cluster.dsn(), f"ALTER SYSTEM SET archive_command = '{escaped}'")
    bb.sql(cluster.dsn(), "SELECT pg_reload_conf()")
    time.sleep(0.3)  # the archiver rereads its config on its own time


def set_setting(cluster: LocalCluster, name: str, value: str) -> None:
    bb.sql(cluster.dsn(), f"ALTER SYSTEM SET {name} = '{value}'")
    bb.sql(cluster.dsn(), "SELECT pg_reload_conf()")


def ready_files(cluster: LocalCluster) -> list[str]:
    status = cluster.data_dir / "pg_wal" / "archive_status"
    try:
        return sorted(n[:-6] for n in os.listdir(status) if n.endswith(".ready"))
    except FileNotFoundError:
        return []


def wait_archived(cluster: LocalCluster, timeout: float = 600) -> float:
    """Switch to a new segment and wait until nothing waits to be archived; the seconds it took."""
    t0 = time.perf_counter()
    bb.sql(cluster.dsn(), "SELECT pg_switch_wal()")
    while ready_files(cluster):
        if time.perf_counter() - t0 > timeout:
            failed = bb.sql(cluster.dsn(), "SELECT last_failed_wal, last_failed_time FROM pg_stat_archiver")
            raise bb.CommandFailed(f"WAL is still waiting to be archived after {timeout:.0f} s "
                                   f"(last failure {failed}); see {cluster.log_file}")
        time.sleep(0.2)
    return time.perf_counter() - t0


def start_cluster(root: Path) -> LocalCluster:
    cluster = LocalCluster(data_dir=root / "pg", settings=SERVER_SETTINGS)
    cluster.init(no_sync=True)
    cluster.start()
    # Nothing archives yet (and nothing piles up in pg_wal) until the phases choose a command.
    set_archive_command(cluster, "/bin/true")
    return cluster


# -- RSS of Backstop's detached and short-lived processes -------------------------------------------------


class BackstopRss:
    """Samples /proc every ``interval`` s for backstop processes nobody here waits for: wal-push calls
    (started by the server's archive_command), the resident pusher, `wal status`. Peak RSS per kind.

    Only processes whose command line names ``mine`` (this run's directory: every config and spool path
    does) count, so Backstop processes of other runs or test suites on the machine are left out.
    """

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, mine: str, interval: float = 0.02) -> None:
        self._mine = mine.encode()
        self.peak: dict[str, int] = {}
        self.seen: dict[str, set[int]] = {}
        self._kind: dict[int, str | None] = {}
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @staticmethod
    def classify(cmdline: bytes) -> str | None:
        args = cmdline.split(b"\0")
        text = b" ".join(args)
        if b"core.wal.pusher" in text:
            return "resident pusher"
        if b"core.wal.fetcher" in text:
            return "wal fetcher"
        if not any(a.endswith(b"/backstop") or a == b"backstop" for a in args[:3]):
            return None
        if b"wal-push" in args:
            return "wal-push call"
        if b"wal" in args and b"status" in args:
            return "wal status"
        return "other backstop"

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            pids = {int(n) for n in os.listdir("/proc") if n.isdigit()}
            for gone in set(self._kind) - pids:
                del self._kind[gone]
            for pid in pids:
                if pid not in self._kind:
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            cmd = f.read()
                    except OSError:
                        continue
                    if not cmd:
                        continue  # a zombie, or between fork and exec: look again next time
                    self._kind[pid] = self.classify(cmd) if self._mine in cmd else None
                kind = self._kind[pid]
                if kind is None:
                    continue
                try:
                    with open(f"/proc/{pid}/statm", "rb") as f:
                        rss = int(f.read().split()[1]) * self.PAGE
                except (OSError, ValueError, IndexError):
                    continue
                self.peak[kind] = max(self.peak.get(kind, 0), rss)
                self.seen.setdefault(kind, set()).add(pid)

    def stop(self) -> dict[str, dict[str, int]]:
        self._stop.set()
        self._thread.join()
        return {k: {"peak_bytes": v, "processes": len(self.seen.get(k, ()))} for k, v in self.peak.items()}


# -- shared state ----------------------------------------------------------------------------------------------


@dataclass
class PBench(bb.Bench):
    acct: Account = field(default_factory=lambda: Account(None))
    pgbr_exe: str = "pgbackrest"
    bs: Backstop | None = None
    pb: PgBackRest | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.workdir / "physical"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"  # repositories and restores of this run (deleted at the end)

    def combined(self) -> str:
        assert self.bs is not None and self.pb is not None
        # Backstop first: pg_basebackup -X none (Backstop's backup) waits for the whole command, pgBackRest's
        # archive-check only for its own push; this way each backup waits for both pushes of its last segment.
        return f"{self.bs.archive_command()} && {self.pb.archive_command()}"

    def scratch(self, name: str) -> Path:
        return self.run_dir / name


# -- phases: full and incremental backups ---------------------------------------------------------------------


def backstop_backup(bench: PBench, phase: str, tag: str) -> bb.Contender:
    label = "backstop backup --type physical"

    def fn(rnd: int) -> bb.Measurement:
        bs = bench.bs
        assert bs is not None
        before = bs.backup_bytes()
        run, doc = bb.backstop(bs.ops_config, ["backup", "--db", DB, "--type", "physical"],
                               bench.log(f"backstop-{tag}", rnd), bs.root / "ops" / f"{tag}-{rnd}.json")
        stored = bs.backup_bytes() - before
        return bb.Measurement(phase, label, rnd, run.wall_s, max(run.rss_kib), stored,
                              {"snapshot": doc.get("id"), "reported": {k: doc.get(k) for k in (
                                  "size_bytes", "stored_bytes", "status", "start_lsn", "stop_lsn")}})
    return label, fn


def pgbackrest_backup(bench: PBench, phase: str, kind: str) -> bb.Contender:
    label = f"pgbackrest backup --type={kind}"

    def fn(rnd: int) -> bb.Measurement:
        pb = bench.pb
        assert pb is not None
        wall = pb.run(["backup", f"--type={kind}"], bench.log(f"pgbackrest-{kind}", rnd))
        last = pb.last_backup()
        stored = bb.tree_bytes(pb.repo / "backup" / STANZA / last["label"])
        return bb.Measurement(phase, label, rnd, wall, None, stored,
                              {"label": last["label"], "type": last["type"],
                               "info_repository": last.get("info", {}).get("repository"),
                               "info_size": last.get("info", {}).get("size")})
    return label, fn


def append_round(bench: PBench, base_claims: int) -> int:
    """Untimed: 5% of the first claim count appended to warranty.claims, then VACUUM ANALYZE and CHECKPOINT (so
    neither backup of the round meets pages the other did not: hint bits, visibility map)."""
    now = int(bb.sql(bench.dsn, "SELECT count(*) FROM warranty.claims")[0][0])
    added = append_claims(bench.dsn, 0.05 * base_claims / max(now, 1), seed=int(time.time()))
    bb.sql(bench.dsn, "VACUUM (ANALYZE)")
    bb.sql(bench.dsn, "CHECKPOINT")
    return added


# -- phase: restore -------------------------------------------------------------------------------------------


def restore_backstop(bench: PBench) -> bb.Contender:
    label = "backstop restore --type physical"

    def fn(rnd: int) -> bb.Measurement:
        bs = bench.bs
        assert bs is not None
        target = bench.scratch("restore") / f"backstop-{rnd}"
        bb.remove(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        run, doc = bb.backstop(bs.ops_config, ["restore", "--db", DB, "--type", "physical", "--pgdata", str(target)],
                               bench.log("backstop-restore", rnd), bs.root / "ops" / f"restore-{rnd}.json")
        size = bb.tree_bytes(target)
        ok = (target / "global" / "pg_control").is_file()
        bb.remove(target)
        return bb.Measurement("restore", label, rnd, run.wall_s, max(run.rss_kib), None,
                              {"restored_bytes": size, "restored_ok": ok, "reported": doc})
    return label, fn


def restore_pgbackrest(bench: PBench) -> bb.Contender:
    label = "pgbackrest restore"

    def fn(rnd: int) -> bb.Measurement:
        pb = bench.pb
        assert pb is not None
        target = bench.scratch("restore") / f"pgbackrest-{rnd}"
        bb.remove(target)
        mkdir_for(bench.acct, target)
        target.chmod(0o700)
        wall = pb.run(["restore", f"--pg1-path={target}"], bench.log("pgbackrest-restore", rnd))
        size = bb.tree_bytes(target)
        ok = (target / "global" / "pg_control").is_file()
        bb.remove(target)
        return bb.Measurement("restore", label, rnd, wall, None, None, {"restored_bytes": size, "restored_ok": ok})
    return label, fn


# -- phase: wal-push latency ----------------------------------------------------------------------------------


def segment_ok(path: Path) -> bool:
    """The file's first page is the start of the segment its name says (not a recycled, renamed file)."""
    name = path.name
    log, seg = int(name[8:16], 16), int(name[16:24], 16)
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 16 or path.stat().st_size != SEGMENT:
        return False
    pageaddr = struct.unpack_from("<Q", head, 8)[0]
    return bool(pageaddr == (log << 32) + seg * SEGMENT)


def spoil_dataset(bench: PBench) -> None:
    """pgbench is about to write into the data set: the next run builds it again.

    A reused data set pgbench has updated (dead tuples, a grown history table) is not the baseline's any
    more: a full backup of it stored 1.009x pgBackRest's bytes where the fresh one stores 0.997x, and the
    first incremental after it twice the usual.
    """
    (bench.root / f"dataset-{DB}.json").unlink(missing_ok=True)


def make_segments(bench: PBench, count: int, timeout: float = 600) -> list[Path]:
    """``count`` full WAL segments of pgbench traffic, copied out of pg_wal (archived as usual meanwhile)."""
    out = mkdir_for(bench.acct, bench.scratch("segments"))
    spoil_dataset(bench)
    bb.sql(bench.dsn, "CHECKPOINT")  # full-page writes again, as after every checkpoint; no recycling soon
    first = str(bb.sql(bench.dsn, "SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0])
    start_lsn = bb.sql(bench.dsn, "SELECT pg_current_wal_lsn()")[0][0]
    pgbench = subprocess.Popen([bench.tool("pgbench"), "-n", "-c", "2", "-j", "2", "-T", str(int(timeout)),
                                bench.dsn], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=bb.child_env())
    try:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            done = int(bb.sql(bench.dsn, f"SELECT (pg_current_wal_lsn() - '{start_lsn}'::pg_lsn)::bigint")[0][0])
            if done >= (count + 1) * SEGMENT:
                break
            time.sleep(0.5)
    finally:
        pgbench.send_signal(signal.SIGINT)
        try:
            pgbench.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pgbench.kill()
            pgbench.wait()
    last = str(bb.sql(bench.dsn, "SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0])
    wal = bench.cluster.data_dir / "pg_wal"
    names = sorted(n for n in os.listdir(wal) if len(n) == 24 and first < n < last)[:count]
    copied = []
    for n in names:
        shutil.copyfile(wal / n, out / n)
        if segment_ok(out / n):
            copied.append(out / n)
    if len(copied) < min(count, 2):
        raise bb.CommandFailed(f"could only copy {len(copied)} whole WAL segment(s) out of pg_wal ({first}..{last})")
    bench.acct.give(out)
    return copied


@dataclass
class PushRun:
    tool: str
    mode: str  # paced | batch
    round: int
    latencies_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.latencies_s)


def push_sequence(bench: PBench, tool: str, mode: str, rnd: int, segments: Sequence[Path]) -> PushRun:
    """What PostgreSQL's archiver does: one call per segment, in order, .ready renamed to .done after success.

    Into a fresh archive each time (so every push really stores). "batch": every .ready exists from the start
    (a backlog); "paced": each .ready appears just before its call (segments arriving one by one).
    """
    base = bench.scratch("walpush") / f"{tool}-{mode}-{rnd}"
    bb.remove(base)
    pgdata = base / "pgdata"
    status = pgdata / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    for s in segments:
        os.link(s, pgdata / "pg_wal" / s.name)  # hard links: a copy would cost page cache and time
    if mode == "batch":
        for s in segments:
            (status / f"{s.name}.ready").touch()
    bench.acct.give(pgdata)
    log = bench.log(f"walpush-{tool}-{mode}", rnd)
    if tool == "backstop":
        bs = Backstop.create(base / "backstop", None, bench.passphrase, bench.acct, log)
        command = bs.archive_command()
    else:
        assert bench.pb is not None
        pb = PgBackRest.create(bench.pgbr_exe, base / "pgbackrest", bench.cluster, bench.acct, log)
        command = pb.archive_command()
    out = pgdata / "latencies.json"  # pgdata: the server's account owns it
    bb.settle(bench.dsn)
    try:
        # The calls start from a small process of the server's account, as the archiver's do (archiver.py).
        bench.acct.run([sys.executable, str(Path(__file__).with_name("archiver.py")), "--command", command,
                        "--pgdata", str(pgdata), "--mode", mode, "--out", str(out), *(s.name for s in segments)],
                       log, cwd=pgdata)
        lat = [float(x) for x in json.loads(out.read_text())]
    finally:
        if tool == "backstop":
            bs.stop_pusher()
    bb.remove(base)
    return PushRun(tool, mode, rnd, lat)


def walpush_phase(bench: PBench, rounds: int, count: int) -> tuple[list[PushRun], int]:
    segments = make_segments(bench, count)
    print(f"  {len(segments)} segments of pgbench WAL copied ({segments[0].name} .. {segments[-1].name})", flush=True)
    runs: list[PushRun] = []
    for rnd in range(rounds):
        for mode in ("paced", "batch"):
            for tool in ("backstop", "pgbackrest"):
                r = push_sequence(bench, tool, mode, rnd, segments)
                runs.append(r)
                print(f"  [walpush {rnd + 1}/{rounds}] {tool:<10} {mode:<5} median {r.median_s * 1000:6.0f} ms, "
                      f"first {r.latencies_s[0] * 1000:5.0f} ms, max {max(r.latencies_s) * 1000:5.0f} ms, "
                      f"total {sum(r.latencies_s):6.2f} s", flush=True)
    n = len(segments)
    bb.remove(bench.scratch("segments"))
    return runs, n


def walpush_summary(runs: Sequence[PushRun]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("paced", "batch"):
        per: dict[str, Any] = {}
        for tool in ("backstop", "pgbackrest"):
            mine = [r for r in runs if r.tool == tool and r.mode == mode]
            if not mine:
                continue
            every = [x for r in mine for x in r.latencies_s]
            per[tool] = {"median_s": statistics.median(every), "first_call_median_s":
                         statistics.median(r.latencies_s[0] for r in mine),
                         "later_calls_median_s": statistics.median(x for r in mine for x in r.latencies_s[1:])
                         if any(len(r.latencies_s) > 1 for r in mine) else None,
                         "max_s": max(every), "calls": len(every)}
        b = {r.round: r.median_s for r in runs if r.tool == "backstop" and r.mode == mode}
        p = {r.round: r.median_s for r in runs if r.tool == "pgbackrest" and r.mode == mode}
        ratios = [b[k] / p[k] for k in sorted(b) if k in p and p[k] > 0]
        per["ratios"] = ratios
        per["median_ratio"] = statistics.median(ratios) if ratios else None
        out[mode] = per
    return out


# -- phase: steady load ---------------------------------------------------------------------------------------


def wal_status(bench: PBench) -> dict[str, Any] | None:
    """`backstop wal status --json` with the WAL config, as the server's account (it owns that spool)."""
    bs = bench.bs
    assert bs is not None
    proc = subprocess.run([bb.backstop_bin(), "--config", str(bs.wal_config), "wal", "status", "--json",
                           "--pgdata", str(bench.cluster.data_dir)], capture_output=True, env=bb.child_env(),
                          cwd="/", timeout=120, **bench.acct.kw())
    if proc.returncode != 0:
        return None
    try:
        return dict(json.loads(proc.stdout))
    except json.JSONDecodeError:
        return None


def load_phase(bench: PBench, seconds: int, every: float, archive_timeout: int) -> dict[str, Any]:
    bs = bench.bs
    assert bs is not None
    set_setting(bench.cluster, "archive_timeout", str(archive_timeout))
    set_archive_command(bench.cluster, bs.archive_command())  # Backstop alone
    wait_archived(bench.cluster)
    spoil_dataset(bench)
    bb.settle(bench.dsn)
    lsn0 = bb.sql(bench.dsn, "SELECT pg_current_wal_lsn()")[0][0]
    rss = BackstopRss(str(bench.run_dir))
    log = bench.log("load-pgbench", 0)
    log.parent.mkdir(parents=True, exist_ok=True)
    samples: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        pgbench = subprocess.Popen([bench.tool("pgbench"), "-n", "-c", "2", "-j", "2", "-T", str(seconds),
                                    "-P", "10", bench.dsn], stdout=out, stderr=out, env=bb.child_env())
        try:
            while pgbench.poll() is None:
                t = time.perf_counter() - t0
                st = wal_status(bench)
                samples.append({"t_s": round(t, 1), "ready": len(ready_files(bench.cluster)),
                                "newest_age_s": st.get("newest_age_s") if st else None,
                                "status_backlog": len(st["backlog"]) if st and st.get("backlog") is not None
                                else None, "newest": st.get("newest") if st else None})
                s = samples[-1]
                age = f"{s['newest_age_s']:.1f} s" if s["newest_age_s"] is not None else "?"
                print(f"  [load {t:5.0f} s] .ready backlog {s['ready']:3d}, recovery point age {age}", flush=True)
                deadline = t0 + t + every
                while pgbench.poll() is None and time.perf_counter() < deadline:
                    time.sleep(0.1)
        finally:
            if pgbench.poll() is None:
                pgbench.send_signal(signal.SIGINT)
                pgbench.wait()
    lsn1 = bb.sql(bench.dsn, "SELECT pg_current_wal_lsn()")[0][0]
    wal_bytes = int(bb.sql(bench.dsn, f"SELECT ('{lsn1}'::pg_lsn - '{lsn0}'::pg_lsn)::bigint")[0][0])
    drain_t0 = time.perf_counter()
    while ready_files(bench.cluster) and time.perf_counter() - drain_t0 < 600:
        time.sleep(0.2)
    drain_s = time.perf_counter() - drain_t0
    final = wal_status(bench) or {}
    procs = rss.stop()
    text = log.read_text(errors="replace")
    tps = next((line.split("=")[1].split()[0] for line in text.splitlines() if line.startswith("tps =")), None)
    ready = [s["ready"] for s in samples]
    ages = [s["newest_age_s"] for s in samples if s["newest_age_s"] is not None]
    third = max(1, len(ready) // 3)
    growing = len(ready) >= 3 and statistics.mean(ready[-third:]) > statistics.mean(ready[:third]) + 2
    return {"seconds": seconds, "archive_timeout_s": archive_timeout, "pgbench_tps": float(tps) if tps else None,
            "wal_bytes": wal_bytes, "segments": wal_bytes / SEGMENT, "samples": samples,
            "max_backlog": max(ready, default=0), "median_backlog": statistics.median(ready) if ready else None,
            "backlog_growing": growing, "drain_after_s": drain_s,
            "median_recovery_point_age_s": statistics.median(ages) if ages else None,
            "max_recovery_point_age_s": max(ages, default=None),
            "spool_latency": final.get("latency"), "spool_latency_count": final.get("latency_count"),
            "process_rss": procs}


# -- phase: rss -------------------------------------------------------------------------------------------------


@dataclass
class RssSample:
    cluster: str
    cluster_bytes: int
    round: int
    command: str  # backup | restore
    wall_s: float
    tree_peak_kib: int
    largest_process_kib: int


def cluster_bytes(cluster: LocalCluster) -> int:
    return int(bb.sql(cluster.dsn(), "SELECT sum(pg_database_size(datname)) FROM pg_database")[0][0])


def rss_round(bench: PBench, name: str, cluster: LocalCluster, size: int, rnd: int, keep_command: str) -> list[
        RssSample]:
    """One backup into a fresh repository (archiving switched to it meanwhile) and one restore of it."""
    root = bench.scratch("rss") / f"{name}-{rnd}"
    bs = Backstop.create(root, cluster, bench.passphrase, bench.acct, bench.log(f"rss-init-{name}", rnd))
    out = []
    try:
        set_archive_command(cluster, bs.archive_command())
        wait_archived(cluster)
        bb.settle(cluster.dsn(DB))
        run, _ = bb.backstop(bs.ops_config, ["backup", "--db", DB, "--type", "physical"],
                             bench.log(f"rss-backup-{name}", rnd), root / "ops" / "b.json", tree=True)
        out.append(RssSample(name, size, rnd, "backup", run.wall_s, run.tree_peak_kib or 0, max(run.rss_kib)))
        target = root / "restored"
        run, _ = bb.backstop(bs.ops_config, ["restore", "--db", DB, "--type", "physical", "--pgdata", str(target)],
                             bench.log(f"rss-restore-{name}", rnd), root / "ops" / "r.json", tree=True)
        out.append(RssSample(name, size, rnd, "restore", run.wall_s, run.tree_peak_kib or 0, max(run.rss_kib)))
    finally:
        set_archive_command(cluster, keep_command)
        bs.stop_pusher()
        bb.remove(root)
    return out


# -- targets ------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    what: str
    limit: str
    shown: str
    passed: bool | None
    note: str = ""
    value: float | None = None


def ratio(what: str, value: float | None, limit: float, moonshot: float | None = None, note: str = "") -> Target:
    if value is None:
        return Target(what, f"<= {limit:.2f}x", "—", None, "not measured")
    if moonshot is not None:
        note = f"moonshot <= {moonshot:.2f}x: {'PASS' if value <= moonshot else 'MISS'}" + (f"; {note}" if note else "")
    return Target(what, f"<= {limit:.2f}x", f"{value:.3f}x", value <= limit, note, value)


def per_round(results: Sequence[bb.Measurement], phase: str, attr: str) -> list[float]:
    """Backstop / pgBackRest of ``attr`` (wall_s or stored_bytes), per round of ``phase``."""
    ms = [m for m in results if m.phase == phase]
    b = {m.round: getattr(m, attr) for m in ms if m.label.startswith("backstop")}
    p = {m.round: getattr(m, attr) for m in ms if m.label.startswith("pgbackrest")}
    return [b[r] / p[r] for r in sorted(b) if r in p and b[r] is not None and p[r]]


def med(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def targets(results: Sequence[bb.Measurement], walpush: dict[str, Any] | None, load: dict[str, Any] | None,
            rss: Sequence[RssSample]) -> list[Target]:
    out = []
    full_t = per_round(results, "full", "wall_s")
    out.append(ratio("full backup time / pgBackRest full", med(full_t), 1.0, 0.6,
                     f"round 1 (cold repository) {full_t[0]:.3f}x" if full_t else ""))
    full_b = per_round(results, "full", "stored_bytes")
    out.append(ratio("first full backup, stored bytes / pgBackRest", full_b[0] if full_b else None, 1.0,
                     note="round 1 only: later Backstop fulls deduplicate to ~0"))
    incr_b = per_round(results, "incr", "stored_bytes")
    out.append(ratio("backup after +5% claims, stored / pgBackRest incr", med(incr_b), 0.5))
    out.append(ratio("restore time / pgBackRest restore", med(per_round(results, "restore", "wall_s")), 1.0))
    if walpush:
        out.append(ratio("wal-push median latency / archive-push (paced)", walpush["paced"]["median_ratio"], 0.5))
        out.append(ratio("wal-push median latency / archive-push (batch)", walpush["batch"]["median_ratio"], 0.5,
                         note="informative: all .ready at once"))
    else:
        out.append(ratio("wal-push median latency / archive-push", None, 0.5))
    if load:
        out.append(Target(f"backlog, {load['seconds']} s of pgbench (archive_timeout {load['archive_timeout_s']} s)",
                          "not growing", f"max {load['max_backlog']}", not load["backlog_growing"],
                          f"median recovery-point age {fmt_s(load['median_recovery_point_age_s'])}, "
                          f"max {fmt_s(load['max_recovery_point_age_s'])}"))
        for kind, v in sorted(load["process_rss"].items()):
            out.append(Target(f"peak RSS, {kind} (load phase)", "< 300 MB", f"{v['peak_bytes'] / MB:.0f} MB",
                              v["peak_bytes"] < RSS_LIMIT_BYTES, f"{v['processes']} process(es)", v["peak_bytes"]))
    for name in dict.fromkeys(s.cluster for s in rss):
        for cmd in ("backup", "restore"):
            mine = [s for s in rss if s.cluster == name and s.command == cmd]
            if not mine:
                continue
            peak = max(s.tree_peak_kib for s in mine) * 1024
            out.append(Target(f"peak RSS, {cmd} tree, {name} cluster ({mine[0].cluster_bytes / 1e9:.2f} GB)",
                              "< 300 MB", f"{peak / MB:.0f} MB", peak < RSS_LIMIT_BYTES,
                              f"largest process {max(s.largest_process_kib for s in mine) * 1024 / MB:.0f} MB", peak))
    sizes = list(dict.fromkeys(s.cluster for s in rss))
    if len(sizes) == 2:
        a, b = ([max(s.tree_peak_kib for s in rss if s.cluster == n and s.command == "backup") for n in sizes])
        ga, gb = (next(s.cluster_bytes for s in rss if s.cluster == n) for n in sizes)
        f = max(a, b) / max(min(a, b), 1)
        out.append(Target(f"backup RSS flat: {gb / max(ga, 1):.1f}x the data", "<= 1.25x", f"{f:.2f}x", f <= 1.25,
                          "larger / smaller cluster's backup peak", f))
    return out


def fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f} s"


def print_targets(rows: Sequence[Target]) -> None:
    head = f"{'target':<62} {'limit':>12} {'measured':>10}  result"
    print("\n" + head + "\n" + "-" * (len(head) + 20))
    for t in rows:
        result = "—" if t.passed is None else ("PASS" if t.passed else "MISS")
        note = f"  ({t.note})" if t.note else ""
        print(f"{t.what:<62} {t.limit:>12} {t.shown:>10}  {result}{note}")
    print("Ratios: median over rounds of Backstop / pgBackRest in the same round (wall time or stored bytes).")


def print_stored(results: Sequence[bb.Measurement]) -> None:
    print("\nstored bytes per backup (Backstop: repository growth without wal/; pgBackRest: the backup's directory)")
    for m in results:
        if m.stored_bytes is not None:
            print(f"  {m.phase:<5} round {m.round + 1}: {m.label:<34} {bb.human(m.stored_bytes):>11}")


# -- main -----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=130, help="pgbench scale (default 130)")
    p.add_argument("--claims", type=int, default=3_000_000, help="warranty claims (default 3000000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the full, incr, restore and walpush phases")
    p.add_argument("--segments", type=int, default=16, help="WAL segments pushed per walpush sequence (default 16)")
    p.add_argument("--load-seconds", type=int, default=300, help="pgbench flat out in the load phase (default 300)")
    p.add_argument("--archive-timeout", type=int, default=60, help="archive_timeout during the load phase (default 60)")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between load-phase samples (default 5)")
    p.add_argument("--rss-scaling", action="store_true",
                   help="also measure backup/restore RSS on a second cluster of --rss-size (default ~1 GB)")
    p.add_argument("--rss-size", type=parse_size, default=(35, 1_000_000), metavar="SCALE:CLAIMS",
                   help="the second cluster's data set for --rss-scaling (default 35:1000000, ~1 GB)")
    p.add_argument("--rss-rounds", type=int, default=2, help="rounds of the rss phase (default 2)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"subset of {','.join(PHASES)} (default: all)")
    p.add_argument("--wal-install", choices=("regular", "editable"), default="regular",
                   help="the backstop archive_command runs: a regular `pip install` of this checkout in a venv in "
                        "the workdir, as in production (default), or this venv's (editable) one")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install pgbackrest when it is missing")
    p.add_argument("--workdir", type=Path, help="keep the clusters and data sets here and reuse them (default: a "
                                                "temp dir under /var/tmp, deleted at the end)")
    p.add_argument("--keep", action="store_true", help="keep the temporary workdir and this run's repositories")
    p.add_argument("--out", type=Path, help="JSON results (default bench/results/physical.json when --scale >= 100, "
                                            "else bench/results/physical-small-<time>.json)")
    args = p.parse_args(argv)
    if min(args.rounds, args.scale, args.claims, args.rss_rounds, args.load_seconds, args.segments) < 1:
        p.error("--rounds, --scale, --claims, --rss-rounds, --load-seconds and --segments must be at least 1")
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


def build(cluster: LocalCluster, root: Path, scale: int, claims: int, log: Path) -> float:
    set_archive_command(cluster, "/bin/true")  # the load's WAL need not be archived by anyone
    return bb.ensure_database(cluster, root, DB, scale, claims, log)


def run_phases(bench: PBench, args: argparse.Namespace, doc: dict[str, Any]) -> tuple[
        list[bb.Measurement], list[RssSample]]:
    phases = set(args.phases)
    results: list[bb.Measurement] = []
    bs, pb = bench.bs, bench.pb
    assert bs is not None and pb is not None
    if phases & {"full", "incr", "restore"}:
        print(f"\nfull physical backup, {args.rounds} round(s) (one repository each: Backstop's later rounds "
              "deduplicate)", flush=True)
        results += bb.alternate(bench, [backstop_backup(bench, "full", "full"),
                                        pgbackrest_backup(bench, "full", "full")], args.rounds)
    if "incr" in phases:
        print(f"\nbackup after appending 5% of {args.claims} claims, {args.rounds} round(s)", flush=True)
        pair = [backstop_backup(bench, "incr", "incr"), pgbackrest_backup(bench, "incr", "incr")]
        last_id = int(bb.sql(bench.dsn, "SELECT max(id) FROM warranty.claims")[0][0])
        try:
            for rnd in range(args.rounds):
                added = append_round(bench, args.claims)
                print(f"  (+{added} claims, untimed)", flush=True)
                for label, fn in pair:
                    bb.settle(bench.dsn)
                    m = fn(rnd)
                    m.extra["claims_added"] = added
                    results.append(m)
                    print(f"  [incr {rnd + 1}/{args.rounds}] {label:<34} {m.wall_s:7.2f} s, "
                          f"stored {bb.human(m.stored_bytes)}", flush=True)
        finally:
            # The data set is reused by later runs (--workdir): the appended claims go again, and VACUUM
            # truncates the heap pages they filled at the table's end (the indexes keep their pages).
            bb.sql(bench.dsn, f"DELETE FROM warranty.claims WHERE id > {last_id}")
            bb.sql(bench.dsn, "VACUUM (ANALYZE) warranty.claims")
    if "restore" in phases:
        print(f"\nrestore of the latest backup into an empty directory, {args.rounds} round(s) (not started)",
              flush=True)
        results += bb.alternate(bench, [restore_backstop(bench), restore_pgbackrest(bench)], args.rounds)
    if "walpush" in phases:
        print(f"\nwal-push latency: {args.segments} segments per sequence, {args.rounds} round(s), fresh archives, "
              "as the server's account", flush=True)
        runs, n = walpush_phase(bench, args.rounds, args.segments)
        doc["walpush"] = {"segments": n, "summary": walpush_summary(runs), "runs": [asdict(r) for r in runs]}
    if "load" in phases:
        print(f"\nsteady load: pgbench -c 2 -j 2 for {args.load_seconds} s, Backstop alone archiving, "
              f"archive_timeout = {args.archive_timeout} s", flush=True)
        doc["load"] = load_phase(bench, args.load_seconds, args.sample_every, args.archive_timeout)
        set_archive_command(bench.cluster, bench.combined())
    rss: list[RssSample] = []
    if "rss" in phases:
        sizes: list[tuple[str, LocalCluster, int]] = []
        small: LocalCluster | None = None
        if args.rss_scaling:
            scale, claims = args.rss_size
            sroot = bench.root / f"rss-s{scale}-c{claims}"
            sroot.mkdir(parents=True, exist_ok=True)
            print(f"\nsecond cluster for --rss-scaling (scale {scale}, {claims} claims) in {sroot}", flush=True)
            small = start_cluster(sroot)
            build(small, sroot, scale, claims, bench.log("build-small", 0))
            sizes.append((f"s{scale}", small, cluster_bytes(small)))
        sizes.append((f"s{args.scale}", bench.cluster, cluster_bytes(bench.cluster)))
        print(f"\npeak RSS of the backstop process tree, {args.rss_rounds} round(s): backup, then restore, "
              "per cluster (fresh repository each)", flush=True)
        try:
            for rnd in range(args.rss_rounds):
                for name, cl, size in sizes:
                    keep = bench.combined() if cl is bench.cluster else "/bin/true"
                    got = rss_round(bench, name, cl, size, rnd, keep)
                    rss += got
                    print(f"  [rss {rnd + 1}/{args.rss_rounds}] {name} ({size / 1e9:.2f} GB) " + "; ".join(
                        f"{s.command} {s.wall_s:.1f} s, tree {s.tree_peak_kib / 1024:.0f} MiB "
                        f"(largest process {s.largest_process_kib / 1024:.0f} MiB)" for s in got), flush=True)
        finally:
            if small is not None:
                small.stop()
    return results, rss


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or (bb.ROOT / "bench" / "results" / ("physical.json" if args.scale >= 100
                                                        else f"physical-small-{stamp}.json"))
    pgbr = ensure_pgbackrest(not args.no_install)
    temporary = args.workdir is None
    workdir = (Path(tempfile.mkdtemp(prefix="backstop-physical-", dir="/var/tmp")) if temporary
               else args.workdir.absolute())
    root = workdir / "physical"
    root.mkdir(parents=True, exist_ok=True)
    print(f"workdir {workdir}", flush=True)
    if args.wal_install == "regular":
        global WAL_BACKSTOP
        WAL_BACKSTOP = regular_install(workdir)
        print(f"archive_command runs a regular install: {WAL_BACKSTOP}", flush=True)
    cluster = start_cluster(root)
    acct = Account(cluster.owner)
    if cluster.owner is not None:
        let_run_python(cluster.owner[0])
    bench = PBench(workdir, cluster, bb.write_passphrase(workdir), 2, None, workdir / "logs" / stamp,
                   acct=acct, pgbr_exe=pgbr)
    try:
        print(f"cluster on port {cluster.port} ({cluster.bin_dir}), server account {cluster.os_user}; "
              "building the data set", flush=True)
        t0 = time.perf_counter()
        build_s = build(cluster, root, args.scale, args.claims, bench.log("build", 0))
        bench.source_counts = bb.table_counts(bench.dsn)
        db_bytes, all_bytes = bb.database_bytes(bench.dsn), cluster_bytes(cluster)
        print(f"database {DB}: {bb.human(db_bytes)} ({db_bytes / 1e9:.2f} GB; cluster {all_bytes / 1e9:.2f} GB; "
              f"{build_s:.0f} s to build); rows {bench.source_counts}", flush=True)
        bb.remove(bench.run_dir)
        mkdir_for(acct, bench.run_dir)
        bench.bs = Backstop.create(bench.run_dir / "backstop", cluster, bench.passphrase, acct,
                                   bench.log("backstop-init", 0))
        bench.pb = PgBackRest.create(pgbr, bench.run_dir / "pgbackrest", cluster, acct, bench.log("stanza", 0))
        set_archive_command(cluster, bench.combined())
        print(f"archive_command = {bench.combined()}", flush=True)
        wait_archived(cluster, timeout=120)
        # Warm-up (untimed): the relation files into the page cache, as in the baseline.
        bb.run_pipeline([[bench.tool("pg_basebackup"), "-d", cluster.dsn(), "-Ft", "-X", "none", "-c", "fast",
                          "-D", "-"]], bench.log("warmup", 0))
        wait_archived(cluster)
        doc: dict[str, Any] = {
            "started": stamp,
            "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "environment": {**bb.environment(cluster), "pgbackrest": subprocess.run(
                [pgbr, "version"], capture_output=True, text=True).stdout.strip(), "pgbackrest_options": PGBR_OPTIONS,
                "server_account": cluster.os_user},
            "database": {"name": DB, "bytes": db_bytes, "cluster_bytes": all_bytes, "build_s": build_s,
                         "row_counts": bench.source_counts},
        }
        results, rss = run_phases(bench, args, doc)
        rows = bb.summarize(results)
        if rows:
            bb.print_table(rows)
            print_stored(results)
        if "walpush" in doc:
            print("\nwal-push latency per segment (median of every call; first call / later calls):")
            for mode, per in doc["walpush"]["summary"].items():
                for tool in ("backstop", "pgbackrest"):
                    if tool in per:
                        s = per[tool]
                        later = f"{s['later_calls_median_s'] * 1000:.0f} ms" if s["later_calls_median_s"] else "—"
                        print(f"  {mode:<5} {tool:<10} {s['median_s'] * 1000:6.0f} ms  (first "
                              f"{s['first_call_median_s'] * 1000:.0f} ms, later {later}, "
                              f"max {s['max_s'] * 1000:.0f} ms)")
        if "load" in doc:
            ld = doc["load"]
            print(f"\nload: {ld['segments']:.0f} segments in {ld['seconds']} s (tps {ld['pgbench_tps']}), "
                  f".ready backlog max {ld['max_backlog']} median {ld['median_backlog']}, "
                  f"growing: {ld['backlog_growing']}, "
                  f"drained {ld['drain_after_s']:.1f} s after; recovery-point age median "
                  f"{fmt_s(ld['median_recovery_point_age_s'])}, max {fmt_s(ld['max_recovery_point_age_s'])}; "
                  f"spool push latency {ld['spool_latency']}")
        tgts = targets(results, doc.get("walpush", {}).get("summary"), doc.get("load"), rss)
        print_targets(tgts)
        doc.update({"summary": rows, "targets": [asdict(t) for t in tgts],
                    "measurements": [asdict(m) for m in results], "rss": [asdict(s) for s in rss],
                    "elapsed_s": time.perf_counter() - t0})
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nraw numbers: {out}\nlogs: {bench.logs}")
        if not all(m.extra.get("restored_ok", True) for m in results):
            print("ERROR: a restore left no global/pg_control")
            return 1
        return 0
    except bb.CommandFailed as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(Exception):
            set_archive_command(cluster, "/bin/true")  # the repositories go away; a reused cluster must not fail
        if bench.bs is not None:
            bench.bs.stop_pusher()
        cluster.stop()
        if not args.keep:
            shutil.rmtree(bench.run_dir, ignore_errors=True)
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
