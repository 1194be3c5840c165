"""The scheduler: find due slots, claim each in the catalog, run it under a per-database lease, record the outcome.

Exactly-once per slot comes from the catalog, not from memory: a slot runs
only after its (schedule, slot) row was inserted, and that row is unique,
so two schedulers on one catalog, or one restarted after a crash, never run
a slot twice. A row left ``running`` by a scheduler that died becomes
``abandoned`` (never re-run: the operator sees it and the next slot follows);
one left ``waiting`` becomes ``missed``. Backups of one database never
overlap: each takes the catalog lease ``backup:<db>`` and holds it (renewed)
until it ends; a run that cannot get it before its deadline is missed.

Time comes from an injected :class:`~core.schedule.clock.Clock` and the work
from an injected :class:`Runner`, so tests drive :meth:`Scheduler.tick`
through DST changes in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from core.catalog.base import Catalog
from core.errors import BackstopError, NotFound
from core.schedule.clock import Clock
from core.schedule.config import ScheduleConfig
from core.schedule.slots import Slot, next_run, plan_slot, slot_key, slots_after

log = logging.getLogger("backstop.daemon")

# Actions that hold their database's lease while they run.
LEASED_ACTIONS = ("backup",)
# Slots looked at per schedule and tick: a daemon down for a long time records the rest on later ticks.
MAX_SLOTS_PER_TICK = 1000


class Runner(Protocol):
    """Does the work of one run (core/schedule/actions.py with the Engine; a stand-in in tests)."""

    async def run(self, schedule: ScheduleConfig, slot: datetime) -> dict[str, object]:
        """Run ``schedule``'s action for the slot at ``slot``; returns a summary for the catalog."""
        ...


@dataclass(frozen=True)
class RunOutcome:
    """How one claimed run ended."""

    name: str
    slot: str
    state: str  # succeeded, failed, missed or abandoned
    error: str | None = None
    result: dict[str, object] | None = None


