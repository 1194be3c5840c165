"""Write a data directory from a physical snapshot's file list.

Each file is streamed from the repository straight to disk (never held in
memory), a bounded number at once; the stream reader checks each file at
its end (the server's CRC-32C, else its SHA-256) and this module its size. Directories are created 0700,
files with the mode the backup recorded, everything owned by the account
the server will run as. Symbolic links are made after every file (so no
write can go through one) and ``global/pg_control`` is written last: a data
directory without it is not a cluster, so an interrupted restore is never
mistaken for a finished one. Every file and directory is fsynced before
pg_control is written, and pg_control itself after.

On any failure, what was written is removed again (:func:`clear_dir`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.errors import IntegrityError, RestoreRefused
from core.libc import start_writeback
from core.repository.manifest import PG_DIR, PG_FILE, PG_SYMLINK, FileEntry
from core.threads import run_to_end

PG_CONTROL = "global/pg_control"
WAL_DIR = "pg_wal"
DIR_MODE = 0o700
# Permission bits only: a restored file is never setuid, setgid or sticky.
_PERM_MASK = 0o777
DEFAULT_WORKERS = 4

# write(entry, fd) writes the file's bytes into fd at their offsets, yielding the bytes of each piece written,
# and checks the whole file at its end (core/repository/reader.py StreamReader.write_into). It returns or raises
# only once nothing of it writes into fd any more.
StreamWriter = Callable[[FileEntry, int], AsyncGenerator[int, None]]


@dataclass(frozen=True)
class WrittenDir:
    """What :func:`write_data_dir` wrote."""

    files: int
    directories: int
    symlinks: int
    bytes: int
    created: bool  # the restore created the directory (else it was there, empty)


def check_target_dir(path: Path) -> bool:
    """Refuse a ``--pgdata`` that is anything but absent or an empty directory; True when it exists (empty)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise RestoreRefused(f"{path} exists and is not a directory; give --pgdata a new or empty directory")
    if not path.exists():
        return False
    try:
        if any(path.iterdir()):
            raise RestoreRefused(f"{path} is not empty; give --pgdata a new or empty directory (nothing is ever "
                                 "restored over existing files)")
    except PermissionError:
        raise RestoreRefused(f"cannot read {path}; give --pgdata a new or empty directory backstop can "
                             "write") from None
    return True


def relative_path(name: str) -> PurePosixPath:
    """A manifest name as a path inside the data directory; anything reaching outside it is refused."""
    p = PurePosixPath(name.removeprefix("./").rstrip("/"))
    if not p.parts or p.is_absolute() or any(part in ("..", ".", "") for part in p.parts):
        raise IntegrityError(f"snapshot manifest names a file outside the data directory ({name!r}); "
                             "the snapshot cannot be restored: run `backstop check`")
    return p


def clear_dir(root: Path, created: bool) -> None:
    """Remove what a restore wrote: ``root`` itself when the restore created it, else only its contents."""
    if created:
        shutil.rmtree(root, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        for child in root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    child.unlink()


def _fsync_path(path: Path, directory: bool) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0) | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Every file is fsynced at the end, many at once. One fsync per file as it was written cost twice: on ext4
# (data=ordered) an fsync commits the journal and waits for every dirty page of every file, so each large
# file's fsync stalled every writer (3.46 GB: the big files ended together, 0.5 s apart), and the small files'
# fsyncs one at a time per worker took 1.6 s of a 3.1 s restore (0.8 GB, 1,383 files). A large file's pages
# are handed to the kernel's writeback as soon as it is written, so the final fsyncs find them on their way.
_LARGE = 1024 * 1024
_FILE_THREADS = 8
# Files below _LARGE are written this many at once, beside the large ones: their time is hand-offs and waits.
_SMALL_WORKERS = 8




