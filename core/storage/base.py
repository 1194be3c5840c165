"""The interface every storage target implements."""

from __future__ import annotations

import abc
import builtins
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object as listed by a target."""

    name: str  # repository-relative, '/'-separated, e.g. "data/ab/ab12..."
    size: int
    # Last modification, seconds since the epoch (None if the target cannot tell):
    # prune keeps unreferenced packs younger than its grace period. Not part of equality:
    # the same object listed twice is the same object.
    mtime: float | None = field(default=None, compare=False)
    # The S3 storage class as listed (None: the target has no classes); FORMAT.md 12.6.
    storage_class: str | None = field(default=None, compare=False)


class Storage(abc.ABC):
    """An async object store holding one repository.

    Names are repository-relative paths with '/' separators. Writes are
    atomic: an object is either absent or complete, never partial. Every
    failure raises a ``core.errors.StorageError`` subclass whose message
    names the target.
    """

    name: str
    # How many packs a backup uploads here at once (core/repository/writer.py). Set by the backends
    # from their config; no class default, so a wrapper's __getattr__ forwards it to the wrapped target.
    parallel_uploads: int

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the repository lives, for messages (no secrets)."""

    @abc.abstractmethod
    async def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` atomically, replacing any old object."""

    async def put_stream(self, name: str, pieces: AsyncIterator[bytes]) -> None:
        """Store the object the pieces make, in order, as :meth:`put` would; a piece may still be in the making.

        A target that can write as the pieces come (a local directory) starts on the first before the last
        exists; the default gathers them all, then puts. When ``pieces`` raises, nothing is stored.
        """
        await self.put(name, b"".join([piece async for piece in pieces]))

    @abc.abstractmethod
    async def get(self, name: str) -> bytes:
        """Return the whole object; ObjectNotFound if absent."""

    @abc.abstractmethod
    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes from ``offset``; ObjectNotFound if absent."""

    @abc.abstractmethod
    async def exists(self, name: str) -> bool:
        """True when the object exists."""

    @abc.abstractmethod
    async def list(self, prefix: str) -> list[ObjectInfo]:
        """All objects whose name starts with ``prefix`` (recursive)."""

    @abc.abstractmethod
    async def delete(self, name: str) -> None:
        """Remove the object; absent objects are not an error."""

    @abc.abstractmethod
    async def cleanup_leftovers(self, older_than: float) -> builtins.list[str]:
        """Remove debris of crashed writes from before ``older_than`` (a Unix time).

        Directories: ``.backstop-tmp-*`` files anywhere under the root; S3:
        unfinished multipart uploads under the prefix. Younger debris is kept,
        as a running write may still own it. Returns one human-readable line
        per thing removed.
        """

    async def prepare(self) -> None:  # noqa: B027  (optional: most targets need nothing)
        """Create the container (directory, bucket) if absent; used by `init`."""

    async def check_capabilities(self) -> None:  # noqa: B027  (optional: most targets promise nothing special)
        """Raise (one line, what to do) if the target cannot keep what its config promises; `init` calls it first."""

    async def locked_until(self, name: str) -> float | None:
        """When Object Lock retention on ``name`` ends (a Unix time), or None when nothing stops its deletion now."""
        return None

    async def close(self) -> None:  # noqa: B027  (optional: most targets hold nothing)
        """Release connections and threads."""
