"""Which objects a target keeps by design: Object Lock retention on S3, append-only directories (FORMAT.md 23).

Only objects the repository never deletes or rewrites in normal operation
may be locked; locking a lock file or a `marked/` object would make the next
release or prune fail. The same list is what an append-only target refuses
to replace. Deleting code asks :func:`why_kept` (or calls
:func:`delete_where_allowed`) before it deletes, so Backstop never tries to
delete a locked object before its date.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from core.errors import DeletionRefused
from core.format import utc
from core.storage.base import Storage

if TYPE_CHECKING:  # the CLI imports this module for `when`: keep pydantic out of `backstop --help`
    from core.config import ObjectLockConfig

# Written once and never replaced or deleted in normal operation: safe to lock.
# (Packs and manifests are deleted only by prune/forget, which plan around locks;
# WAL only by retention's trim, audit copies, drill reports and keys never.)
WRITE_ONCE_PREFIXES = ("keys/", "data/", "snapshots/", "wal/", "audit/", "drills/")
WRITE_ONCE_NAMES = ("config",)

# Rewritten or deleted in normal operation, so never locked: locks/ (released after every backup),
# marked/ and index/ (replaced by every prune that marks; index objects are rebuilt from the packs'
# headers by `repair index`), quarantine/ (released), operators/ and settings/ (replaced in place).
#
# On an append-only target Backstop still deletes and replaces lock objects: a lock left behind by
# every backup would block prune on other hosts for an hour, and a lock holds no data.
APPEND_ONLY_DELETABLE = ("locks/",)
# ...and replaces these small records in place (an operator's role change, an approval, a quarantine
# note); refusing would make those commands fail for the whole repository.
APPEND_ONLY_REPLACEABLE = ("locks/", "operators/", "settings/", "quarantine/")


def is_write_once(name: str) -> bool:
    """True for objects the repository never deletes or rewrites in normal operation (these get retention)."""
    return name in WRITE_ONCE_NAMES or name.startswith(WRITE_ONCE_PREFIXES)


def retain_until(lock: ObjectLockConfig, now: datetime | None = None) -> datetime:
    """The retention date a write made now gets."""
    return (now or datetime.now(UTC)) + timedelta(days=lock.days)


def is_append_only(st: Storage) -> bool:
    """True for a target Backstop must not delete from or rewrite (``append_only: true``, not overridden)."""
    return bool(getattr(st, "append_only", False))


def when(ts: float) -> str:
    """A retention date for messages."""
    return utc(ts, "%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class Kept:
    """An object one target keeps although the caller would delete it."""

    target: str
    name: str
    until: float | None  # retention end; None on an append-only target

    def reason(self) -> str:
        return f"locked until {when(self.until)}" if self.until is not None else "append-only target"


async def why_kept(st: Storage, name: str) -> Kept | None:
    """Why ``st`` must keep ``name`` now, or None when it may be deleted."""
    if is_append_only(st) and not name.startswith(APPEND_ONLY_DELETABLE):
        return Kept(st.name, name, None)
    until = await st.locked_until(name)
    return Kept(st.name, name, until) if until is not None else None


async def delete_where_allowed(storages: Iterable[Storage], name: str) -> list[Kept]:
    """Delete ``name`` from every target that may delete it now; returns where it stays and why."""
    stores = list(storages)
    kept = await asyncio.gather(*(why_kept(st, name) for st in stores))
    await asyncio.gather(*(st.delete(name) for st, k in zip(stores, kept, strict=True) if k is None))
    return [k for k in kept if k is not None]


def refused(kept: Kept) -> DeletionRefused:
    """The error a target raises when asked to delete what it keeps."""
    if kept.until is None:
        return DeletionRefused(kept.target, kept.name,
                               f"{kept.name} is on an append-only target: Backstop never deletes there; prune it "
                               f"on that host with `backstop prune --append-only-override {kept.target}`")
    return DeletionRefused(kept.target, kept.name,
                           f"{kept.name} is locked (Object Lock) until {when(kept.until)}; it can be deleted after "
                           "that date", until=kept.until)
