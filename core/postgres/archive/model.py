"""The records of a pg_dump archive and the primitive encodings they are stored in.

Written from PostgreSQL's own source as the specification
(src/bin/pg_dump/pg_backup_archiver.c: WriteInt/ReadInt, WriteStr/ReadStr,
WriteOffset/ReadOffset, WriteHead/ReadHead, WriteToc/ReadToc;
pg_backup_custom.c and pg_backup_directory.c for the per-format parts).

An integer is a sign byte (non-zero: negative) followed by ``int_size`` bytes
of magnitude, least significant first. A string is such an integer length
and that many bytes; length -1 is NULL, which is not the empty string (both
occur and pg_restore treats them differently, so they are kept apart). An
offset is a state byte followed by ``offset_size`` bytes, least significant
first.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterable
from dataclasses import dataclass
from enum import IntEnum

from core.errors import PostgresError

MAGIC = b"PGDMP"

# ArchiveFormat codes in the header. A directory archive's toc.dat carries
# the tar code: pg_dump treats the two as one layout.
FORMAT_CUSTOM = 1
FORMAT_TAR = 3
FORMAT_NAMES = {0: "unknown", 1: "custom", 3: "tar or directory", 4: "null", 5: "directory"}

# Data block types of the custom format (BLK_BLOB, 2, was never written by a released pg_dump).
BLK_DATA = 1
BLK_BLOBS = 3

# What a custom-format TOC entry says about where its data block is.
OFFSET_NOT_SET = 1  # there is a block, position unknown (written to a pipe): read on to find it
OFFSET_SET = 2  # the block starts at this byte (written to a seekable file)
OFFSET_NO_DATA = 3  # the entry has no data block

# pg_compress_algorithm, stored as one byte from archive 1.15 (PostgreSQL 16) on.
COMPRESSION_NAMES = {0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}

# Archive versions this module reads and writes, with the pg_dump versions that write them.
SUPPORTED_MINORS = {14: "pg_dump 12 to 15", 15: "pg_dump 16", 16: "pg_dump 17"}

RELKIND_PARTITIONED_TABLE = ord("p")

# pg_dump ends each table's COPY data with this end-of-data line (and two blank lines):
# a plain-SQL restore (pg_restore -f) prints the data as stored, and psql needs it.
COPY_END = b"\\.\n\n\n"

# Frames of data are at most this long when this module splits data it passes on:
# pg_restore allocates a buffer of a frame's length.
MAX_FRAME = 1 << 20


class Section(IntEnum):
    """teSection: the part of a restore an entry belongs to."""

    NONE = 1  # comments, ACLs: follow their object
    PRE_DATA = 2
    DATA = 3
    POST_DATA = 4


def version_label(version: tuple[int, int, int]) -> str:
    """``1.15`` (and ``-rev`` when the revision is not 0)."""
    major, minor, rev = version
    return f"{major}.{minor}" + (f"-{rev}" if rev else "")


def check_version(version: tuple[int, int, int]) -> None:
    """PostgresError unless this module reads and writes archives of ``version``."""
    if version[0] != 1 or version[1] not in SUPPORTED_MINORS:
        raise PostgresError(
            f"pg_dump archive version {version_label(version)} is not supported; backstop reads archive "
            "versions 1.14 to 1.16 (pg_dump 12 to 17): dump with a pg_dump of one of those versions"
        )


@dataclass(frozen=True)
class Header:
    """An archive's header: how it is encoded, and where it came from."""

    version: tuple[int, int, int]
    int_size: int
    offset_size: int
    format: int
    compression: str  # "none", or the algorithm ("gzip", "lz4", "zstd")
    # struct tm as pg_dump stored it, in its own local time: sec, min, hour, mday, mon (0-11), year-1900, isdst.
    created: tuple[int, int, int, int, int, int, int]
    dbname: str
    server_version: str
    dump_version: str

    @property
    def created_at(self) -> datetime.datetime | None:
        """When pg_dump ran, in its local time (the archive keeps no zone); None if unreadable."""
        sec, minute, hour, mday, mon, year, _ = self.created
        try:
            return datetime.datetime(year + 1900, mon + 1, mday, hour, minute, min(sec, 59))
        except ValueError:
            return None


