"""What every operation works with: the config, the catalog, the event bus, the thread pool and the targets.

Operations (core/ops/) are functions of an :class:`EngineContext`; the
Engine builds one context and hands it to each. Nothing here decides
anything: it only opens what an operation asks for.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from core.catalog.base import Catalog
from core.config import BackstopConfig
from core.errors import BackstopError, NotFound
from core.events import EventBus, JobEvent, JobFinished
from core.records import SnapshotRecord
from core.repository.repo import Repository
from core.storage.base import Storage
from core.storage.factory import make_storages
from core.storage.health import HealthWindow, TargetMarks
from core.storage.metered import HealthMeter, metered


@dataclass
class EngineContext:
    """The parts an operation composes (one per Engine)."""

    config: BackstopConfig
    catalog: Catalog
    bus: EventBus
    pool: ThreadPoolExecutor
    # None until first used: building S3 clients costs time that `snapshots` should not pay.
    given_storages: list[Storage] | None = None
    _storages: list[Storage] | None = field(default=None, init=False, repr=False)
    # Every call to a target is timed and classified here, and written to the catalog at the end of each
    # job, every 30 s in long ones, and on close (core/storage/metered.py).
    health: HealthMeter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.health = HealthMeter(self._record_health)
        self._unsubscribe_health = self.bus.subscribe(self._on_event)

    def _record_health(self, windows: list[HealthWindow], marks: dict[str, TargetMarks]) -> None:
        self.catalog.record_target_health(windows, marks)

    def _on_event(self, ev: JobEvent) -> None:
        if isinstance(ev, JobFinished):
            self.health.flush()

    def storages(self, target: str | None = None) -> list[Storage]:
        """Storage objects for the configured targets (or one of them), each measured by :attr:`health`."""
        if self._storages is None:
            self._storages = metered(self.given_storages or make_storages(self.config.targets), self.health)
        if target is None:
            return self._storages
        self.config.target(target)  # raises a ConfigError naming the known targets
        return [s for s in self._storages if s.name == target]

    async def open_repository(self, require_all: bool = True, target: str | None = None) -> Repository:
        """Open the repository with the configured passphrase."""
        return await Repository.open(self.storages(target), self.config.encryption.passphrase(), require_all)

    async def find_snapshot(self, ref: str, db: str | None = None, kind: str | None = None) -> SnapshotRecord:
        """A snapshot by id, unique prefix or 'latest' (of ``kind``, when given); a lost catalog is named as such."""
        try:
            return self.catalog.snapshot(ref, db, kind)
        except NotFound as exc:
            # The catalog is only an index: if the repository holds snapshots it does
            # not list, the catalog was lost or is new, and a rebuild is the answer.
            try:
                repo = await self.open_repository(require_all=False)
                names: set[str] = set()
                for st in repo.storages:
                    names |= await repo.snapshot_names(st)
            except BackstopError:
                raise exc from None
            unknown = names - {s.id for s in self.catalog.snapshots()}
            if not unknown:
                raise
            raise NotFound(f"{str(exc).split(';')[0]}; the repository holds {len(unknown)} snapshot(s) the catalog "
                           "does not list: run `backstop catalog rebuild` (the catalog was lost, is new or is "
                           "out of date)") from None

    async def close(self) -> None:
        """Record the targets' health, release connections and threads."""
        self._unsubscribe_health()
        self.health.flush()
        if self._storages:
            await asyncio.gather(*(s.close() for s in self._storages), return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)
