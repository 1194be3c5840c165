"""The read-ahead fetcher: ``python -m core.wal.fetcher --config PATH --spool DIR`` (started by wal-fetch).

Recovery asks for one WAL file at a time; each call paying for the
repository's key derivation would make replay crawl. The fetcher holds the
repository open and keeps the ``wal.fetch_ahead`` segments that follow the
last one asked for (``fetch-position`` in the spool, same timeline, only
names the archive's listing holds) in ``fetched/``, each checked and
written under a temporary name first. A wal-fetch call takes its file from
there. It exits once nothing was asked for ``IDLE_EXIT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time

from core.config import load_config
from core.errors import BackstopError
from core.ops.wal import open_archive
from core.postgres.wal import WalNameError, wal_file_kind
from core.repository.wal import WalArchive, WalNotArchived, wal_objects
from core.wal.spool import Spool, helper_spool, write_atomic

IDLE_EXIT_S = 30.0
LIST_EVERY_S = 2.0
STALE_S = 600.0


class Fetcher:
    """One fetcher process serving one spool."""

    def __init__(self, spool: Spool, archive: WalArchive, ahead: int) -> None:
        self.spool = spool
        self.archive = archive
        self.ahead = ahead
        self.listing: set[str] = set()
        self.listed_at = 0.0
        self.stopping = asyncio.Event()

    async def refresh(self, timeline: int) -> None:
        listings = await asyncio.gather(*(wal_objects(st, timeline) for st in self.archive.repo.storages),
                                        return_exceptions=True)
        names: set[str] = set()
        for lst in listings:
            if not isinstance(lst, BaseException):
                names |= {n for n, _ in lst}
        self.listing = names
        self.listed_at = time.monotonic()

    def plan(self, position: str) -> list[str]:
        """The segments after ``position`` on its timeline that the archive holds, at most ``ahead``."""
        tli = position[:8]
        after = sorted(n for n in self.listing if n[:8] == tli and n > position and _is_segment(n))
        return after[:self.ahead]

    def tidy(self, position: str, keep: set[str]) -> None:
        """Remove fetched files recovery has passed (or that have waited too long)."""
        now = time.time()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.spool.fetched):
                name = entry.name
                if name in keep or name == position:
                    continue
                with contextlib.suppress(OSError):
                    passed = name[:8] == position[:8] and name < position
                    if passed or entry.name.startswith(".tmp-") or now - entry.stat().st_mtime > STALE_S:
                        os.unlink(entry.path)

    async def run(self) -> int:
        """Fetch ahead of the position until idle or stopped (SIGTERM)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        try:
            return await self._loop()
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    async def _loop(self) -> int:
        last_position, idle_since = None, time.monotonic()
        while not self.stopping.is_set():
            position = self.spool.fetch_position()
            if position != last_position:
                last_position, idle_since = position, time.monotonic()
            elif time.monotonic() - idle_since > IDLE_EXIT_S:
                return 0
            if position is None or not _is_segment(position):
                await asyncio.sleep(0.05)
                continue
            wanted = self.plan(position)
            if len(wanted) < self.ahead and time.monotonic() - self.listed_at > LIST_EVERY_S:
                await self.refresh(int(position[:8], 16))
                wanted = self.plan(position)
            todo = [n for n in wanted if not os.path.exists(os.path.join(self.spool.fetched, n))]
            self.spool.set_fetch_plan(todo)
            self.tidy(position, set(wanted))
            if not todo:
                await asyncio.sleep(0.05)
                continue
            name = todo[0]
            try:
                wf = await self.archive.read(name)
            except WalNotArchived:
                self.listing.discard(name)
                continue
            except BackstopError as exc:
                self.spool.log_line(f"read-ahead of {name} failed: {exc}")
                self.spool.set_fetch_plan([])
                await asyncio.sleep(1.0)
                continue
            write_atomic(os.path.join(self.spool.fetched, name), wf.data)
        return 0


def _is_segment(name: str) -> bool:
    try:
        return wal_file_kind(name) == "segment"
    except WalNameError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Fetch ahead until idle; exit 0 at once when another fetcher holds the spool's lock."""
    started = helper_spool("backstop-wal-fetcher", argv, "fetcher_lock")
    if started is None:
        return 0
    config_file, spool, _lock = started

    async def go() -> int:
        try:
            config = load_config(config_file)
            archive = await open_archive(config, require_all=False)
        except BackstopError as exc:
            spool.log_line(f"fetcher cannot start: {exc}")
            return 2
        try:
            return await Fetcher(spool, archive, config.wal.fetch_ahead).run()
        finally:
            spool.set_fetch_plan([])
            await asyncio.gather(*(s.close() for s in archive.repo.storages), return_exceptions=True)

    return asyncio.run(go())


if __name__ == "__main__":
    sys.exit(main())
