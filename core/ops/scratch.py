"""Private scratch clusters: a restored data directory started where only Backstop can reach it, then removed.

Tables at a moment (core/ops/table_at_moment.py) and physical drills
(core/drills/runner.py) restore a physical snapshot into a 0700 directory
under ``restore.scratch_dir`` (else the system's temp directory), start it
as the server's unprivileged account on a free port, entered only through
a Unix socket in a private directory with a ``trust`` pg_hba.conf of its
own (no TCP listener: the restored copy's own pg_hba.conf would want the
production passwords), and always stop and remove it afterwards.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.context import EngineContext
from core.errors import BackstopError, PostgresError, RestoreRefused
from core.format import size
from core.postgres.cluster import SUPERUSER, LocalCluster, free_port

# Recovery keeps restored WAL in pg_wal until a restartpoint recycles it: up to max_wal_size, by
# default 1 GB, i.e. 64 segments of 16 MiB. The scratch space must hold that beside the snapshot.
WAL_MARGIN_SEGMENTS = 64
SCRATCH_PREFIX = "backstop-scratch-"
_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1
_STOP_TIMEOUT_S = 60.0
# Only the scratch cluster's own socket, in a directory only its account and root can enter.
_SCRATCH_HBA = ("# Written by Backstop for a scratch cluster: Unix socket only, in a private directory.\n"
                "local all all trust\n")


def scratch_root(ctx: EngineContext) -> Path:
    """Where scratch clusters go: ``restore.scratch_dir``, else the system's temp directory."""
    configured = ctx.config.restore.scratch_dir
    return Path(configured).absolute() if configured is not None else Path(tempfile.gettempdir())


def check_space(root: Path, snapshot_bytes: int, seg_size: int, what: str) -> int:
    """Refuse, in one line naming both figures, when ``root`` cannot hold the snapshot plus WAL; returns the need."""
    needed = snapshot_bytes + WAL_MARGIN_SEGMENTS * seg_size
    free = shutil.disk_usage(root).free
    if free < needed:
        raise RestoreRefused(f"not enough scratch space in {root} for {what}: it needs about {needed} bytes "
                             f"({size(needed)}: the snapshot plus WAL) and {free} bytes ({size(free)}) are free; "
                             "free some space or set restore.scratch_dir in the config to a larger disk")
    return needed


@dataclass
class ScratchCluster(LocalCluster):
    """The restored copy, entered as ``role`` through the Unix socket in ``socket_dir`` only."""

    socket_dir: Path = Path("/nonexistent")
    role: str = SUPERUSER

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo("", host=str(self.socket_dir), port=str(self.port), user=self.role, dbname=dbname)


class ScratchSpace:
    """One scratch directory and the cluster restored into it; :meth:`remove` takes both away."""

    def __init__(self, ctx: EngineContext) -> None:
        self.root = scratch_root(ctx)
        self.work: Path | None = None  # the scratch directory: data directory and socket
        self.socket_dir: Path | None = None  # when the work directory's path is too long for a socket
        self.cluster: ScratchCluster | None = None

    def create(self, snapshot_bytes: int, seg_size: int, what: str) -> Path:
        """Make the 0700 scratch directory (room checked first); returns the data directory to restore into."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RestoreRefused(f"cannot use scratch directory {self.root}: {exc.strerror}; set "
                                 "restore.scratch_dir in the config to a writable directory") from None
        check_space(self.root, snapshot_bytes, seg_size, what)
        self.work = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=self.root))  # 0700
        return self.work / "pgdata"

    def cluster_for(self, pgdata: Path, bin_dir: Path | None = None) -> ScratchCluster:
        """The restored data directory as a cluster only we can enter (see the module docstring); not started."""
        assert self.work is not None
        port = free_port()
        sock = self.work
        if len(f"{sock}/.s.PGSQL.{port}") > _SOCKET_PATH_MAX:
            sock = self.socket_dir = Path(tempfile.mkdtemp(prefix="backstop-sock-", dir="/tmp"))
        hba = pgdata / "pg_hba.conf"
        hba.unlink(missing_ok=True)
        hba.write_text(_SCRATCH_HBA)
        hba.chmod(0o600)
        settings = {
            "hba_file": str(hba),  # the copy's postgresql.conf may name the production one
            "listen_addresses": "",  # no TCP at all
            "unix_socket_directories": str(sock),
            "logging_collector": "off",  # recovery is followed in server.log (core/postgres/recovery.py)
            "log_destination": "stderr",
            "ssl": "off",  # production certificates may live outside the data directory
            "shared_buffers": "128MB",  # production's may not fit beside it on this host
            "huge_pages": "try",
            "hot_standby": "on",  # a paused recovery must be readable
            "synchronous_standby_names": "",
            "archive_mode": "off",  # also in the recovery settings: never into the source's archive
        }
        # bin_dir None: the binaries matching the restored data directory's version.
        cluster = self.cluster = ScratchCluster(pgdata, port=port, bin_dir=bin_dir,  # type: ignore[arg-type]
                                                settings=settings, socket_dir=sock)
        if cluster.owner is not None:
            for p in (hba, sock):
                os.chown(p, *cluster.owner)
        return cluster

    def remove(self, warn: Callable[[str], None]) -> bool:
        """Stop the cluster and remove the directories, whatever happened (synchronous: runs when cancelled);
        True when nothing is left."""
        if self.cluster is not None:
            stop_cluster(self.cluster)
        gone = True
        for d in (self.work, self.socket_dir):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
                if d.exists():
                    gone = False
                    warn(f"scratch directory {d} could not be removed completely; remove it by hand")
        return gone


def stop_cluster(cluster: LocalCluster) -> None:
    """Stop fast; if pg_ctl cannot, end the postmaster itself (immediate shutdown), so nothing outlives us."""
    try:
        cluster.stop(timeout=_STOP_TIMEOUT_S)
        return
    except BackstopError:
        pass
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((cluster.data_dir / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown: children end with it
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # ProcessLookupError (an OSError) once it is gone
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


async def login_role(cluster: ScratchCluster, live_dsn: str, dbname: str) -> str:
    """A role that exists in the restored copy: the usual superuser, the dsn's role, or this OS user's."""
    candidates = [SUPERUSER, str(conninfo_to_dict(live_dsn).get("user") or ""), getpass.getuser(), cluster.os_user]
    tried: list[str] = []
    for role in dict.fromkeys(c for c in candidates if c):
        tried.append(role)
        try:
            conn = await psycopg.AsyncConnection.connect(
                make_conninfo(cluster.dsn(dbname), user=role), connect_timeout=10, autocommit=True)
        except psycopg.OperationalError:
            continue
        await conn.close()
        return role
    raise PostgresError(f"cannot log in to the scratch cluster as any of {', '.join(tried)}; put the role backups "
                        "use into the database's dsn (user=...)")
