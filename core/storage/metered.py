"""Per-target health: a Storage wrapper that times every call and classifies its outcome.

:class:`MeteredStorage` forwards each call to the real target and notes,
in memory, its kind (put, get, get_range, list, delete, exists), latency,
outcome class and bytes moved in a :class:`HealthMeter` shared by all the
targets of one engine. The meter is drained into the catalog as one row per
(target, call kind, window) by :meth:`HealthMeter.flush`: at the end of each
job, when the engine closes, and at most every ``FLUSH_EVERY_S`` seconds
during long ones. The records are in core/storage/health.py.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from core.storage.base import ObjectInfo, Storage
from core.storage.health import CallStats, HealthWindow, Outcome, TargetMarks, bucket_of, classify

FLUSH_EVERY_S = 30.0


class HealthMeter:
    """In-memory call statistics of every target of one engine, drained by :meth:`flush`."""

    def __init__(self, sink: Callable[[list[HealthWindow], dict[str, TargetMarks]], None] | None = None,
                 flush_every_s: float = FLUSH_EVERY_S) -> None:
        """``sink`` writes a flush to the catalog (None: statistics are only kept in memory)."""
        self.sink = sink
        self.flush_every_s = flush_every_s
        self._stats: dict[tuple[str, str], CallStats] = {}
        self._marks: dict[str, TargetMarks] = {}
        self._window_start = time.time()
        self._last_flush = time.monotonic()

    def marks(self, target: str) -> TargetMarks:
        m = self._marks.get(target)
        if m is None:
            m = self._marks[target] = TargetMarks()
        return m

    def record(self, target: str, kind: str, elapsed: float, outcome: Outcome, *, written: int = 0, read: int = 0,
               message: str = "") -> None:
        """Note one finished call (cheap: dictionary updates only, plus a flush at most every 30 s)."""
        st = self._stats.get((target, kind))
        if st is None:
            st = self._stats[(target, kind)] = CallStats()
        st.calls += 1
        st.latency_sum += elapsed
        b = bucket_of(elapsed)
        st.hist[b] = st.hist.get(b, 0) + 1
        if outcome == "ok" or outcome == "not_found":
            st.bytes_written += written
            st.bytes_read += read
            now = time.time()
            if kind in ("put", "delete"):
                self.marks(target).last_write_ok_at = now
            else:
                self.marks(target).last_read_ok_at = now
        if outcome != "ok":
            st.outcomes[outcome] = st.outcomes.get(outcome, 0) + 1
            if outcome != "not_found":
                self.marks(target).last_error = (outcome, message[:500], time.time())
        if self.sink is not None and time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def forget_errors(self, target: str) -> None:
        """Drop the errors recorded for ``target`` since the last flush (``init`` just created it: its absence
        before was expected, not an outage)."""
        for (t, _), st in self._stats.items():
            if t == target:
                st.outcomes = {k: n for k, n in st.outcomes.items() if k == "not_found"}
        self.marks(target).last_error = None

    def record_listing(self, target: str, prefix: str, objects: builtins.list[ObjectInfo]) -> None:
        """Note a listing's total size (a full one of the data packs measures the bytes a target stores)."""
        self.marks(target).listings[prefix] = (sum(o.size for o in objects), len(objects), time.time())

    def drain(self) -> tuple[list[HealthWindow], dict[str, TargetMarks]]:
        """The statistics since the last drain, and start a new window."""
        end = time.time()
        rows = [HealthWindow(t, k, self._window_start, end, s.calls, s.outcomes, s.bytes_written, s.bytes_read,
                             s.latency_sum, s.hist) for (t, k), s in self._stats.items()]
        marks = self._marks
        self._stats, self._marks = {}, {}
        self._window_start = end
        self._last_flush = time.monotonic()
        return rows, marks

    def flush(self) -> None:
        """Hand what was recorded to the sink; a failing sink loses the window rather than failing a backup."""
        rows, marks = self.drain()
        if self.sink is None or (not rows and not marks):
            return
        try:
            self.sink(rows, marks)
        except Exception:  # noqa: BLE001  (health statistics must never fail the operation they measure)
            import logging

            logging.getLogger(__name__).warning("could not record target health in the catalog", exc_info=True)


