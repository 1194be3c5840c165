"""Write pg_dump archives: the custom format as a byte stream, the directory format into a directory.

The custom format is written as pg_dump writes it to a pipe: header, TOC
with every data position "not set", then the data blocks in TOC order, each
chunk framed by its length. pg_restore reads such an archive sequentially,
from a file or from its standard input. The directory format is a toc.dat
(the same header and TOC, with each entry's data file name instead of its
position) and one file per data entry.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

from core.errors import PostgresError
from core.postgres.archive.model import (
    BLK_BLOBS,
    BLK_DATA,
    COPY_END,
    FORMAT_CUSTOM,
    FORMAT_TAR,
    MAGIC,
    MAX_FRAME,
    OFFSET_NO_DATA,
    OFFSET_NOT_SET,
    DataBlock,
    Header,
    LargeObjects,
    TableData,
    TocEntry,
    check_version,
    encode_int,
    encode_offset,
    encode_oid,
    encode_str,
)
from core.postgres.archive.toc import Toc

# Bytes gathered before they are handed on: pg_dump frames every COPY row on its
# own, and one write or yield per row would cost more than the data.
_OUT_SIZE = 1 << 20
# WriteInt of a non-negative length with 4-byte integers, the size every pg_dump uses.
_LENGTH = struct.Struct("<BI")


def _encode_header(header: Header, fmt: int) -> bytes:
    check_version(header.version)
    if header.compression != "none":
        raise PostgresError(f"cannot write an archive compressed with {header.compression}; "
                            "backstop writes uncompressed archives")
    n = header.int_size
    out = bytearray(MAGIC)
    out += bytes([*header.version, header.int_size, header.offset_size, fmt])
    # Archive 1.15 replaced the compression level (an int) by the algorithm (a byte); 0 is none in both.
    out += b"\0" if header.version[1] >= 15 else encode_int(0, n)
    for number in header.created:
        out += encode_int(number, n)
    for name in (header.dbname, header.server_version, header.dump_version):
        out += encode_str(name, n)
    return bytes(out)


def _encode_entry(header: Header, entry: TocEntry, extra: bytes) -> bytes:
    n = header.int_size
    out = bytearray()
    out += encode_int(entry.dump_id, n)
    out += encode_int(1 if entry.had_dumper else 0, n)
    # Oids are stored as strings, "for historical reasons" (pg_backup_archiver.c).
    for name in (str(entry.table_oid), str(entry.oid), entry.tag, entry.desc):
        out += encode_str(name, n)
    out += encode_int(int(entry.section), n)
    for optional in (entry.defn, entry.drop_stmt, entry.copy_stmt, entry.namespace, entry.tablespace, entry.tableam):
        out += encode_str(optional, n)
    if header.version[1] >= 16:
        out += encode_int(entry.relkind, n)
    out += encode_str(entry.owner, n)
    out += encode_str("false", n)  # "with oids", gone since PostgreSQL 12
    for dep in entry.deps:
        out += encode_str(str(dep), n)
    out += encode_str(None, n)  # end of the dependency list
    return bytes(out + extra)


def _encode_toc(header: Header, entries: Sequence[TocEntry], extra: Callable[[TocEntry], bytes]) -> bytes:
    Toc(entries)  # refuses duplicate dump ids
    parts = [encode_int(len(entries), header.int_size)]
    parts += [_encode_entry(header, e, extra(e)) for e in entries]
    return b"".join(parts)


async def _in_order(entries: Sequence[TocEntry], data: AsyncIterable[DataBlock]) -> AsyncIterator[
        tuple[TocEntry, DataBlock]]:
    """Pair each entry that has data with its block, checking the blocks come in TOC order."""
    wanted = [e for e in entries if e.had_dumper]
    i = 0
    async for block in data:
        if i == len(wanted):
            raise PostgresError(f"data was supplied for dump id {block.dump_id}, but no further entry of the "
                                "archive has data")
        entry = wanted[i]
        if block.dump_id != entry.dump_id:
            raise PostgresError(f"data for dump id {block.dump_id} came where {entry.label()} was due: "
                                "data must come in the order of the archive's entries")
        if isinstance(block, LargeObjects) != (entry.desc == "BLOBS"):
            raise PostgresError(f"the data supplied for {entry.label()} is of the wrong kind")
        yield entry, block
        i += 1
    if i < len(wanted):
        raise PostgresError(f"no data was supplied for {wanted[i].label()}; every entry with data needs its block")


def _add_frames(out: bytearray, chunk: bytes | memoryview, int_size: int) -> None:
    """Append a chunk as one or more frames (length, bytes); none for an empty chunk, since 0 ends a stream."""
    size = len(chunk)
    if 0 < size <= MAX_FRAME:  # the usual case: one frame per COPY row
        out += _LENGTH.pack(0, size) if int_size == 4 else encode_int(size, int_size)
        out += chunk
        return
    view = memoryview(chunk)
    for start in range(0, size, MAX_FRAME):
        piece = view[start:start + MAX_FRAME]
        out += encode_int(len(piece), int_size)
        out += piece


async def write_custom(header: Header, entries: Sequence[TocEntry],
                       data: AsyncIterable[DataBlock]) -> AsyncIterator[bytes]:
    """A custom-format archive as a stream of bytes.

    ``header`` gives the version (1.14 to 1.16) and sizes to write, ``entries`` the TOC
    in order, ``data`` one block for each entry with data (had_dumper), in TOC order:
    TableData with a table's data as pg_dump stores it (COPY text ending in COPY_END),
    LargeObjects with the large objects of a BLOBS entry. Chunks are consumed as they
    are written; see :func:`merge_data` for composing ``data``.
    """
    n = header.int_size
    yield _encode_header(header, FORMAT_CUSTOM) + _encode_toc(
        header, entries,
        lambda e: encode_offset(OFFSET_NOT_SET if e.had_dumper else OFFSET_NO_DATA, 0, header.offset_size))
    out = bytearray()
    async for _, block in _in_order(entries, data):
        out += bytes([BLK_BLOBS if isinstance(block, LargeObjects) else BLK_DATA]) + encode_int(block.dump_id, n)
        if isinstance(block, TableData):
            async for chunk in block.chunks:
                _add_frames(out, chunk, n)
                if len(out) >= _OUT_SIZE:
                    yield bytes(out)
                    out.clear()
        else:
            async for lo in block.objects:
                out += encode_oid(lo.oid, n)
                async for chunk in lo.chunks:
                    _add_frames(out, chunk, n)
                    if len(out) >= _OUT_SIZE:
                        yield bytes(out)
                        out.clear()
                out += encode_int(0, n)  # end of this large object
        out += encode_int(0, n)  # end of the block (for BLK_BLOBS: the zero oid that ends the list)
        if len(out) >= _OUT_SIZE:
            yield bytes(out)
            out.clear()
    if out:
        yield bytes(out)


def directory_filename(header: Header, entry: TocEntry) -> str | None:
    """The file a directory archive keeps ``entry``'s data in, as pg_dump names it (None: no data)."""
    if not entry.had_dumper:
        return None
    if entry.desc == "BLOBS":
        # Archive 1.16 (pg_dump 17) splits large objects into several BLOBS entries, one file list each.
        return f"blobs_{entry.dump_id}.toc" if header.version[1] >= 16 else "blobs.toc"
    return f"{entry.dump_id}.dat"


