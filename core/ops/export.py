"""`backstop export`: a stored logical snapshot as a standard pg_dump archive, so no one is locked in.

custom and directory are what ``pg_dump -Fc`` / ``-Fd -Z0`` write (``pg_restore``
reads them), plain is the SQL script ``pg_restore -f`` prints from the custom
archive (``psql`` reads it). A format 2 snapshot's schema archive gets a TABLE
DATA entry per table whose data is the table's stored COPY stream
(FORMAT.md 10.1); a format 1 snapshot already is a custom archive. Everything
streams from the repository to the output: memory stays flat whatever the
size. The output is written under a temporary sibling name and renamed into
place when complete; a failed export removes what it wrote.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shlex
import shutil
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.context import EngineContext
from core.errors import PostgresError, UsageError
from core.jobs import Job, run_job
from core.ops.restore import recent_health
from core.postgres.archive import (
    Archive,
    DataBlock,
    Header,
    TocEntry,
    merge_data,
    read_archive,
    with_table_data,
    write_custom,
    write_directory,
)
from core.postgres.logical import tool_failure
from core.postgres.tools import find_bin_dir, tool_major
from core.repository import quarantine
from core.repository.manifest import SCHEMA_FILE, FileEntry, Manifest
from core.repository.reader import StreamReader, check_complete
from core.repository.sources import ReadSources
from core.repository.tiers import FrozenCopies, packs_of, plan_reads

FORMATS = ("custom", "directory", "plain")
_WRITE_SIZE = 1 << 20


@dataclass(frozen=True)
class ExportResult:
    snapshot_id: str
    db: str
    format: str
    path: str
    bytes: int  # written: the file, or every file of the directory
    tables: int
    pg_dump_version: str  # of the pg_dump that wrote the archive: pg_restore must be at least as new
    duration_s: float
    warnings: list[str] = field(default_factory=list)

    @property
    def restore_hint(self) -> str:
        """The command that restores the export into a new database."""
        path = shlex.quote(self.path)
        if self.format == "plain":
            return f"createdb NEWDB && psql -v ON_ERROR_STOP=1 -d NEWDB -f {path}"
        return f"createdb NEWDB && pg_restore -d NEWDB {path}"


async def export(ctx: EngineContext, db_name: str, path: str | Path, fmt: str,
                 snapshot: str = "latest") -> ExportResult:
    """Write snapshot ``snapshot`` of ``db_name`` to ``path`` as a pg_dump archive (custom, directory) or
    SQL script (plain). Refuses an existing path (but an empty directory for ``directory``)."""
    if fmt not in FORMATS:
        raise UsageError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    dbc = ctx.config.database(db_name)
    out = _Output(Path(path).expanduser().absolute(), directory=fmt == "directory")
    out.refuse_existing()
    snap = await ctx.find_snapshot(snapshot, db_name, kind="logical")
    if snap.kind == "physical":
        raise UsageError(f"snapshot {snap.short_id} is a physical snapshot: export is for logical snapshots "
                         "(a physical one restores with `backstop restore --type physical`)")
    t0 = time.monotonic()
    async with run_job(ctx.bus, "export", db_name, f"export of {db_name} snapshot {snap.short_id} to {out.path} "
                       f"({fmt})") as job:
        repo = await ctx.open_repository(require_all=False)
        for name, msg in {**repo.unreachable, **repo.damaged}.items():
            job.warn(f"target '{name}' skipped: {msg}")
        sources = ReadSources.for_targets(repo.storages, ctx.config.targets,
                                          health=recent_health(ctx))
        repo.storages[:] = sources.storages  # best first (priority), failing over per object
        job.phase("prepare")
        manifest = await repo.read_manifest(snap.id)
        frozen = await FrozenCopies.scan(repo.storages)  # archived packs (FORMAT.md 12.6)
        index = await repo.load_index(common=False, avoid=await quarantine.load(repo) | frozen.packs())
        for f in manifest.files:
            check_complete(f, index)  # before anything is written
        sources.frozen, notes = await plan_reads(repo.storages, frozen, packs_of(manifest.files, index), snap.id)
        for note in notes:
            job.warn(note)
        reader = StreamReader(repo, index, ctx.pool, on_damage=job.warn, sources=sources)
        streams = _Streams(reader, sum(f.size for f in manifest.files), job)
        run = _Export(manifest, streams, out, fmt, dbc.bin_dir)
        try:
            job.phase("export")
            await run.write()
            job.phase("finish")
            written = await out.publish()
        except BaseException:
            out.discard()  # not in a thread: a second interruption must not leave it half done
            raise
        finally:
            if reader.findings:  # the next backup stores fresh copies of what was found damaged
                held = await quarantine.add(repo, reader.findings, "export")
                job.warn(f"{len(held)} damaged pack(s) quarantined: the next backup stores fresh copies of "
                         "their chunks")
        duration = time.monotonic() - t0
        tables = len(manifest.table_files()) if manifest.per_table else len(manifest.tables)
        job.result = {"snapshot": snap.id, "format": fmt, "path": str(out.path), "bytes": written,
                      "duration_s": round(duration, 3)}
        return ExportResult(snap.id, db_name, fmt, str(out.path), written, tables, run.dump_version, duration,
                            list(job.warnings))


class _Export:
    """One export's reading and writing, for either manifest format and any output format."""

    def __init__(self, manifest: Manifest, streams: _Streams, out: _Output, fmt: str,
                 bin_dir: Path | None) -> None:
        self.manifest, self.streams, self.out, self.fmt, self.configured_bin_dir = (
            manifest, streams, out, fmt, bin_dir)
        self.dump_version = manifest.tool_versions.get("pg_dump", "")

    async def write(self) -> None:
        """Read the snapshot's streams and write the output under its temporary name."""
        m = self.manifest
        if not m.per_table and self.fmt == "custom":
            # A format 1 snapshot is a custom archive already: copied as stored, byte for byte.
            await self.out.write_file(self.streams.stream(m.files[0]))
            return
        archive = await read_archive(self.streams.stream(m.file(SCHEMA_FILE) if m.per_table else m.files[0]))
        try:
            self.dump_version = archive.header.dump_version or self.dump_version
            blocks = archive.blocks()
            entries, data = self._with_tables(archive, blocks) if m.per_table else (archive.entries, blocks)
            await self._write_archive(archive.header, entries, data)
            async for _ in blocks:  # to the stored stream's end, where its SHA-256 is checked
                pass
        finally:
            await archive.aclose()

    def _with_tables(self, archive: Archive, blocks: AsyncIterator[DataBlock]) -> tuple[
            list[TocEntry], AsyncIterator[DataBlock]]:
        """The schema archive's entries plus a TABLE DATA entry per stored table stream, and their data
        (the table streams, and the schema archive's own blocks: large objects)."""
        check_encoding(archive, self.manifest.encoding)
        files = {(f.relation[0], f.relation[1]): f for f in self.manifest.table_files() if f.relation is not None}
        entries, ids = with_table_data(archive.entries, {rel: f.columns or [] for rel, f in files.items()})
        tables = {ids[rel]: self._opener(f) for rel, f in files.items()}
        return entries, merge_data(entries, tables, blocks)

    def _opener(self, entry: FileEntry) -> Callable[[], AsyncIterable[bytes]]:
        return lambda: self.streams.stream(entry)

    async def _write_archive(self, header: Header, entries: list[TocEntry], data: AsyncIterable[DataBlock]) -> None:
        if self.fmt == "directory":
            await self.out.write_directory(header, entries, data)
        elif self.fmt == "custom":
            await self.out.write_file(write_custom(header, entries, data))
        else:
            bin_dir = self._pg_restore_dir(header)
            await self.out.write_script(bin_dir, write_custom(header, entries, data))

    def _pg_restore_dir(self, header: Header) -> Path:
        """The pg_restore for the plain script: of the archive's own major when installed (a newer one may
        print settings an older server rejects, e.g. transaction_timeout)."""
        major = dump_major(header.dump_version)
        tools = ("pg_restore",)
        if self.configured_bin_dir is None:
            return find_bin_dir(major, None, tools=tools)
        bin_dir = find_bin_dir(None, self.configured_bin_dir, tools=tools)
        have = tool_major(bin_dir, "pg_restore")
        if major is not None and have < major:
            raise PostgresError(f"the snapshot was dumped by pg_dump {major} but bin_dir {bin_dir} holds "
                                f"pg_restore {have}; set bin_dir to PostgreSQL >= {major} binaries")
        return bin_dir