def _create(path: Path, owner: tuple[int, int] | None) -> int:
    # O_EXCL and O_NOFOLLOW: a file is only ever created, never written through a link.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Writer:
    def __init__(self, root: Path, write: StreamWriter, owner: tuple[int, int] | None,
                 on_bytes: Callable[[int], None] | None) -> None:
        self.root, self.write, self.owner, self.on_bytes = root, write, owner, on_bytes
        # Creates and fsyncs wait on the journal: never on the event loop. Creates go one at a time: they
        # take the directory's lock, and threads waiting for it spin on the CPU (perf showed 5-7% of a
        # restore's CPU there with eight at once; ext4's inode allocation is slow after a large delete).
        self.files = ThreadPoolExecutor(max_workers=_FILE_THREADS, thread_name_prefix="backstop-fsync")
        self.creates = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backstop-create")
        self.dirs: set[PurePosixPath] = set()
        self.unsynced: list[Path] = []
        self.bytes = 0

    def make_dir(self, rel: PurePosixPath) -> None:
        """``rel`` and any missing parents, 0700, owned by the server's account."""
        for part in [*reversed(rel.parents[:-1]), rel]:
            if part in self.dirs:
                continue
            path = self.root / part
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                if path.is_symlink() or not path.is_dir():
                    raise IntegrityError(f"snapshot manifest lists {part} twice (as a directory and not); "
                                         "run `backstop check`") from None
            if self.owner is not None:
                os.chown(path, *self.owner, follow_symlinks=False)
            os.chmod(path, DIR_MODE)  # checked above: a directory, not a link
            self.dirs.add(part)

    async def write_file(self, entry: FileEntry, rel: PurePosixPath, sync_now: bool = False) -> None:
        if rel.parent != PurePosixPath("."):
            self.make_dir(rel.parent)
        fd = await run_to_end(self.creates, _create, self.root / rel, self.owner, undo=os.close)
        try:
            written = 0
            copied = self.write(entry, fd)
            try:
                async for n in copied:
                    written += n
                    self._wrote(n)
            finally:
                # Closed now, not when collected: a cancelled file's reads and writes in flight stop with it.
                await copied.aclose()
            if written != entry.size:
                raise IntegrityError(f"{entry.name}: restored {written} bytes but the snapshot recorded "
                                     f"{entry.size}; run `backstop check --read-data`")
            mode = entry.mode if entry.mode is not None else 0o600
            os.fchmod(fd, mode & _PERM_MASK)
            if sync_now:
                await run_to_end(self.files, os.fsync, fd)
            else:
                if entry.size >= _LARGE:
                    await run_to_end(self.files, start_writeback, fd)
                self.unsynced.append(self.root / rel)
        finally:
            os.close(fd)

    async def sync_files(self) -> None:
        """fsync the files left for later, many at once: the journal commits them together."""
        await asyncio.gather(*(run_to_end(self.files, _fsync_path, path, False) for path in self.unsynced))
        self.unsynced.clear()

    def close(self) -> None:
        """Let the threads go (every job was awaited, run_to_end waits for those cancelled)."""
        self.files.shutdown(wait=False)
        self.creates.shutdown(wait=False)

    def _wrote(self, n: int) -> None:
        self.bytes += n
        if self.on_bytes is not None:
            self.on_bytes(n)

    def make_symlink(self, entry: FileEntry, rel: PurePosixPath) -> None:
        if not entry.link:
            raise IntegrityError(f"snapshot manifest records symbolic link {entry.name} without a target; "
                                 "run `backstop check`")
        if rel.parent != PurePosixPath("."):
            self.make_dir(rel.parent)
        path = self.root / rel
        os.symlink(entry.link, path)
        if self.owner is not None:
            os.chown(path, *self.owner, follow_symlinks=False)

    def sync_dirs(self) -> None:
        # Deepest first, then the root: every new name is durable before pg_control is written.
        for rel in sorted(self.dirs, key=lambda p: -len(p.parts)):
            _fsync_path(self.root / rel, directory=True)
        _fsync_path(self.root, directory=True)


_Entries = list[tuple[FileEntry, PurePosixPath]]


