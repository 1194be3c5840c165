"""The resident WAL pusher: ``python -m core.wal.pusher --config PATH --spool DIR`` (started by wal-push).

It holds the repository open (one scrypt, warm connections), answers
wal-push calls on the spool's Unix socket and, between them, pushes the
files PostgreSQL has marked ready (``pg_wal/archive_status/*.ready``)
``wal.push_ahead`` at a time, recording each one stored on every target in
the spool, so the call for it later finds the record and returns at once.
It watches ``archive_status`` (core/wal/watch.py), so a push starts when
PostgreSQL marks the file ready, while the archiver's call for it is still
starting up; and it remembers the files it stored (their stat), so a call
for one is answered without reading and hashing the file again.

Nothing it does acknowledges anything to PostgreSQL: only a wal-push call
does, from a record written after the object was read back everywhere. A
SIGKILL therefore loses nothing: PostgreSQL calls again and that call pushes
by itself or starts a new pusher. It exits after ``IDLE_EXIT_S`` without
work, and when its config file changes (the next call starts a fresh one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

from core.config import BackstopConfig, load_config
from core.errors import BackstopError
from core.ops.wal import open_archive, push_path, segment_sort_key
from core.repository.wal import WalArchive
from core.wal.spool import Spool, config_tag, helper_spool
from core.wal.watch import DirWatch, open_watch

IDLE_EXIT_S = 300.0
SCAN_INTERVAL_S = 0.25
REOPEN_EVERY_S = 600.0  # re-read keys now and then: a DEK rotation must reach new WAL objects
RECORD_DAYS = 7
# A file changed less than this before it was read could change again without its ctime moving (the kernel
# stamps files from a coarse clock): its stat is not trusted later, the call's answer hashes it again.
_RACY_NS = 50_000_000
_STORED_KEEP = 10_000
_BACKOFF_S = (1.0, 5.0, 15.0, 60.0)


_StatKey = tuple[int, int, int, int, int]


def _stat_key(path: Path) -> _StatKey | None:
    """What changes when a file is replaced or written: device, inode, size, mtime and ctime."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _config_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class Pusher:
    """One pusher process serving one spool."""

    def __init__(self, config_path: Path, spool: Spool, config: BackstopConfig) -> None:
        self.config_path = config_path
        self.stamp = _config_stamp(config_path)
        self.spool = spool
        self.config = config
        self.push_ahead = config.wal.push_ahead
        self._archive: WalArchive | None = None
        self._opened_at = 0.0
        self._open_lock = asyncio.Lock()
        self.inflight: dict[str, asyncio.Task[tuple[bool, str]]] = {}
        self.failures: dict[str, tuple[int, float]] = {}  # name -> (attempts, retry not before)
        self.wal_dirs: set[Path] = set()
        # Files this process stored, by name: the stat they had when read. A call for one whose stat is
        # unchanged is answered without reading and hashing 16 MiB again (the spool's record says stored).
        self.stored: dict[str, _StatKey] = {}
        self.watch: DirWatch | None = None
        pgdata = spool.pgdata()
        if pgdata:
            self.wal_dirs.add(Path(pgdata) / "pg_wal")
        self.last_work = time.monotonic()
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()

    async def archive(self) -> WalArchive:
        async with self._open_lock:
            if self._archive is None or time.monotonic() - self._opened_at > REOPEN_EVERY_S:
                old = self._archive
                self._archive = await open_archive(self.config)
                self._opened_at = time.monotonic()
                if old is not None:
                    await asyncio.gather(*(s.close() for s in old.repo.storages), return_exceptions=True)
            return self._archive

    # -- pushing -------------------------------------------------------------------------------------------

    def push(self, path: Path) -> asyncio.Task[tuple[bool, str]]:
        """The (shared) task pushing ``path``; a second request for the same file waits on the first."""
        task = self.inflight.get(path.name)
        if task is None:
            task = asyncio.ensure_future(self._push(path))
            self.inflight[path.name] = task

            def done(_: asyncio.Task[tuple[bool, str]], name: str = path.name) -> None:
                self.inflight.pop(name, None)
                self.wake.set()  # a slot is free: the next ready file starts now, not at the next scan

            task.add_done_callback(done)
        return task

    def known(self, path: Path) -> bool:
        """Whether this process stored ``path`` and the file has not changed since (no read needed)."""
        key = self.stored.get(path.name)
        return key is not None and key == _stat_key(path) and self.spool.record(path.name) is not None

    async def _push(self, path: Path) -> tuple[bool, str]:
        self.last_work = time.monotonic()
        name = path.name
        try:
            if self.known(path) or await asyncio.to_thread(self.spool.matches, name, path):
                return True, "already pushed"
            t0 = time.monotonic()
            before = _stat_key(path)
            read_at = time.time_ns()
            result = await push_path(await self.archive(), path, self.spool)
            if before is not None and before == _stat_key(path) and before[4] < read_at - _RACY_NS:
                if len(self.stored) >= _STORED_KEEP:
                    self.stored.clear()  # a long backlog's worth; older names are not asked for again
                self.stored[name] = before
        except BackstopError as exc:
            attempts = self.failures.get(name, (0, 0.0))[0] + 1
            self.failures[name] = (attempts, time.monotonic() + _BACKOFF_S[min(attempts, len(_BACKOFF_S)) - 1])
            self.spool.log_line(f"push of {name} failed: {exc}")
            return False, str(exc)
        except Exception as exc:  # noqa: BLE001  (a bug must reach the caller as one line, not kill the pusher)
            self.spool.log_line(f"push of {name} failed: {type(exc).__name__}: {exc}")
            return False, f"{type(exc).__name__}: {exc}; see {self.spool.log}"
        self.failures.pop(name, None)
        what = "stored" if result.stored else "already archived"
        self.spool.log_line(f"{name}: {what} ({result.size} bytes -> {result.sealed_size}) "
                            f"in {time.monotonic() - t0:.3f}s")
        return True, what

    def ready_files(self) -> list[Path]:
        """Files PostgreSQL has marked ready and nobody has pushed yet, in archiving order."""
        found: list[Path] = []
        for wal_dir in self.wal_dirs:
            try:
                names = [e.name[:-6] for e in os.scandir(wal_dir / "archive_status") if e.name.endswith(".ready")]
            except OSError:
                continue
            found += [wal_dir / n for n in names if n not in self.stored and self.spool.record(n) is None]
        found.sort(key=lambda p: segment_sort_key(p.name))
        return found

    def work_ahead(self) -> int:
        """Start pushes of ready files, up to ``push_ahead`` at once; the number of ready files seen."""
        ready = self.ready_files()
        now = time.monotonic()
        for path in ready:
            if len(self.inflight) >= self.push_ahead:
                break
            if path.name in self.inflight or self.failures.get(path.name, (0, 0.0))[1] > now:
                continue
            self.push(path)
        return len(ready)

    # -- serving -------------------------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).decode(errors="replace").strip()
            if not line.startswith("PUSH /"):
                writer.write(b"ERR bad request (expected PUSH <absolute path>)\n")
                return
            path = Path(line[5:])
            self.learn(path.parent)
            self.failures.pop(path.name, None)  # a request retries at once, whatever the backoff said
            if path.name not in self.inflight and self.known(path):
                ok, message = True, "already pushed"
            else:
                self.wake.set()
                ok, message = await asyncio.shield(self.push(path))
            one_line = " ".join(message.split())
            # The config tag: a call made with another config (edited since this pusher started) must not
            # take this pusher's word for a file stored in the old repository.
            writer.write(f"OK {self.spool.tag} {one_line}\n".encode() if ok else f"ERR {one_line}\n".encode())
        except (ConnectionError, OSError):
            pass  # the caller went away (killed): PostgreSQL will call again
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
                writer.close()

    def learn(self, wal_dir: Path) -> None:
        """Work ahead in ``wal_dir`` too (from now on, woken as soon as a file there is ready)."""
        self.wal_dirs.add(wal_dir)
        if self.watch is not None:
            self.watch.add(wal_dir / "archive_status")

    def _on_watch(self) -> None:
        assert self.watch is not None
        self.watch.drain()
        self.wake.set()

    def _bind(self) -> socket.socket:
        """The listening socket in the spool (a dead pusher's socket file replaced: we hold the lock)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        here = os.open(".", os.O_RDONLY)
        try:
            # sockaddr_un holds ~108 bytes: bind by a relative name from inside the spool.
            os.chdir(self.spool.root)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.basename(self.spool.socket))
            sock.bind(os.path.basename(self.spool.socket))
            os.chmod(os.path.basename(self.spool.socket), 0o600)
        finally:
            os.fchdir(here)
            os.close(here)
        return sock

    def stop(self) -> None:
        """Leave the serving loop (SIGTERM does this)."""
        self.stopping.set()
        self.wake.set()

    async def serve(self) -> int:
        """Answer wal-push calls and work ahead until idle, stopped, or the config file changes."""
        server = await asyncio.start_unix_server(self.handle, sock=self._bind())
        loop = asyncio.get_running_loop()
        # SIGTERM (an operator, a test, shutdown): leave through the finally below, socket removed.
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        self.watch = open_watch()
        if self.watch is not None:
            for wal_dir in list(self.wal_dirs):
                self.learn(wal_dir)
            loop.add_reader(self.watch.fd, self._on_watch)
        self.spool.log_line(f"pusher started (push_ahead {self.push_ahead}, "
                            f"{'watching' if self.watch else 'scanning'} archive_status)")
        self.spool.forget_records(time.time() - RECORD_DAYS * 86400)
        try:
            while not self.stopping.is_set():
                ready = self.work_ahead()
                if ready or self.inflight:
                    self.last_work = time.monotonic()
                elif time.monotonic() - self.last_work > IDLE_EXIT_S:
                    self.spool.log_line("pusher idle: exiting")
                    return 0
                if _config_stamp(self.config_path) != self.stamp and not self.inflight:
                    self.spool.log_line("config file changed: exiting (the next wal-push starts a new pusher)")
                    return 0
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), SCAN_INTERVAL_S)
            self.spool.log_line("pusher stopped")
            return 0
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            if self.watch is not None:
                loop.remove_reader(self.watch.fd)
                self.watch.close()
            server.close()
            with contextlib.suppress(OSError):
                os.unlink(self.spool.socket)
            if self._archive is not None:
                await asyncio.gather(*(s.close() for s in self._archive.repo.storages), return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    """Run the pusher until idle; exit 0 at once when another pusher holds the spool's lock."""
    started = helper_spool("backstop-wal-pusher", argv, "pusher_lock")
    if started is None:
        return 0
    config_file, spool, _lock = started
    try:
        config = load_config(config_file)
    except BackstopError as exc:
        spool.log_line(f"pusher cannot start: {exc}")
        return 2
    if config_tag(config_file) != spool.tag:
        # Edited between reading its tag and loading it: the records would name the wrong repository.
        spool.log_line("config file changed while starting: exiting (the next wal-push starts a new pusher)")
        return 0
    return asyncio.run(Pusher(Path(config_file), spool, config).serve())


if __name__ == "__main__":
    sys.exit(main())
