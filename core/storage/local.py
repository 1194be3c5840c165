"""A repository in a local (or mounted) directory."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import os
import stat
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.config import LocalTargetConfig
from core.errors import ObjectDamaged, ObjectNotFound, StorageError, TargetUnreachable
from core.format import utc
from core.libc import start_writeback
from core.storage.base import ObjectInfo, Storage
from core.storage.immutability import APPEND_ONLY_DELETABLE, APPEND_ONLY_REPLACEABLE, Kept, refused
from core.storage.throttle import Limits
from core.threads import run_to_end

# Temp files of in-flight (or crashed) writes start with this; list() hides them.
TEMP_PREFIX = ".backstop-tmp-"

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}

# The repository holds wrapped keys, sealed operator secrets and the audit log:
# only the backup user may read it, whatever the umask of whoever runs Backstop.
FILE_MODE = 0o600
DIR_MODE = 0o700
# chmod failing with these means the file system fixes modes itself (vfat, some
# SMB/NFS mounts); the mode given at creation is then the best there is.
_NO_CHMOD_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _set_mode(target: int | Path, mode: int) -> None:
    """chmod a file descriptor or path we just created to exactly ``mode`` (the umask may have cut bits)."""
    try:
        if isinstance(target, int):
            os.fchmod(target, mode)
        else:
            os.chmod(target, mode)
    except OSError as exc:
        if exc.errno not in _NO_CHMOD_ERRNOS:
            raise


def _when(ts: float) -> str:
    return utc(ts, "%Y-%m-%d %H:%M:%S UTC")


class _Temp:
    """A temporary file being written for object ``name`` (renamed to ``path`` once complete)."""

    def __init__(self, name: str, path: Path, tmp: Path, fd: int) -> None:
        self.name, self.path, self.tmp, self.fd = name, path, tmp, fd
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True  # first: a failing close is not retried (the number may be reused at once)
            os.close(self.fd)

    def discard(self) -> None:
        """Close and remove it (after a failure; nothing of a half-written object stays)."""
        with contextlib.suppress(OSError):
            self.close()
        self.tmp.unlink(missing_ok=True)


class LocalStorage(Storage):
    """Objects are files under ``config.path``; names map to relative paths."""

    def __init__(self, config: LocalTargetConfig) -> None:
        self.config = config
        self.name = config.name
        self.root = Path(config.path)
        # Bandwidth limits shared by every call of this target (core/storage/throttle.py).
        self.limits = Limits.of(config)
        self.parallel_uploads = config.parallel_uploads
        # FORMAT.md 23: no deletes or rewrites here, unless an operator lifts it for one run.
        self.append_only = config.append_only

    def describe(self) -> str:
        return f"directory {self.root}"

    def lift_append_only(self, lifted: bool = True) -> None:
        """Allow deletes until called with ``lifted=False`` (`backstop prune --append-only-override`)."""
        self.append_only = self.config.append_only and not lifted

    def _refuse_rewrite(self, name: str, data: bytes) -> bool:
        """On an append-only target, writing other bytes over an existing object is refused (same bytes: a no-op)."""
        path = self._path(name)
        try:
            current = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._os_error(exc, "read", path) from None
        if current == data:
            return True  # already there: nothing to write
        raise StorageError(self.name, f"{name} exists on this append-only target and Backstop never rewrites "
                                      "objects there; repair it on that host (append_only: false for one run)")

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

    def _not_a_directory(self, where: Path) -> StorageError:
        """The error for a path component that exists but is no directory."""
        what = "is a file, not a directory" if where.is_file() else "exists but is not a directory"
        if where == self.root:
            return StorageError(self.name, f"{where} {what}; fix the target's path")
        if self.root.is_relative_to(where):
            return StorageError(self.name, f"{where} {what} (in the target's path {self.root}); fix the target's path")
        return StorageError(self.name, f"{where} {what} inside the repository; move it out of {self.root}")

    def _create_dirs(self, missing: list[Path], durable: bool) -> None:
        """mkdir ``missing`` (outermost last) with DIR_MODE; directories someone else made are left alone."""
        for d in reversed(missing):
            try:
                os.mkdir(d, DIR_MODE)
            except FileExistsError:
                # A concurrent writer may create it; anything but a directory is an error.
                if not d.is_dir():
                    raise self._not_a_directory(d) from None
                continue
            _set_mode(d, DIR_MODE)
            if durable:
                _fsync_dir(d.parent)

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and missing parents below the root, durably."""
        missing: list[Path] = []
        d = directory
        while d != self.root and not d.is_dir():
            missing.append(d)
            d = d.parent
        self._create_dirs(missing, durable=True)

    # -- blocking implementations -----------------------------------------

    def _put(self, name: str, data: bytes) -> None:
        temp = self._open_temp(name)
        try:
            self._write_piece(temp, data)
            self._seal(temp)
        except BaseException:
            # Interrupted mid-write: never leave a temp file behind.
            temp.discard()
            raise

    def _open_temp(self, name: str) -> _Temp:
        """A new temporary file beside where ``name`` goes (its directories made durably)."""
        path = self._path(name)
        self._check_root()
        try:
            self._make_dirs(path.parent)
        except OSError as exc:
            raise self._os_error(exc, "write", path.parent) from None
        tmp = path.parent / f"{TEMP_PREFIX}{path.name}.{uuid.uuid4().hex[:12]}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise self._os_error(exc, "write", path.parent) from None
        temp = _Temp(name, path, tmp, fd)
        try:
            _set_mode(fd, FILE_MODE)
        except OSError as exc:
            temp.discard()
            raise self._write_error(exc, temp) from None
        return temp

    def _write_piece(self, temp: _Temp, data: bytes, hint: bool = False) -> None:
        """Append ``data``; ``hint``: start the disk on it now (more pieces follow, the fsync finds less to do)."""
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(temp.fd, view):]
            if hint:
                start_writeback(temp.fd)
        except OSError as exc:
            raise self._write_error(exc, temp) from None

    def _seal(self, temp: _Temp) -> None:
        """fsync, close, rename into place, fsync the directory: the object is complete and durable."""
        try:
            os.fsync(temp.fd)
            temp.close()
            os.replace(temp.tmp, temp.path)
            _fsync_dir(temp.path.parent)
        except OSError as exc:
            raise self._write_error(exc, temp) from None

    def _write_error(self, exc: OSError, temp: _Temp) -> StorageError:
        if exc.errno in _FULL_ERRNOS:
            return StorageError(self.name, f"disk holding {self.root} is full ({exc.strerror}) while writing "
                                           f"{temp.name}; the partial object was removed; free some space and retry")
        return self._os_error(exc, "write", temp.path)

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
            raise ObjectDamaged(
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

    def _cleanup_leftovers(self, older_than: float) -> list[str]:
        self._check_root()
        removed: list[str] = []
        stack: list[tuple[Path, str]] = [(self.root, "")]
        while stack:
            directory, rel = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise self._os_error(exc, "list", directory) from None
            unlinked = False
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((Path(entry.path), f"{rel}{entry.name}/"))
                        continue
                    if not entry.name.startswith(TEMP_PREFIX) or not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    # A younger temp file may belong to a write in progress.
                    if st.st_mtime >= older_than:
                        continue
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue  # renamed into place or removed while we walked
                except OSError as exc:
                    raise self._os_error(exc, "delete", Path(entry.path)) from None
                unlinked = True
                removed.append(
                    f"removed leftover temp file {rel}{entry.name} "
                    f"({st.st_size} bytes, last written {_when(st.st_mtime)})"
                )
            if unlinked:
                try:
                    _fsync_dir(directory)
                except OSError as exc:
                    raise self._os_error(exc, "delete", directory) from None
        removed.sort()
        return removed

    def _ensure_directory(self) -> None:
        # Walk up to the first existing component: only what is missing is created
        # (and made private); an existing root keeps the mode its owner gave it.
        missing: list[Path] = []
        d = self.root
        while True:
            try:
                st = d.stat()
            except (FileNotFoundError, NotADirectoryError):
                if d.parent == d:
                    raise StorageError(self.name, f"cannot create {self.root}: no existing parent directory") from None
                missing.append(d)
                d = d.parent
                continue
            except OSError as exc:
                raise self._os_error(exc, "write", d) from None
            if not stat.S_ISDIR(st.st_mode):
                raise self._not_a_directory(d)
            break
        try:
            self._create_dirs(missing, durable=False)
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
        await self.limits.before_upload(len(data))
        if self.append_only and not name.startswith(APPEND_ONLY_REPLACEABLE):
            if await asyncio.to_thread(self._refuse_rewrite, name, data):
                return
        await asyncio.to_thread(self._put, name, data)

    async def put_stream(self, name: str, pieces: AsyncIterator[bytes]) -> None:
        """Write each piece as it comes, its writeback started at once; fsync and rename after the last."""
        if self.append_only and not name.startswith(APPEND_ONLY_REPLACEABLE):
            await super().put_stream(name, pieces)  # the rewrite check needs the whole object first
            return
        # One thread of its own, and run_to_end: a cancelled write stops before the descriptor is closed.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backstop-put")
        try:
            temp = await run_to_end(pool, self._open_temp, name, undo=_Temp.discard)
            try:
                async for piece in pieces:
                    await self.limits.before_upload(len(piece))
                    await run_to_end(pool, self._write_piece, temp, piece, True)
                await run_to_end(pool, self._seal, temp)
            except BaseException:
                temp.discard()
                raise
        finally:
            pool.shutdown(wait=False)

    async def get(self, name: str) -> bytes:
        return await self.limits.paced_get(lambda: asyncio.to_thread(self._read, name, 0, None))

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise StorageError(self.name, f"invalid range {offset}+{length} for {name} (a bug in Backstop)")
        await self.limits.before_download(length)
        return await asyncio.to_thread(self._read, name, offset, length)

    async def exists(self, name: str) -> bool:
        return await asyncio.to_thread(self._exists, name)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await asyncio.to_thread(self._list, prefix)

    async def delete(self, name: str) -> None:
        if self.append_only and not name.startswith(APPEND_ONLY_DELETABLE):
            raise refused(Kept(self.name, name, None))
        await asyncio.to_thread(self._delete, name)

    async def cleanup_leftovers(self, older_than: float) -> builtins.list[str]:
        return await asyncio.to_thread(self._cleanup_leftovers, older_than)

    async def ensure_directory(self) -> None:
        """Create the repository directory if needed (used by `backstop init`)."""
        await asyncio.to_thread(self._ensure_directory)

    async def prepare(self) -> None:
        await self.ensure_directory()
