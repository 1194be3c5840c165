"""A repository in a local (or mounted) directory."""

from __future__ import annotations

import asyncio
import errno
import os
import uuid
from pathlib import Path

from core.config import LocalTargetConfig
from core.errors import ObjectNotFound, StorageError, TargetUnreachable
from core.storage.base import ObjectInfo, Storage

# Temp files of in-flight (or crashed) writes start with this; list() hides them.
TEMP_PREFIX = ".backstop-tmp-"

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage(Storage):
    """Objects are files under ``config.path``; names map to relative paths."""

    def __init__(self, config: LocalTargetConfig) -> None:
        self.config = config
        self.name = config.name
        self.root = Path(config.path)

    def describe(self) -> str:
        return f"directory {self.root}"

    # -- helpers ---------------------------------------------------------

    def _path(self, name: str) -> Path:
        """The file for ``name``; refuses names that could escape the root."""
        parts = name.split("/")
        if (
            not name
            or name.startswith("/")
            or "\\" in name
            or "\0" in name
            or any(p in ("", ".", "..") for p in parts)
            or parts[-1].startswith(TEMP_PREFIX)
        ):
            raise StorageError(self.name, f"invalid object name {name!r} (a bug in Backstop; please report it)")
        return self.root.joinpath(*parts)

    def _check_root(self) -> None:
        """Raise TargetUnreachable unless the repository directory is usable."""
        try:
            if self.root.is_dir():
                return
            self.root.stat()  # surfaces ENOENT / ENOTDIR / EACCES with its strerror
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise TargetUnreachable(
                self.name,
                f"directory {self.root} is not accessible: {reason}; "
                "check that the disk is mounted and the path is right (backstop init creates it)",
            ) from None
        raise TargetUnreachable(self.name, f"{self.root} is not a directory; fix the target's path")

    def _os_error(self, exc: OSError, action: str, where: Path) -> StorageError:
        """Turn an OSError into a one-line StorageError naming the target."""
        reason = exc.strerror or str(exc)
        if exc.errno in _DENIED_ERRNOS:
            return StorageError(
                self.name,
                f"directory {where} is not writable: {reason}; fix its permissions or run as the owning user"
                if action == "write"
                else f"cannot {action} {where}: {reason}; fix its permissions or run as the owning user",
            )
        if exc.errno in _FULL_ERRNOS:
            return StorageError(
                self.name, f"disk holding {self.root} is full ({reason}); free some space and retry"
            )
        if exc.errno == errno.ENOTDIR:
            return StorageError(
                self.name,
                f"cannot {action} {where}: a path component is a file, not a directory; fix the target's path",
            )
        return StorageError(self.name, f"cannot {action} {where}: {reason}")

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and missing parents below the root, durably."""
        missing: list[Path] = []
        d = directory
        while d != self.root and not d.is_dir():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                # A concurrent writer may create it; anything but a directory is an error.
                if not d.is_dir():
                    raise
                continue
            _fsync_dir(d.parent)

    # -- blocking implementations -----------------------------------------

    def _put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self._check_root()
        try:
            self._make_dirs(path.parent)
        except OSError as exc:
            raise self._os_error(exc, "write", path.parent) from None
        tmp = path.parent / f"{TEMP_PREFIX}{path.name}.{uuid.uuid4().hex[:12]}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise self._os_error(exc, "write", path.parent) from None
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in _FULL_ERRNOS:
                raise StorageError(
                    self.name,
                    f"disk holding {self.root} is full ({exc.strerror}) while writing {name}; "
                    "the partial object was removed; free some space and retry",
                ) from None
            raise self._os_error(exc, "write", path) from None
        except BaseException:
            # Interrupted mid-write: never leave a temp file behind.
            tmp.unlink(missing_ok=True)
            raise

    def _read(self, name: str, offset: int, length: int | None) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                if length is None:
                    return f.read()
                f.seek(offset)
                data = f.read(length)
        except (FileNotFoundError, NotADirectoryError):
            self._check_root()
            raise ObjectNotFound(self.name, name) from None
        except IsADirectoryError:
            raise ObjectNotFound(self.name, name) from None
        except OSError as exc:
            raise self._os_error(exc, "read", path) from None
        if len(data) != length:
            raise StorageError(
                self.name,
                f"object {name} is shorter than expected: wanted {length} bytes at offset {offset}, "
                f"got {len(data)}; the object is truncated or the caller's index is wrong; verify the repository",
            )
        return data

    def _exists(self, name: str) -> bool:
        path = self._path(name)
        try:
            if path.is_file():
                return True
        except OSError as exc:
            raise self._os_error(exc, "read", path) from None
        # Absent: make sure it is not because the whole target is gone.
        self._check_root()
        return False

    def _list(self, prefix: str) -> list[ObjectInfo]:
        # Walk only the deepest directory the prefix fully names.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if base:
            self._path(base)  # validates: no '..', no absolute paths
        self._check_root()
        start = self.root.joinpath(*base.split("/")) if base else self.root
        found: list[ObjectInfo] = []
        stack: list[tuple[Path, str]] = [(start, f"{base}/" if base else "")]
        while stack:
            directory, rel = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise self._os_error(exc, "list", directory) from None
            for entry in entries:
                name = rel + entry.name
                if entry.name.startswith(TEMP_PREFIX):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if prefix.startswith(name + "/") or name.startswith(prefix):
                            stack.append((Path(entry.path), name + "/"))
                    elif name.startswith(prefix) and entry.is_file():
                        st = entry.stat()
                        found.append(ObjectInfo(name=name, size=st.st_size, mtime=st.st_mtime))
                except FileNotFoundError:
                    continue  # deleted while we walked
                except OSError as exc:
                    raise self._os_error(exc, "list", Path(entry.path)) from None
        found.sort(key=lambda o: o.name)
        return found

    def _delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            self._check_root()
            return
        except OSError as exc:
            raise self._os_error(exc, "delete", path) from None
        try:
            _fsync_dir(path.parent)
        except OSError as exc:
            raise self._os_error(exc, "delete", path) from None

    def _ensure_directory(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._os_error(exc, "write", self.root) from None
        self._check_root()
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(
                self.name,
                f"directory {self.root} is not writable: Permission denied; fix its permissions "
                "or run as the owning user",
            )

    # -- Storage API ---------------------------------------------------------

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, name, data)

    async def get(self, name: str) -> bytes:
        return await asyncio.to_thread(self._read, name, 0, None)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise StorageError(self.name, f"invalid range {offset}+{length} for {name} (a bug in Backstop)")
        return await asyncio.to_thread(self._read, name, offset, length)

    async def exists(self, name: str) -> bool:
        return await asyncio.to_thread(self._exists, name)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await asyncio.to_thread(self._list, prefix)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self._delete, name)

    async def ensure_directory(self) -> None:
        """Create the repository directory if needed (used by `backstop init`)."""
        await asyncio.to_thread(self._ensure_directory)

    async def prepare(self) -> None:
        await self.ensure_directory()