class _FileSink:
    """A new file written through a buffer, the writes done in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._buf = bytearray()

    async def open(self) -> _FileSink:
        try:
            # Exclusive: never overwrite; owner-only, like every file Backstop writes.
            self._fd = await asyncio.to_thread(os.open, self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise PostgresError(f"cannot create {self.path}: {exc.strerror}") from None
        return self

    async def write(self, data: bytes | memoryview) -> None:
        self._buf += data
        if len(self._buf) >= _OUT_SIZE:
            await self._flush()

    async def _flush(self) -> None:
        data, self._buf = bytes(self._buf), bytearray()
        fd = self._fd
        assert fd is not None

        def write_all() -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]

        try:
            await asyncio.to_thread(write_all)
        except OSError as exc:
            raise PostgresError(f"cannot write {self.path}: {exc.strerror}") from None

    async def close(self) -> None:
        if self._fd is None:
            return
        try:
            await self._flush()
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)


def _prepare_directory(directory: Path) -> None:
    # pg_dump accepts a missing or an empty directory, and nothing else.
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        if not directory.is_dir() or any(directory.iterdir()):
            raise PostgresError(f"{directory} exists and is not an empty directory; "
                                "name a new directory for the archive") from None
    except OSError as exc:
        raise PostgresError(f"cannot create {directory}: {exc.strerror}") from None


async def write_directory(directory: Path, header: Header, entries: Sequence[TocEntry],
                          data: AsyncIterable[DataBlock]) -> None:
    """Write a directory-format archive (``pg_restore`` reads it as if ``pg_dump -Fd -Z0`` had).

    ``directory`` must not exist or be empty. ``header``, ``entries`` and ``data`` are
    as for :func:`write_custom`. toc.dat is written last, so an interrupted write
    leaves no directory pg_restore would take for a whole archive.
    """
    directory = Path(directory)
    await asyncio.to_thread(_prepare_directory, directory)
    names = {e.dump_id: directory_filename(header, e) for e in entries}
    async for entry, block in _in_order(entries, data):
        name = names[entry.dump_id]
        assert name is not None
        if isinstance(block, TableData):
            sink = await _FileSink(directory / name).open()
            try:
                async for chunk in block.chunks:
                    await sink.write(chunk)
            finally:
                await sink.close()
            continue
        listing = await _FileSink(directory / name).open()
        try:
            async for lo in block.objects:
                lo_name = f"blob_{lo.oid}.dat"
                sink = await _FileSink(directory / lo_name).open()
                try:
                    async for chunk in lo.chunks:
                        await sink.write(chunk)
                finally:
                    await sink.close()
                await listing.write(f"{lo.oid} {lo_name}\n".encode())
        finally:
            await listing.close()
    toc = _encode_header(header, FORMAT_TAR) + _encode_toc(
        header, entries, lambda e: encode_str(names[e.dump_id] or "", header.int_size))
    sink = await _FileSink(directory / "toc.dat").open()
    try:
        await sink.write(toc)
    finally:
        await sink.close()


async def _with_copy_end(stream: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk
    yield COPY_END


async def merge_data(entries: Sequence[TocEntry], tables: Mapping[int, Callable[[], AsyncIterable[bytes]]],
                     source: AsyncIterable[DataBlock] | None = None) -> AsyncIterator[DataBlock]:
    """The data blocks for ``entries``, in their order, for :func:`write_custom` / :func:`write_directory`.

    ``tables`` maps the dump id of a TABLE DATA entry to a function opening that table's
    ``COPY ... TO STDOUT`` text (called when its turn comes; pg_dump's end-of-data line is
    appended). Every other entry with data takes its block from ``source``, another
    archive's blocks in that archive's order (blocks no entry wants are skipped).
    """
    blocks = aiter(source) if source is not None else None
    for entry in entries:
        if not entry.had_dumper:
            continue
        if entry.dump_id in tables:
            yield TableData(entry.dump_id, _with_copy_end(tables[entry.dump_id]()))
            continue
        while True:
            block = await anext(blocks, None) if blocks is not None else None
            if block is None:
                raise PostgresError(f"no data for {entry.label()}: neither a table stream nor the source "
                                    "archive supplies it")
            if block.dump_id == entry.dump_id:
                yield block
                break
