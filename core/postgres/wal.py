"""WAL names and headers: LSNs, segment file names, the long page header at the start of a segment.

Pure functions, no I/O and nothing but ``struct``: the ``wal-push``/``wal-fetch``
fast path imports this module (names are checked by hand, not with ``re``,
whose import is a sixth of a call's CPU).

A WAL location (LSN) is a 64-bit byte position, written by PostgreSQL as
two hex halves ``"16/B374D848"``. WAL is cut into segments of
``wal_segment_size`` bytes (16 MiB unless ``initdb --wal-segsize`` said
otherwise); segment number ``segno = lsn // seg_size``, and its file name
is the timeline, the high and the low part of segno as 8 hex digits each:
``%08X%08X%08X`` of ``(timeline, segno // per_id, segno % per_id)`` with
``per_id = 2**32 // seg_size`` (PostgreSQL's ``XLogFileName``).
"""

from __future__ import annotations

import struct

DEFAULT_SEG_SIZE = 16 * 1024 * 1024
MIN_SEG_SIZE, MAX_SEG_SIZE = 1024 * 1024, 1024 * 1024 * 1024

_UPPER_HEX = frozenset("0123456789ABCDEF")  # file names: PostgreSQL writes upper case
_ANY_HEX = frozenset("0123456789ABCDEFabcdef")  # LSNs as people type them

# XLogLongPageHeaderData (access/xlog_internal.h), in the server's byte order:
# xlp_magic u16, xlp_info u16, xlp_tli u32, xlp_pageaddr u64, xlp_rem_len u32, 4 bytes of
# alignment padding, then xlp_sysid u64, xlp_seg_size u32, xlp_xlog_blcksz u32.
_LONG_HEADER = struct.Struct("HHIQI4xQII")
LONG_HEADER_SIZE = _LONG_HEADER.size  # 40
_XLP_LONG_HEADER = 0x0002
# Every WAL page magic PostgreSQL has used starts with 0xD0 or 0xD1 (0xD101 in 12 ... 0xD116 in 17).
_MAGIC_HIGH = (0xD0, 0xD1)


class WalNameError(ValueError):
    """A string that is not an LSN or a WAL file name (callers turn it into a one-line message)."""


def _upper_hex(text: str, length: int) -> bool:
    return len(text) == length and _UPPER_HEX.issuperset(text)


def _is_segment(name: str) -> bool:
    return _upper_hex(name, 24)


class SegmentHeader:
    """What the first page of a WAL segment says about where it comes from.

    A plain class, not a dataclass: importing ``dataclasses`` costs the wal-push fast path ~10 ms.
    """

    __slots__ = ("block_size", "magic", "page_address", "seg_size", "system_identifier", "timeline")

    def __init__(self, system_identifier: int, timeline: int, seg_size: int, page_address: int = 0,
                 block_size: int = 8192, magic: int = 0) -> None:
        self.system_identifier = system_identifier  # the cluster's database system identifier (initdb)
        self.timeline = timeline
        self.seg_size = seg_size
        self.page_address = page_address  # the LSN of the segment's first byte
        self.block_size = block_size
        self.magic = magic

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SegmentHeader) and all(
            getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, a) for a in self.__slots__))

    def __repr__(self) -> str:
        return "SegmentHeader(" + ", ".join(f"{a}={getattr(self, a)!r}" for a in self.__slots__) + ")"


def parse_lsn(text: str) -> int:
    """``"0/2000028"`` -> 33554472."""
    halves = text.strip().split("/")
    if len(halves) != 2 or not all(0 < len(h) <= 8 and _ANY_HEX.issuperset(h) for h in halves):
        raise WalNameError(f"{text!r} is not a WAL location (expected two hex numbers like 0/2000028)")
    return (int(halves[0], 16) << 32) | int(halves[1], 16)


def format_lsn(lsn: int) -> str:
    """33554472 -> ``"0/2000028"`` (PostgreSQL's spelling: upper-case hex, no padding)."""
    if not 0 <= lsn < 1 << 64:
        raise WalNameError(f"{lsn} is not a WAL location (expected 0 <= lsn < 2^64)")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _check_seg_size(seg_size: int) -> int:
    if not (MIN_SEG_SIZE <= seg_size <= MAX_SEG_SIZE) or seg_size & (seg_size - 1):
        raise WalNameError(f"{seg_size} is not a WAL segment size (a power of two from 1 MiB to 1 GiB)")
    return 0x100000000 // seg_size