def _classify(entries: list[FileEntry]) -> tuple[_Entries, _Entries, _Entries, _Entries]:
    dirs: _Entries = []
    files: _Entries = []
    links: _Entries = []
    control: _Entries = []
    seen: set[PurePosixPath] = set()
    for e in entries:
        rel = relative_path(e.name)
        if rel in seen:
            raise IntegrityError(f"snapshot manifest lists {rel} twice; run `backstop check`")
        seen.add(rel)
        if e.format == PG_DIR:
            dirs.append((e, rel))
        elif e.format == PG_SYMLINK:
            links.append((e, rel))
        elif e.format == PG_FILE:
            (control if str(rel) == PG_CONTROL else files).append((e, rel))
        else:
            raise IntegrityError(f"snapshot manifest entry {e.name} has format {e.format!r}, not a data directory "
                                 "file; restore logical snapshots with --into")
    if not control:
        raise IntegrityError(f"the snapshot has no {PG_CONTROL}: it is not a complete base backup")
    return dirs, files, links, control


async def write_data_dir(entries: list[FileEntry], root: Path, write: StreamWriter, *,
                         workers: int = DEFAULT_WORKERS, owner: tuple[int, int] | None = None,
                         on_bytes: Callable[[int], None] | None = None) -> WrittenDir:
    """Write every entry under ``root`` (absent or empty), ``global/pg_control`` last, all fsynced.

    ``write(entry, fd)`` writes a file's bytes into ``fd`` (checked at its
    end); ``workers`` files of 1 MiB or more are written at once (and
    more small ones beside them); ``owner`` (uid, gid) owns everything
    written; ``on_bytes(n)`` reports progress. On failure (including
    cancellation) everything written is removed.
    """
    existed = check_target_dir(root)
    dirs, files, links, control = _classify(entries)
    w = _Writer(root, write, owner, on_bytes)
    try:
        if not existed:
            root.mkdir(parents=True, mode=DIR_MODE)
        if owner is not None:
            os.chown(root, *owner)
        os.chmod(root, DIR_MODE)
        for _, rel in dirs:
            w.make_dir(rel)
        if not any(str(rel) == WAL_DIR for _, rel in dirs + links):
            w.make_dir(PurePosixPath(WAL_DIR))  # the server refuses to start without it; recovery fills it
        # Largest first: the big relation files overlap instead of one finishing alone at the end. Small files
        # have workers of their own, beside the big ones: they use the threads the big streams leave idle.
        ordered = sorted(files, key=lambda f: -f[0].size)
        large: Iterator[tuple[FileEntry, PurePosixPath]] = iter([f for f in ordered if f[0].size >= _LARGE])
        small: Iterator[tuple[FileEntry, PurePosixPath]] = iter([f for f in ordered if f[0].size < _LARGE])

        async def worker(todo: Iterator[tuple[FileEntry, PurePosixPath]]) -> None:
            for entry, rel in todo:
                await w.write_file(entry, rel)

        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, workers)):
                group.create_task(worker(large))
            for _ in range(_SMALL_WORKERS):
                group.create_task(worker(small))
        await w.sync_files()
        for entry, rel in links:
            w.make_symlink(entry, rel)
        await run_to_end(w.files, w.sync_dirs)  # a few dozen fsyncs: not on the event loop
        for entry, rel in control:
            await w.write_file(entry, rel, sync_now=True)
        await run_to_end(w.files, _fsync_path, root / PurePosixPath(PG_CONTROL).parent, True)
    except BaseException as exc:
        clear_dir(root, created=not existed)
        if isinstance(exc, BaseExceptionGroup):
            # TaskGroup wraps a worker's error: the operator needs the error itself.
            first = _first_leaf(exc)
            if first is not None:
                raise first from None
        raise
    finally:
        w.close()
    return WrittenDir(files=len(files) + len(control), directories=len(w.dirs), symlinks=len(links), bytes=w.bytes,
                      created=not existed)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first_leaf(exc)
            if found is not None:
                return found
        else:
            return exc
    return None