class MeteredStorage(Storage):
    """A Storage that forwards every call to ``inner`` and records it in ``meter``."""

    def __init__(self, inner: Storage, meter: HealthMeter) -> None:
        self.inner = inner
        self.meter = meter
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:
        # Target-specific extras (a backend's own methods or settings) stay reachable.
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def describe(self) -> str:
        return self.inner.describe()

    def _done(self, kind: str, t0: float, outcome: Outcome, written: int = 0, read: int = 0,
              exc: BaseException | None = None) -> None:
        self.meter.record(self.name, kind, time.perf_counter() - t0, outcome, written=written, read=read,
                          message="" if exc is None else str(exc))

    async def put(self, name: str, data: bytes) -> None:
        t0 = time.perf_counter()
        try:
            await self.inner.put(name, data)
        except Exception as exc:
            self._done("put", t0, classify(exc), exc=exc)
            raise
        self._done("put", t0, "ok", written=len(data))

    async def put_stream(self, name: str, pieces: AsyncIterator[bytes]) -> None:
        t0 = time.perf_counter()
        written = 0
        maker_failed = False

        async def counted() -> AsyncIterator[bytes]:
            nonlocal written, maker_failed
            try:
                async for piece in pieces:
                    written += len(piece)
                    yield piece
            except Exception:
                maker_failed = True  # the object's maker failed, not this target
                raise

        try:
            await self.inner.put_stream(name, counted())
        except Exception as exc:
            if not maker_failed:
                self._done("put", t0, classify(exc), exc=exc)
            raise
        self._done("put", t0, "ok", written=written)

    async def get(self, name: str) -> bytes:
        t0 = time.perf_counter()
        try:
            data = await self.inner.get(name)
        except Exception as exc:
            self._done("get", t0, classify(exc), exc=exc)
            raise
        self._done("get", t0, "ok", read=len(data))
        return data

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        t0 = time.perf_counter()
        try:
            data = await self.inner.get_range(name, offset, length)
        except Exception as exc:
            self._done("get_range", t0, classify(exc), exc=exc)
            raise
        self._done("get_range", t0, "ok", read=len(data))
        return data

    async def exists(self, name: str) -> bool:
        t0 = time.perf_counter()
        try:
            found = await self.inner.exists(name)
        except Exception as exc:
            self._done("exists", t0, classify(exc), exc=exc)
            raise
        # An absent object is an answer, not a failure: counted apart from errors.
        self._done("exists", t0, "ok" if found else "not_found")
        return found

    async def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        t0 = time.perf_counter()
        try:
            objs = await self.inner.list(prefix)
        except Exception as exc:
            self._done("list", t0, classify(exc), exc=exc)
            raise
        self._done("list", t0, "ok")
        self.meter.record_listing(self.name, prefix, objs)
        return objs

    async def delete(self, name: str) -> None:
        t0 = time.perf_counter()
        try:
            await self.inner.delete(name)
        except Exception as exc:
            self._done("delete", t0, classify(exc), exc=exc)
            raise
        self._done("delete", t0, "ok")

    async def cleanup_leftovers(self, older_than: float) -> builtins.list[str]:
        return await self.inner.cleanup_leftovers(older_than)

    async def prepare(self) -> None:
        await self.inner.prepare()
        self.meter.forget_errors(self.name)

    async def check_capabilities(self) -> None:
        await self.inner.check_capabilities()

    async def locked_until(self, name: str) -> float | None:
        return await self.inner.locked_until(name)

    async def close(self) -> None:
        await self.inner.close()


def metered(storages: builtins.list[Storage], meter: HealthMeter) -> builtins.list[Storage]:
    """Each storage wrapped to record into ``meter`` (already wrapped ones are left as they are)."""
    return [s if isinstance(s, MeteredStorage) else MeteredStorage(s, meter) for s in storages]