def new_holder() -> str:
    """A scheduler's identity in claims and leases: ``host:pid:token`` (the pid lets a successor spot a dead one)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _ts(at: datetime) -> float:
    return at.timestamp()


class Scheduler:
    """Runs the configured schedules against one catalog; call :meth:`start`, then :meth:`tick` as time passes."""

    def __init__(self, schedules: Sequence[ScheduleConfig], catalog: Catalog, runner: Runner, clock: Clock, *,
                 holder: str | None = None, lease_ttl_s: float = 120.0, lease_poll_s: float = 15.0) -> None:
        self.schedules = list(schedules)
        self.catalog = catalog
        self.runner = runner
        self.clock = clock
        self.holder = holder or new_holder()
        self.lease_ttl_s = lease_ttl_s
        self.lease_poll_s = lease_poll_s
        self.outcomes: list[RunOutcome] = []
        self._cursor: dict[str, datetime] = {}
        self._tasks: set[asyncio.Task[RunOutcome]] = set()

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> int:
        """Settle what a crashed scheduler on this host left behind; returns how many runs were settled."""
        n = self.catalog.abandon_dead_schedule_runs()
        if n:
            log.warning("%d scheduled run(s) left by a scheduler that ended were marked abandoned or missed", n)
        return n

    def reload(self, schedules: Sequence[ScheduleConfig], catalog: Catalog | None = None,
               runner: Runner | None = None) -> None:
        """Use new schedules (and catalog and runner) from the next tick; runs in progress finish with the old."""
        names = {s.name for s in schedules}
        changed = {s.name for s in schedules if s not in self.schedules}
        self._cursor = {n: c for n, c in self._cursor.items() if n in names and n not in changed}
        self.schedules = list(schedules)
        if catalog is not None and catalog is not self.catalog:
            self._cursor = {}
            self.catalog = catalog
        self.runner = runner or self.runner

    @property
    def busy(self) -> bool:
        """True while a run is in progress."""
        return bool(self._tasks)

    @property
    def running(self) -> list[asyncio.Task[RunOutcome]]:
        """The runs in progress."""
        return list(self._tasks)

    async def wait_idle(self) -> list[RunOutcome]:
        """Wait for every run in progress; returns their outcomes."""
        out: list[RunOutcome] = []
        while self._tasks:
            done = await asyncio.gather(*list(self._tasks), return_exceptions=True)
            out += [d for d in done if isinstance(d, RunOutcome)]
        return out

    async def stop(self) -> None:
        """Cancel the runs in progress: each is recorded as abandoned and cleans up after itself."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- finding due slots -----------------------------------------------------------------------

    def _cursor_of(self, s: ScheduleConfig, now: datetime) -> datetime:
        cur = self._cursor.get(s.name)
        if cur is None:
            last = self.catalog.last_schedule_slot(s.name)
            # A new schedule starts now: it does not owe the slots before it existed.
            cur = now if last is None else datetime.fromtimestamp(last, UTC)
            self._cursor[s.name] = cur
        return cur

    async def tick(self) -> list[asyncio.Task[RunOutcome]]:
        """Record slots past their deadline as missed, claim the due ones and start them; returns the started runs."""
        now = self.clock.now()
        # Another scheduler on this host may have died since the last look (one query on an index).
        self.start()
        started: list[asyncio.Task[RunOutcome]] = []
        for s in self.schedules:
            cursor = self._cursor_of(s, now)
            for i, at in enumerate(slots_after(s, cursor)):
                if at > now or i >= MAX_SLOTS_PER_TICK:
                    break
                slot = plan_slot(s, at)
                if slot is None:  # outside its window: not a run
                    cursor = at
                    continue
                if now >= slot.deadline:
                    if self._claim(s, slot, "missed", f"not started before its deadline {slot_key(slot.deadline)}"):
                        log.warning("schedule %s: slot %s missed (not started before %s)", s.name, slot.key,
                                    slot_key(slot.deadline))
                    cursor = at
                    continue
                if now < slot.run_at:
                    break  # its jitter delay has not passed yet
                cursor = at
                if self._claim(s, slot, "waiting"):
                    started.append(self._spawn(s, slot, "cron"))
            self._cursor[s.name] = cursor
        return started

    def seconds_to_next(self) -> float:
        """How long until a slot may need attention (its start, or its deadline); at most an hour."""
        now = self.clock.now()
        best = now + timedelta(hours=1)
        for s in self.schedules:
            slot = next_run(s, self._cursor_of(s, now))
            if slot is not None:
                best = min(best, slot.run_at if slot.run_at > now else slot.deadline)
        return max(0.0, (best - now).total_seconds())

    def _claim(self, s: ScheduleConfig, slot: Slot, state: str, error: str | None = None,
               trigger: str = "cron", key: str | None = None) -> bool:
        return self.catalog.claim_schedule_run(name=s.name, slot=key or slot.key, due=_ts(slot.at), action=s.action,
                                               db=s.db, holder=self.holder, state=state, trigger=trigger, error=error)

    # -- running ------------------------------------------------------------------------------------

    async def run_now(self, name: str) -> RunOutcome:
        """Run schedule ``name`` once now (`backstop schedule run`), with the same claim and lease as a slot."""
        s = next((x for x in self.schedules if x.name == name), None)
        if s is None:
            known = ", ".join(x.name for x in self.schedules) or "none"
            raise NotFound(f"no schedule named {name!r} in the config (configured: {known})")
        at = self.clock.now().replace(microsecond=0)
        slot = Slot(at, at, at + s.misfire)
        key = f"{slot.key} manual"
        if not self._claim(s, slot, "waiting", trigger="manual", key=key):
            raise BackstopError(f"schedule {name} was already run by hand this second; try again")
        return await self._spawn(s, slot, "manual", key)

    def _spawn(self, s: ScheduleConfig, slot: Slot, trigger: str, key: str | None = None) -> asyncio.Task[RunOutcome]:
        task = asyncio.get_running_loop().create_task(
            self._execute(s, slot, key or slot.key, self.catalog, self.runner), name=f"schedule {s.name} {slot.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _execute(self, s: ScheduleConfig, slot: Slot, key: str, catalog: Catalog,
                       runner: Runner) -> RunOutcome:
        lease = f"backup:{s.db}" if s.action in LEASED_ACTIONS else None
        # Each run holds the lease in its own name: two runs of one scheduler exclude each other too.
        holder = f"{self.holder}.{secrets.token_hex(3)}"
        renewing: asyncio.Task[None] | None = None
        try:
            if lease is not None:
                while not catalog.acquire_lease(lease, holder, self.lease_ttl_s, _ts(self.clock.now())):
                    left = (slot.deadline - self.clock.now()).total_seconds()
                    if left <= 0:
                        why = (f"database {s.db} was busy with another backup until the deadline "
                               f"{slot_key(slot.deadline)}")
                        return self._finish(catalog, s, key, "missed", why)
                    try:
                        await self.clock.sleep(min(self.lease_poll_s, left))
                    except asyncio.CancelledError:
                        self._finish(catalog, s, key, "missed", f"the scheduler stopped while it waited for "
                                     f"database {s.db}")
                        raise
                renewing = asyncio.get_running_loop().create_task(self._renew(catalog, lease, holder))
            catalog.update_schedule_run(s.name, key, "running")
            log.info("schedule %s: %s%s started (slot %s)", s.name, s.action, f" of {s.db}" if s.db else "", key)
            try:
                result = await runner.run(s, slot.at)
            except asyncio.CancelledError:
                self._finish(catalog, s, key, "abandoned", "stopped while running (the scheduler was shut down); "
                             "whatever it had written is not visible and the next slot runs as usual")
                raise
            except BackstopError as exc:
                return self._finish(catalog, s, key, "failed", str(exc))
            except Exception as exc:  # noqa: BLE001  (an unexpected error fails this run, never the daemon)
                log.exception("schedule %s: unexpected error", s.name)
                return self._finish(catalog, s, key, "failed", f"{type(exc).__name__}: {exc}")
            return self._finish(catalog, s, key, "succeeded", None, result)
        finally:
            if renewing is not None:
                renewing.cancel()
            if lease is not None:
                catalog.release_lease(lease, holder)

    async def _renew(self, catalog: Catalog, lease: str, holder: str) -> None:
        while True:
            await self.clock.sleep(self.lease_ttl_s / 3)
            catalog.acquire_lease(lease, holder, self.lease_ttl_s, _ts(self.clock.now()))

    def _finish(self, catalog: Catalog, s: ScheduleConfig, key: str, state: str, error: str | None,
                result: dict[str, object] | None = None) -> RunOutcome:
        catalog.update_schedule_run(s.name, key, state, error=error, result=result)
        out = RunOutcome(s.name, key, state, error, result)
        self.outcomes.append(out)
        if state == "succeeded":
            log.info("schedule %s: %s succeeded (slot %s)", s.name, s.action, key)
        else:
            log.warning("schedule %s: %s %s (slot %s): %s", s.name, s.action, state, key, error)
        return out