@dataclass(frozen=True)
class TocEntry:
    """One entry of the table of contents: an object's definition and, if it has one, its data."""

    dump_id: int
    had_dumper: bool  # the entry has a data block (TABLE DATA, BLOBS)
    table_oid: int  # catalog id: the oid of the system catalog the object is in (0 when none) ...
    oid: int  # ... and the object's oid in it
    tag: str
    desc: str  # "TABLE", "TABLE DATA", "INDEX", "COMMENT", ...
    section: Section
    defn: str | None
    drop_stmt: str | None
    copy_stmt: str | None  # "COPY schema.table (cols) FROM stdin;\n" for TABLE DATA
    namespace: str | None
    tablespace: str | None
    tableam: str | None
    owner: str | None
    deps: tuple[int, ...]  # dump ids of the entries this one depends on
    relkind: int = 0  # archive 1.16+: pg_class.relkind of a table as a character code; 0 otherwise
    data_state: int = OFFSET_NO_DATA  # custom format: one of OFFSET_*
    data_offset: int = 0  # custom format, with OFFSET_SET: where the data block starts
    filename: str | None = None  # directory format: the entry's data file

    @property
    def qualified_name(self) -> str:
        """``namespace.tag`` (just the tag for objects outside a schema), for messages."""
        return f"{self.namespace}.{self.tag}" if self.namespace else self.tag

    def label(self) -> str:
        """``TABLE DATA public.orders (dump id 3417)``, for messages."""
        return f"{self.desc} {self.qualified_name} (dump id {self.dump_id})"


@dataclass
class TableData:
    """A BLK_DATA block: one entry's data (COPY text for TABLE DATA), as chunks in order."""

    dump_id: int
    chunks: AsyncIterable[bytes]


@dataclass
class LargeObject:
    """One large object of a BLK_BLOBS block: its oid and its contents as chunks in order."""

    oid: int
    chunks: AsyncIterable[bytes]


@dataclass
class LargeObjects:
    """A BLK_BLOBS block: the contents of the large objects one BLOBS entry covers."""

    dump_id: int
    objects: AsyncIterable[LargeObject]


DataBlock = TableData | LargeObjects


def text(raw: bytes) -> str:
    """Archive bytes as text. pg_dump writes in the database's encoding; undecodable bytes survive a
    round trip (surrogateescape) so an archive of another encoding is rewritten unchanged."""
    return raw.decode("utf-8", "surrogateescape")


def raw_bytes(value: str) -> bytes:
    """The inverse of :func:`text`."""
    return value.encode("utf-8", "surrogateescape")


def encode_int(value: int, int_size: int) -> bytes:
    """WriteInt: a sign byte, then the magnitude in ``int_size`` bytes, least significant first."""
    sign = 1 if value < 0 else 0
    magnitude = -value if value < 0 else value
    if magnitude >= 1 << (8 * int_size):
        raise PostgresError(f"the value {value} does not fit the archive's {int_size}-byte integers")
    return bytes([sign]) + magnitude.to_bytes(int_size, "little")


def encode_oid(oid: int, int_size: int) -> bytes:
    """An OID as pg_dump writes it: through a C int, so OIDs from 2^31 on come out negative."""
    return encode_int(oid - (1 << 32) if oid >= 1 << 31 else oid, int_size)


def decode_oid(value: int) -> int:
    """The OID :func:`encode_oid` wrote."""
    return value & 0xFFFFFFFF


def encode_str(value: str | None, int_size: int) -> bytes:
    """WriteStr: the length (-1 for NULL) and the bytes."""
    if value is None:
        return encode_int(-1, int_size)
    raw = raw_bytes(value)
    return encode_int(len(raw), int_size) + raw


def encode_offset(state: int, offset: int, offset_size: int) -> bytes:
    """WriteOffset: the state byte, then the offset in ``offset_size`` bytes, least significant first."""
    return bytes([state]) + offset.to_bytes(offset_size, "little")