def segment_file(timeline: int, segno: int, seg_size: int = DEFAULT_SEG_SIZE) -> str:
    """The file name of segment number ``segno`` on ``timeline``."""
    per_id = _check_seg_size(seg_size)
    if not 1 <= timeline <= 0xFFFFFFFF:
        raise WalNameError(f"{timeline} is not a timeline (1 ... 2^32-1)")
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def segment_name(timeline: int, lsn: int | str, seg_size: int = DEFAULT_SEG_SIZE) -> str:
    """The file name of the segment holding ``lsn`` (an int or ``"X/Y"``) on ``timeline``."""
    lsn = parse_lsn(lsn) if isinstance(lsn, str) else lsn
    return segment_file(timeline, lsn // seg_size, seg_size)


def segments_between(timeline: int, start_lsn: int | str, stop_lsn: int | str,
                     seg_size: int = DEFAULT_SEG_SIZE) -> list[str]:
    """Every segment from the one holding ``start_lsn`` to the one holding ``stop_lsn``, both included."""
    start = parse_lsn(start_lsn) if isinstance(start_lsn, str) else start_lsn
    stop = parse_lsn(stop_lsn) if isinstance(stop_lsn, str) else stop_lsn
    if stop < start:
        raise WalNameError(f"stop location {format_lsn(stop)} is before start location {format_lsn(start)}")
    return [segment_file(timeline, n, seg_size) for n in range(start // seg_size, stop // seg_size + 1)]


def parse_segment_name(name: str, seg_size: int = DEFAULT_SEG_SIZE) -> tuple[int, int]:
    """``(timeline, segno)`` of a segment file name (also of ``NAME.partial``)."""
    base = name.removesuffix(".partial")
    if not _is_segment(base):
        raise WalNameError(f"{name!r} is not a WAL segment file name (24 upper-case hex digits)")
    per_id = _check_seg_size(seg_size)
    high, low = int(base[8:16], 16), int(base[16:24], 16)
    if low >= per_id:
        raise WalNameError(f"{name!r} is not a segment name for {seg_size // (1024 * 1024)} MiB segments")
    return int(base[:8], 16), high * per_id + low


def history_name(timeline: int) -> str:
    """``00000002.history``: the file that says where ``timeline`` branched off."""
    return f"{timeline:08X}.history"


def is_segment(name: str) -> bool:
    """A full WAL segment file name."""
    return _is_segment(name)


def wal_file_kind(name: str) -> str:
    """``segment``, ``partial``, ``history`` or ``backup`` for the files PostgreSQL archives; WalNameError else."""
    if _is_segment(name):
        return "segment"
    stem, _, suffix = name.partition(".")
    if suffix == "partial" and _is_segment(stem):
        return "partial"
    if suffix == "history" and _upper_hex(stem, 8):
        return "history"
    offset, _, backup = suffix.partition(".")
    if backup == "backup" and _is_segment(stem) and _upper_hex(offset, 8):
        return "backup"
    raise WalNameError(f"{name!r} is not the name of a WAL file PostgreSQL archives "
                       "(a segment, NAME.partial, TLI.history or NAME.OFFSET.backup)")


def timeline_of(name: str) -> int:
    """The timeline a WAL file name belongs to (its first 8 hex digits)."""
    wal_file_kind(name)
    return int(name[:8], 16)


def read_segment_header(first_bytes: bytes) -> SegmentHeader:
    """The long page header at offset 0 of a segment; WalNameError when it is not one."""
    if len(first_bytes) < LONG_HEADER_SIZE:
        raise WalNameError(f"too short for a WAL segment header ({len(first_bytes)} bytes)")
    for order in ("<", ">"):  # WAL is written in the server's byte order
        magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = struct.unpack_from(
            order + _LONG_HEADER.format, first_bytes)
        if magic >> 8 in _MAGIC_HIGH:
            break
    else:
        raise WalNameError("not a WAL segment (no WAL page magic at offset 0)")
    if not info & _XLP_LONG_HEADER:
        raise WalNameError("not the start of a WAL segment (the first page has no long header)")
    try:
        _check_seg_size(seg_size)
    except WalNameError:
        raise WalNameError(f"not a WAL segment (its header gives a segment size of {seg_size})") from None
    if blcksz == 0 or blcksz & (blcksz - 1) or pageaddr % seg_size:
        raise WalNameError("not a WAL segment (its header's block size or page address is impossible)")
    return SegmentHeader(system_identifier=sysid, timeline=tli, seg_size=seg_size, page_address=pageaddr,
                         block_size=blcksz, magic=magic)


def check_segment(name: str, first_bytes: bytes) -> SegmentHeader:
    """The header of segment file ``name``, checked against the name (timeline and position)."""
    header = read_segment_header(first_bytes)
    tli, segno = parse_segment_name(name, header.seg_size)
    if header.timeline > tli or header.page_address // header.seg_size != segno:
        raise WalNameError(f"the content of {name} belongs to "
                           f"{segment_file(header.timeline, header.page_address // header.seg_size, header.seg_size)}"
                           " (its header names another timeline or position)")
    return header
