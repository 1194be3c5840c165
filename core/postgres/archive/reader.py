"""Read a pg_dump archive front to back: header, table of contents, then data blocks as they stream.

Nothing seeks and nothing holds more than one frame of data (at most
MAX_FRAME bytes): the archive can come straight from the repository, a pipe
or a file. Data offsets in the TOC are ignored; the blocks are read in the
order they were written, as pg_restore reads an archive from a pipe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

from core.errors import PostgresError
from core.postgres.archive.model import (
    BLK_BLOBS,
    BLK_DATA,
    COMPRESSION_NAMES,
    FORMAT_CUSTOM,
    FORMAT_NAMES,
    FORMAT_TAR,
    MAGIC,
    MAX_FRAME,
    OFFSET_NO_DATA,
    DataBlock,
    Header,
    LargeObject,
    LargeObjects,
    Section,
    TableData,
    TocEntry,
    check_version,
    decode_oid,
)
from core.postgres.archive.stream import Decoder, Input, Source, damaged
from core.postgres.archive.toc import Toc

_MAX_ENTRIES = 1 << 26


async def _read_header(inp: Input, expected_format: int) -> tuple[Header, Decoder]:
    magic = await inp.prefix(len(MAGIC))
    if magic != MAGIC:
        kind = "a plain SQL script" if magic.startswith(b"--") else "not a pg_dump archive"
        raise PostgresError(f"the input is {kind} (it does not start with PGDMP); "
                            "backstop reads pg_dump's custom-format archives (pg_dump -Fc -Z0)")
    vmaj, vmin = await inp.exact(2, "the header")
    vrev = (await inp.exact(1, "the header"))[0] if (vmaj, vmin) > (1, 0) else 0
    version = (vmaj, vmin, vrev)
    check_version(version)
    int_size, offset_size, fmt = await inp.exact(3, "the header")
    if not 1 <= int_size <= 8 or not 1 <= offset_size <= 16:
        raise damaged(f"integer size {int_size} and offset size {offset_size} in the header")
    if fmt != expected_format:
        raise PostgresError(
            f"the archive is in {FORMAT_NAMES.get(fmt, f'unknown format {fmt}')} format, not "
            f"{FORMAT_NAMES[expected_format]}; backstop reads custom-format archives (pg_dump -Fc -Z0)")
    dec = Decoder(inp, int_size, offset_size)
    if vmin >= 15:
        algorithm = (await inp.exact(1, "the header"))[0]
        compression = COMPRESSION_NAMES.get(algorithm, f"algorithm {algorithm}")
    else:
        # Before 1.15 the header held a zlib level: anything but 0 means gzip.
        compression = "none" if await dec.read_int("the header") == 0 else "gzip"
    if compression != "none":
        raise PostgresError(f"the archive is compressed with {compression}; backstop stores uncompressed "
                            "archives: dump with pg_dump --compress=0")
    sec, minute, hour, mday, mon, year, isdst = [await dec.read_int("the header") for _ in range(7)]
    dbname = await dec.read_str("the header")
    server_version = await dec.read_str("the header")
    dump_version = await dec.read_str("the header")
    header = Header(version, int_size, offset_size, fmt, compression, (sec, minute, hour, mday, mon, year, isdst),
                    dbname or "", server_version or "", dump_version or "")
    return header, dec


async def _read_entry(dec: Decoder, header: Header, n: int) -> TocEntry:
    what = f"TOC entry {n + 1}"
    dump_id = await dec.read_int(what)
    if dump_id <= 0:
        raise damaged(f"{what} has dump id {dump_id}")
    had_dumper = await dec.read_int(what) != 0
    table_oid = await dec.read_number(what)
    oid = await dec.read_number(what)
    tag = await dec.read_str(what) or ""
    desc = await dec.read_str(what) or ""
    raw_section = await dec.read_int(what)
    try:
        section = Section(raw_section)
    except ValueError:
        raise damaged(f"{what} ({desc} {tag}) has section {raw_section}") from None
    defn = await dec.read_str(what)
    drop_stmt = await dec.read_str(what)
    copy_stmt = await dec.read_str(what)
    namespace = await dec.read_str(what)
    tablespace = await dec.read_str(what)
    tableam = await dec.read_str(what)
    relkind = await dec.read_int(what) if header.version[1] >= 16 else 0
    owner = await dec.read_str(what)
    await dec.read_str(what)  # "with oids": always "false" since PostgreSQL 12
    deps: list[int] = []
    while True:
        dep = await dec.read_str(what)
        if dep is None:
            break
        try:
            deps.append(int(dep))
        except ValueError:
            raise damaged(f"dependency {dep!r} of {what}") from None
    entry = TocEntry(dump_id, had_dumper, table_oid, oid, tag, desc, section, defn, drop_stmt, copy_stmt,
                     namespace, tablespace, tableam, owner, tuple(deps), relkind)
    if header.format == FORMAT_CUSTOM:
        state, offset = await dec.read_offset(what)
        return dataclasses.replace(entry, data_state=state, data_offset=offset)
    filename = await dec.read_str(what)
    return dataclasses.replace(entry, filename=filename or None)


async def _read_toc(dec: Decoder, header: Header) -> Toc:
    count = await dec.read_int("the TOC")
    if not 0 <= count <= _MAX_ENTRIES:
        raise damaged(f"the TOC claims {count} entries")
    return Toc([await _read_entry(dec, header, n) for n in range(count)])


class _Chunks:
    """The frames of one data stream (a table's data, a large object), read as they are consumed.

    Not an async generator: a consumer may stop early, and the next block must then
    still find the input right after this stream's end (see :meth:`drain`).
    """

    def __init__(self, dec: Decoder, what: str) -> None:
        self._dec = dec
        self._what = what
        self._left = 0  # bytes of the current frame not yet returned
        self._done = False

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        if not self._left:
            frame = self._dec.inp.frame_now(self._dec.int_size)
            if frame is not None:
                return frame
            length = await self._dec.read_int(self._what)
            if length == 0:  # the end marker
                self._done = True
                raise StopAsyncIteration
            if length < 0:
                raise damaged(f"a data frame of length {length} at byte {self._dec.inp.offset}, in {self._what}")
            self._left = length
        # A frame comes out whole when it is small enough, so a copy keeps pg_dump's framing.
        piece = await self._dec.inp.exact(min(self._left, MAX_FRAME), self._what)
        self._left -= len(piece)
        return piece

    async def drain(self) -> None:
        """Skip what the consumer left unread."""
        while not self._done:
            if self._left:
                await self._dec.inp.skip(self._left, self._what)
                self._left = 0
            length = await self._dec.read_int(self._what)
            if length < 0:
                raise damaged(f"a data frame of length {length} at byte {self._dec.inp.offset}, in {self._what}")
            self._left = length
            self._done = length == 0


class _LargeObjectStream:
    """The large objects of one BLK_BLOBS block, read as they are consumed."""

    def __init__(self, dec: Decoder, dump_id: int) -> None:
        self._dec = dec
        self._what = f"the large objects of dump id {dump_id}"
        self._current: _Chunks | None = None
        self._done = False

    def __aiter__(self) -> _LargeObjectStream:
        return self

    async def __anext__(self) -> LargeObject:
        if self._done:
            raise StopAsyncIteration
        if self._current is not None:
            await self._current.drain()
        oid = decode_oid(await self._dec.read_int(self._what))
        if oid == 0:  # the end marker
            self._done = True
            raise StopAsyncIteration
        self._current = _Chunks(self._dec, f"large object {oid}")
        return LargeObject(oid, self._current)

    async def drain(self) -> None:
        """Skip the large objects the consumer left unread."""
        async for _ in self:
            pass


class _CustomBlocks:
    """The data blocks of a custom-format archive, in archive order."""

    def __init__(self, dec: Decoder, toc: Toc) -> None:
        self._dec = dec
        self._toc = toc
        self._current: _Chunks | _LargeObjectStream | None = None
        self._seen: set[int] = set()

    def __aiter__(self) -> _CustomBlocks:
        return self

    async def __anext__(self) -> DataBlock:
        if self._current is not None:
            await self._current.drain()
            self._current = None
        inp = self._dec.inp
        kind = await inp.byte_or_eof()
        if kind is None:
            self._check_complete()
            raise StopAsyncIteration
        dump_id = await self._dec.read_int("a data block header")
        entry = self._toc.get(dump_id)
        if entry is None or not entry.had_dumper or dump_id in self._seen:
            raise damaged(f"a data block for dump id {dump_id} at byte {inp.offset}, which the TOC does not "
                           "expect")
        self._seen.add(dump_id)
        if kind == BLK_DATA and entry.desc != "BLOBS":
            chunks = _Chunks(self._dec, f"the data of {entry.label()}")
            self._current = chunks
            return TableData(dump_id, chunks)
        if kind == BLK_BLOBS and entry.desc == "BLOBS":
            objects = _LargeObjectStream(self._dec, dump_id)
            self._current = objects
            return LargeObjects(dump_id, objects)
        raise damaged(f"data block type {kind} for {entry.label()} at byte {inp.offset}")

    def _check_complete(self) -> None:
        # The custom format has no end marker: an archive cut between two blocks is
        # only told from a whole one by the data its TOC promised and never came.
        missing = [e for e in self._toc if e.had_dumper and e.data_state != OFFSET_NO_DATA
                   and e.dump_id not in self._seen]
        if missing:
            raise PostgresError(
                f"the pg_dump archive ends before the data of {len(missing)} entries (the first is "
                f"{missing[0].label()}): it is truncated; take a new backup or restore an older one")


def _plain_name(directory: Path, name: str) -> Path:
    # A file name from the archive must not lead out of its directory.
    if not name or "/" in name or name.startswith(".") or os.sep in name:
        raise damaged(f"the data file name {name!r}")
    return directory / name


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    try:
        f = await asyncio.to_thread(open, path, "rb")
    except OSError as exc:
        raise PostgresError(f"cannot read {path}: {exc.strerror}; the directory archive is incomplete") from None
    try:
        while piece := await asyncio.to_thread(f.read, MAX_FRAME):
            yield piece
    finally:
        f.close()


async def _directory_large_objects(directory: Path, toc_file: Path) -> AsyncIterator[LargeObject]:
    try:
        lines = (await asyncio.to_thread(toc_file.read_bytes)).splitlines()
    except OSError as exc:
        raise PostgresError(f"cannot read {toc_file}: {exc.strerror}; the directory archive is incomplete") from None
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise damaged(f"the line {line!r} of {toc_file.name}")
        yield LargeObject(int(parts[0]), _file_chunks(_plain_name(directory, parts[1].decode())))


async def _directory_blocks(directory: Path, toc: Toc) -> AsyncIterator[DataBlock]:
    for entry in toc:
        if not entry.had_dumper or entry.filename is None:
            continue
        path = _plain_name(directory, entry.filename)
        if entry.desc == "BLOBS":
            yield LargeObjects(entry.dump_id, _directory_large_objects(directory, path))
        else:
            yield TableData(entry.dump_id, _file_chunks(path))


class Archive:
    """A pg_dump archive being read: its header and TOC, then (once) its data blocks."""

    def __init__(self, header: Header, toc: Toc, blocks: AsyncIterator[DataBlock], inp: Input) -> None:
        self.header = header
        self.toc = toc
        self._blocks: AsyncIterator[DataBlock] | None = blocks
        self._inp = inp

    @property
    def entries(self) -> list[TocEntry]:
        """The TOC entries in archive order."""
        return list(self.toc)

    def blocks(self) -> AsyncIterator[DataBlock]:
        """The data blocks in archive order, each to be consumed (or skipped) before the next one.

        A TableData's chunks and a LargeObjects' objects are read from the input as
        they are iterated; moving on to the next block skips what was left unread.
        Only one pass is possible: the input is read forward only.
        """
        if self._blocks is None:
            raise PostgresError("the archive's data blocks were already read; read the archive again")
        blocks, self._blocks = self._blocks, None
        return blocks

    async def aclose(self) -> None:
        """Stop reading (closes an async source, e.g. to stop its read-ahead)."""
        await self._inp.aclose()


async def read_archive(source: Source) -> Archive:
    """Read a custom-format archive's header and TOC from ``source`` (an async iterable of bytes, or a
    binary file object); its data blocks then stream from :meth:`Archive.blocks`.

    Raises PostgresError for anything but an uncompressed custom-format archive of
    version 1.14 to 1.16, and for a damaged or truncated one.
    """
    inp = Input(source)
    header, dec = await _read_header(inp, FORMAT_CUSTOM)
    toc = await _read_toc(dec, header)
    return Archive(header, toc, _CustomBlocks(dec, toc), inp)


async def read_directory(directory: Path) -> Archive:
    """Read a directory-format archive (``pg_dump -Fd -Z0``): toc.dat, then each entry's data file."""
    directory = Path(directory)
    try:
        f = await asyncio.to_thread(open, directory / "toc.dat", "rb")
    except OSError as exc:
        raise PostgresError(f"{directory} is not a directory archive: cannot read toc.dat ({exc.strerror})") from None
    with f:
        inp = Input(f)
        header, dec = await _read_header(inp, FORMAT_TAR)
        toc = await _read_toc(dec, header)
    return Archive(header, toc, _directory_blocks(directory, toc), inp)
