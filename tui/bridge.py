"""The one narrow bridge: engine events and catalog changes become UI messages here.

Two sources feed the console:

- the engine's event bus, for jobs this console runs itself (fast, in-process);
- the catalog's change feed (``engine.queries.watch``: one cheap check in a
  thread every half second; SQLite's data_version today), for everything
  else, including jobs the CLI runs in another process.

Progress is coalesced twice: at most one ``JobProgressed`` per job every
``min_interval`` seconds leaves here (the newest figures, with a trailing
flush so the last value is never lost), and the message implements
``can_replace`` so a busy UI only handles the newest one in its queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.events import EventBus, JobEvent, JobFinished, JobStarted, JobWarning, PhaseChanged, Progress
from textual.message import Message

if TYPE_CHECKING:
    from textual.app import App


class JobProgressed(Message):
    """Newest progress of a job run by this console (replaces older ones in the queue)."""

    def __init__(self, job_id: str, phase: str, done: int, total: int | None, rate: float) -> None:
        super().__init__()
        self.job_id = job_id
        self.phase = phase
        self.done = done
        self.total = total
        self.rate = rate

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobProgressed) and message.job_id == self.job_id


class JobChanged(Message):
    """A job run by this console started, changed phase, warned or finished."""

    def __init__(self, job_id: str, kind: str, event: str, text: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.kind = kind
        self.event = event  # started, phase, warning, finished
        self.text = text


class CatalogChanged(Message):
    """Something committed to the catalog (this process or another); screens re-read what they show."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, CatalogChanged)


class EngineBridge:
    """Subscribes to the engine's bus and posts coalesced messages to the app."""

    def __init__(self, app: App[Any], bus: EventBus, min_interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.min_interval = min_interval
        self.clock = clock
        self.running: dict[str, str] = {}  # jobs this console started: id -> kind
        self.latest: dict[str, JobProgressed] = {}
        self._last_post: dict[str, float] = {}
        self._flush_scheduled: set[str] = set()
        self.posted_progress = 0  # for tests and the benchmark
        self._unsubscribe = bus.subscribe(self.on_event)

    def close(self) -> None:
        """Stop listening to the bus."""
        self._unsubscribe()

    def on_event(self, ev: JobEvent) -> None:
        """Bus subscriber (runs on the event loop thread; must be quick)."""
        if isinstance(ev, JobStarted):
            self.running[ev.job_id] = ev.kind
            self.app.post_message(JobChanged(ev.job_id, ev.kind, "started", ev.description))
        elif isinstance(ev, Progress):
            msg = JobProgressed(ev.job_id, ev.phase, ev.bytes_done, ev.bytes_total, ev.rate)
            self.latest[ev.job_id] = msg
            now = self.clock()
            wait = self._last_post.get(ev.job_id, -1e9) + self.min_interval - now
            if wait <= 0:
                self._post(ev.job_id)
            elif ev.job_id not in self._flush_scheduled:
                # Trailing flush: the newest figures arrive even if no event follows.
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # published from a worker thread: post now rather than lose it
                    self._post(ev.job_id)
                    return
                self._flush_scheduled.add(ev.job_id)
                loop.call_later(wait, self._flush, ev.job_id)
        elif isinstance(ev, PhaseChanged):
            self.app.post_message(JobChanged(ev.job_id, self.running.get(ev.job_id, ""), "phase", ev.phase))
        elif isinstance(ev, JobWarning):
            self.app.post_message(JobChanged(ev.job_id, self.running.get(ev.job_id, ""), "warning", ev.message))
        elif isinstance(ev, JobFinished):
            if ev.job_id in self.latest:
                self._post(ev.job_id)
            kind = self.running.pop(ev.job_id, "")
            self.latest.pop(ev.job_id, None)
            self._last_post.pop(ev.job_id, None)
            self.app.post_message(JobChanged(ev.job_id, kind, "finished", ev.error or ev.outcome))

    def _flush(self, job_id: str) -> None:
        self._flush_scheduled.discard(job_id)
        if job_id in self.latest:
            self._post(job_id)

    def _post(self, job_id: str) -> None:
        msg = self.latest.get(job_id)
        if msg is None:
            return
        self._last_post[job_id] = self.clock()
        self.posted_progress += 1
        # A fresh message each time: a posted message must not be reused.
        self.app.post_message(JobProgressed(msg.job_id, msg.phase, msg.done, msg.total, msg.rate))