def _norm_encoding(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", name.upper())


def check_encoding(archive: Archive, encoding: str) -> None:
    """Refuse a schema archive whose encoding differs from the table streams': one archive has one encoding."""
    entry = archive.toc.find("ENCODING", None, "ENCODING")
    match = re.search(r"client_encoding\s*=\s*'([^']*)'", entry.defn or "") if entry else None
    if encoding and match is not None and _norm_encoding(match.group(1)) != _norm_encoding(encoding):
        raise PostgresError(f"the snapshot's schema archive is in {match.group(1)} but its table data in "
                            f"{encoding}: it cannot be exported as one archive; restore it with backstop restore")


def dump_major(version: str) -> int | None:
    """The major of a pg_dump version string (``16.4 (Debian ...)`` -> 16)."""
    match = re.match(r"\s*(\d+)", version)
    return int(match.group(1)) if match else None


class _Streams:
    """Opens stored streams; reports progress as the bytes read of all of them."""

    def __init__(self, reader: StreamReader, total: int, job: Job) -> None:
        self.reader, self.total, self.job = reader, total, job
        self.done = 0
        self._last = 0.0

    async def stream(self, entry: FileEntry) -> AsyncIterator[bytes]:
        async for piece in self.reader.stream(entry):
            self.done += len(piece)
            now = time.monotonic()
            if now - self._last > 0.2:
                self._last = now
                self.job.progress(self.done, self.total)
            yield piece


class _Output:
    """The export's path: written under a temporary sibling name, renamed into place once complete."""

    def __init__(self, path: Path, directory: bool) -> None:
        self.path = path
        self.directory = directory
        # Hidden, and named after the export: an interrupted run's leftover says what it was.
        self.temp = path.with_name(f".{path.name[:120]}.backstop-{uuid.uuid4().hex[:8]}.partial")
        self._created = False

    def refuse_existing(self) -> None:
        """UsageError unless the path is new (or, for a directory archive, an empty directory)."""
        if not self.path.name or not self.path.parent.is_dir():
            raise UsageError(f"cannot write {self.path}: the directory {self.path.parent} does not exist")
        if not os.path.lexists(self.path):
            return
        if self.directory and self.path.is_dir() and not self.path.is_symlink():
            try:
                if not any(self.path.iterdir()):
                    return
            except OSError:
                pass
            raise UsageError(f"{self.path} exists and is not an empty directory; export writes only to a new "
                             "path: name another with -o")
        raise UsageError(f"{self.path} already exists; export never overwrites: name a new path with -o")

    def _create_file(self) -> int:
        fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._created = True
        return fd

    async def write_file(self, stream: AsyncIterable[bytes]) -> None:
        """Write ``stream`` into a new file (owner-only: it holds the database's data)."""
        fd = await asyncio.to_thread(self._create_file)
        try:
            buf = bytearray()
            async for piece in stream:
                buf += piece
                if len(buf) >= _WRITE_SIZE:
                    await asyncio.to_thread(_write_all, fd, bytes(buf))
                    buf.clear()
            await asyncio.to_thread(_write_all, fd, bytes(buf))
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)

    async def write_directory(self, header: Header, entries: list[TocEntry], data: AsyncIterable[DataBlock]) -> None:
        """Write a directory archive."""
        await asyncio.to_thread(self.temp.mkdir, 0o700)  # ours alone; write_directory fills an empty one
        self._created = True
        await write_directory(self.temp, header, entries, data)
        await asyncio.to_thread(_sync_tree, self.temp)

    async def write_script(self, bin_dir: Path, archive: AsyncIterable[bytes]) -> None:
        """The plain SQL script: ``archive`` streamed through ``pg_restore --file``."""
        os.close(await asyncio.to_thread(self._create_file))  # pg_restore truncates it and keeps the mode
        tool = bin_dir / "pg_restore"
        try:
            proc = await asyncio.create_subprocess_exec(
                str(tool), f"--file={self.temp}", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise PostgresError(f"cannot run {tool}: {exc.strerror}; check bin_dir") from None
        assert proc.stdin is not None and proc.stderr is not None
        err_task = asyncio.ensure_future(proc.stderr.read())
        try:
            async for piece in archive:
                proc.stdin.write(piece)
                await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # pg_restore stopped reading: its exit status says why
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        rc = await proc.wait()
        if rc != 0:
            cause = tool_failure("pg_restore", (await err_task).decode(errors="replace"), rc)
            raise PostgresError(f"pg_restore could not write the SQL script: {cause}")
        await err_task
        await asyncio.to_thread(_sync_file, self.temp)

    async def publish(self) -> int:
        """Rename the finished output into place (never over anything); returns its size in bytes."""
        size = await asyncio.to_thread(_tree_size if self.directory else _file_size, self.temp)
        await asyncio.to_thread(self._rename)
        return size

    def _rename(self) -> None:
        try:
            if self.directory:
                os.rename(self.temp, self.path)  # fails over anything but an empty directory
            else:
                _link_no_replace(self.temp, self.path)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise UsageError(f"{self.path} appeared while the export ran; nothing was overwritten and the "
                                 "export was removed: name a new path with -o") from None
            raise PostgresError(f"cannot rename {self.temp.name} to {self.path}: {exc.strerror}") from None
        self._created = False
        _sync_file(self.path.parent)

    def discard(self) -> None:
        """Remove the temporary output (only if this export created it)."""
        if not self._created:
            return
        if self.temp.is_dir() and not self.temp.is_symlink():
            shutil.rmtree(self.temp, ignore_errors=True)
        else:
            self.temp.unlink(missing_ok=True)
        self._created = False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _link_no_replace(temp: Path, path: Path) -> None:
    """Give ``temp`` the name ``path`` unless something has it (a hard link fails then; rename would not)."""
    try:
        os.link(temp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        # A file system without hard links: the next best is to look first.
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists") from None
        os.rename(temp, path)
        return
    os.unlink(temp)


def _sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    for entry in root.iterdir():
        _sync_file(entry)
    _sync_file(root)


def _file_size(path: Path) -> int:
    return path.stat().st_size


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.iterdir())
