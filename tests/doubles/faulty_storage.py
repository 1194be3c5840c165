"""A Storage that forwards to a real target and misbehaves at a chosen call.

After Kopia's ``internal/blobtesting/faulty.go``: a :class:`FaultyStorage`
wraps a real :class:`~core.storage.base.Storage` (a directory or an S3
bucket) and forwards every call, except that armed faults (:class:`Fault`)
act on the Nth call of one kind (``put``, ``get``, ``get_range``, ``list``,
``delete``, ``exists``), optionally only for names under a prefix
(``data/``, ``index/``, ``snapshots/``, ``locks/``):

``fail``
    raise a ``StorageError`` (or ``TargetUnreachable``) naming the target, as
    a real backend would; nothing reaches the backend.
``delay``
    sleep, then forward.
``truncate``
    ``put`` stores a prefix of the data and reports success; ``get`` and
    ``get_range`` return a prefix of what was stored.
``drop``
    ``put`` (or ``delete``) reports success and does nothing.
``crash``
    the process dies at this call: it and every later call of every
    FaultyStorage sharing the same :class:`PowerSwitch` raise
    :class:`PowerCut`, a ``BaseException`` the engine does not treat as an
    error. Cleanup code (``finally``, ``except BaseException``) therefore
    cannot touch a backend after the crash point; a call already in flight
    completes on the backend (the request had left) but raises too. The
    test then abandons that engine and starts a new one on the same
    backends, as a restarted process would.

Every call is recorded on the switch (:class:`Call`: target, kind, name,
outcome), so a test can find "the 3rd pack upload to target B" in a dry
run's log and arm a fault there.

A switch stands for one process. With ``stand_in=True`` it also starts a
child process whose pid replaces the holder's pid in the lock objects
written through it, and kills that child at the crash: the lock a crashed
run leaves behind then names a dead process on this host, as after a real
crash (the test process, the real holder, lives on). Call ``close()`` when
done with a switch.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from core.errors import ObjectNotFound, StorageError, TargetUnreachable
from core.storage.base import ObjectInfo, Storage

CallKind = Literal["put", "get", "get_range", "list", "delete", "exists"]
Action = Literal["fail", "delay", "truncate", "drop", "crash"]
T = TypeVar("T")

_LOCK_PREFIX = "locks/"


class PowerCut(BaseException):
    """The simulated process died: raised by the crashing call and every later one on its switch."""


@dataclass
class Call:
    """One call that reached a FaultyStorage, and how it ended."""

    seq: int  # position in the switch's log, from 1
    target: str
    kind: str  # a CallKind, or "cleanup_leftovers" / "prepare"
    name: str  # the object name (for list: the prefix)
    size: int | None = None  # bytes written (put) or returned (get, get_range)
    # pending while out; then ok | missing | error (from the backend) | fail | delay | truncate | drop | crash
    # (the fault that acted) | dead (made after the crash, or answered after it: the process never heard)
    outcome: str = "pending"
    fault: Action | None = None  # the fault that acted on this call

    def __str__(self) -> str:
        return f"#{self.seq} {self.target} {self.kind} {self.name} -> {self.outcome}"


@dataclass
class Fault:
    """What to do to the ``nth`` call of ``kind`` (on names starting with ``prefix``) on one storage."""

    kind: CallKind
    action: Action
    nth: int = 1
    prefix: str = ""
    delay_s: float = 0.2  # for delay
    keep: float = 0.5  # for truncate: the fraction of bytes kept
    unreachable: bool = False  # for fail: TargetUnreachable rather than a plain StorageError
    seen: int = 0  # matching calls so far
    fired: Call | None = None  # the call it acted on

    def __post_init__(self) -> None:
        if self.nth < 1:
            raise ValueError("nth counts from 1")
        if self.action == "truncate" and self.kind not in ("put", "get", "get_range"):
            raise ValueError("truncate applies to put, get and get_range")
        if self.action == "drop" and self.kind not in ("put", "delete"):
            raise ValueError("drop applies to put and delete")

    def take(self, kind: str, name: str) -> bool:
        """Count a call; True when it is the one to act on."""
        if kind != self.kind or not name.startswith(self.prefix):
            return False
        self.seen += 1
        return self.seen == self.nth and self.fired is None


class PowerSwitch:
    """One simulated process: the shared call log and whether the process has died."""

    def __init__(self, on_trip: Callable[[], None] | None = None, stand_in: bool = False) -> None:
        """``on_trip`` runs once, at the crash (e.g. to keep the catalog as the dying process left it)."""
        self.calls: list[Call] = []
        self.tripped: Call | None = None
        self._on_trip = on_trip
        # `cat` on a pipe: it also ends by itself when the test process dies (end of input).
        self._stand_in = (subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
                          if stand_in else None)

    @property
    def pid(self) -> int | None:
        """The stand-in pid written into lock objects (None: locks are left as the engine wrote them)."""
        return self._stand_in.pid if self._stand_in is not None else None

    def record(self, target: str, kind: str, name: str, size: int | None = None) -> Call:
        call = Call(len(self.calls) + 1, target, kind, name, size)
        self.calls.append(call)
        return call

    def trip(self, call: Call) -> None:
        """The process dies at ``call``."""
        if self.tripped is not None:
            return
        self.tripped = call
        call.outcome = "crash"
        self._end_stand_in()
        if self._on_trip is not None:
            self._on_trip()

    def close(self) -> None:
        """End the stand-in process (tests call this when done with the switch)."""
        self._end_stand_in()

    def _end_stand_in(self) -> None:
        proc = self._stand_in
        if proc is not None and proc.returncode is None:
            proc.kill()
            proc.wait()  # reaped: its pid names no process any more
            if proc.stdin is not None:
                proc.stdin.close()

    def find(self, kind: str | None = None, target: str | None = None, prefix: str = "",
             outcome: str | None = None) -> list[Call]:
        """Logged calls matching every given criterion, in order."""
        return [c for c in self.calls
                if (kind is None or c.kind == kind) and (target is None or c.target == target)
                and c.name.startswith(prefix) and (outcome is None or c.outcome == outcome)]


class FaultyStorage(Storage):
    """Forwards to ``inner``; armed faults act on chosen calls; every call is logged on ``switch``."""

    def __init__(self, inner: Storage, switch: PowerSwitch | None = None, faults: Sequence[Fault] = ()) -> None:
        self.inner = inner
        self.name = inner.name
        self.switch = switch or PowerSwitch()
        self.faults: list[Fault] = list(faults)

    def arm(self, *faults: Fault) -> None:
        """Add faults (each acts once, on its Nth matching call from now on)."""
        self.faults.extend(faults)

    def describe(self) -> str:
        return self.inner.describe()

    # -- the Storage API ------------------------------------------------------------------------

    async def put(self, name: str, data: bytes) -> None:
        call, fault = self._begin("put", name, len(data))
        if fault is not None:
            await self._act(call, fault)
            if fault.action == "drop":
                call.outcome = "drop"
                return
            if fault.action == "truncate":
                data = data[:int(len(data) * fault.keep)]
                call.size = len(data)
        if name.startswith(_LOCK_PREFIX) and self.switch.pid is not None:
            data = self._as_stand_in(data)
        await self._forward(call, self.inner.put(name, data))

    async def get(self, name: str) -> bytes:
        return await self._read("get", name, lambda: self.inner.get(name))

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        return await self._read("get_range", name, lambda: self.inner.get_range(name, offset, length))

    async def exists(self, name: str) -> bool:
        call, fault = self._begin("exists", name)
        if fault is not None:
            await self._act(call, fault)
        return await self._forward(call, self.inner.exists(name))

    async def list(self, prefix: str) -> list[ObjectInfo]:
        call, fault = self._begin("list", prefix)
        if fault is not None:
            await self._act(call, fault)
        return await self._forward(call, self.inner.list(prefix))

    async def delete(self, name: str) -> None:
        call, fault = self._begin("delete", name)
        if fault is not None:
            await self._act(call, fault)
            if fault.action == "drop":
                call.outcome = "drop"
                return
        await self._forward(call, self.inner.delete(name))

    async def cleanup_leftovers(self, older_than: float) -> builtins.list[str]:
        call, _ = self._begin("cleanup_leftovers", "")
        return await self._forward(call, self.inner.cleanup_leftovers(older_than))

    async def prepare(self) -> None:
        call, _ = self._begin("prepare", "")
        await self._forward(call, self.inner.prepare())

    async def close(self) -> None:
        """Release the inner target's connections (no data is touched: allowed even after a crash)."""
        await self.inner.close()

    # -- machinery ------------------------------------------------------------------------------

    def _begin(self, kind: str, name: str, size: int | None = None) -> tuple[Call, Fault | None]:
        """Log the call; a dead process makes no calls; returns the fault that acts on it, if any."""
        call = self.switch.record(self.name, kind, name, size)
        if self.switch.tripped is not None:
            call.outcome = "dead"
            raise PowerCut(f"the process died at call {self.switch.tripped}")
        due = [f for f in self.faults if f.take(kind, name)]  # every fault counts the call
        if not due:
            return call, None
        due[0].fired = call  # the first armed one acts; the others miss their turn
        return call, due[0]

    async def _act(self, call: Call, fault: Fault) -> None:
        """Raise for fail/crash, sleep for delay; truncate and drop are the caller's part."""
        call.fault = fault.action
        if fault.action == "crash":
            self.switch.trip(call)
            raise PowerCut(f"the process died at call {call}")
        if fault.action == "fail":
            call.outcome = "fail"
            what = f"injected fault: {call.kind} of {call.name or '(all)'} failed (call #{call.seq})"
            raise TargetUnreachable(self.name, f"cannot connect ({what})") if fault.unreachable \
                else StorageError(self.name, what)
        if fault.action == "delay":
            await asyncio.sleep(fault.delay_s)

    async def _forward(self, call: Call, op: Awaitable[T]) -> T:
        try:
            result = await op
        except BaseException as exc:
            if call.outcome == "pending":
                call.outcome = "missing" if isinstance(exc, ObjectNotFound) else "error"
            raise
        finally:
            if self.switch.tripped is not None and self.switch.tripped is not call and call.outcome != "dead":
                # The process died while this request was out: the backend may have done it, nobody hears back.
                call.outcome = "dead"
                raise PowerCut(f"the process died at call {self.switch.tripped}")
        if call.outcome == "pending":
            call.outcome = call.fault or "ok"
        return result

    async def _read(self, kind: CallKind, name: str, op: Callable[[], Awaitable[bytes]]) -> bytes:
        call, fault = self._begin(kind, name)
        if fault is not None:
            await self._act(call, fault)
        data = await self._forward(call, op())
        if fault is not None and fault.action == "truncate":
            data = data[:int(len(data) * fault.keep)]
        call.size = len(data)
        return data

    def _as_stand_in(self, data: bytes) -> bytes:
        """A lock object naming the switch's stand-in process as its holder."""
        try:
            doc = json.loads(data)
        except ValueError:
            return data
        if not isinstance(doc, dict) or "pid" not in doc:
            return data
        return json.dumps({**doc, "pid": self.switch.pid}).encode()
