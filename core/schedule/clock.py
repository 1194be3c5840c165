"""Time for the scheduler: the real clock, and a fake one tests move by hand."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What the scheduler asks of time."""

    def now(self) -> datetime:
        """The current time (aware, UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class RealClock:
    """Wall-clock time and asyncio sleeps."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told (:meth:`set`, :meth:`advance`), or, with ``autojump``, when slept on.

    With ``autojump`` a sleep moves the clock forward by its length after a
    short real pause (``real_pause`` seconds), so a task waiting for a lease
    polls quickly while the work holding the lease runs in real time.
    """

    def __init__(self, start: datetime, autojump: bool = False, real_pause: float = 0.005) -> None:
        self._now = start.astimezone(UTC)
        self.autojump = autojump
        self.real_pause = real_pause
        self._changed = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        """Move the clock to ``when`` (never backwards)."""
        self._now = max(self._now, when.astimezone(UTC))
        self._changed.set()
        self._changed = asyncio.Event()

    def advance(self, seconds: float) -> None:
        self.set(self._now + timedelta(seconds=seconds))

    async def sleep(self, seconds: float) -> None:
        until = self._now + timedelta(seconds=max(0.0, seconds))
        if self.autojump:
            await asyncio.sleep(self.real_pause)
            self.set(until)
            return
        while self._now < until:
            await self._changed.wait()
