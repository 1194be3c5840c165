"""A tar stream read member by member, without staging: what pg_basebackup writes to stdout.

The parser holds one 512-byte header at a time; a member's content is
handed out as a reader bounded to that member, so the caller streams it
on (to the repository writer) and never holds a whole file. It reads the
ustar headers PostgreSQL writes (``src/port/tar.c``: names up to 99
bytes, a trailing ``/`` on directories and symlinks) and also the GNU
long-name and pax extensions other tar writers use, so a longer name is
never silently cut.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from core.errors import IntegrityError

BLOCK = 512
FILE, DIR, SYMLINK = "file", "dir", "symlink"
_REGULAR = (b"0", b"\0", b"7")  # '7' is a contiguous file: a regular file to every reader
_MAX_EXTENSION = 1 << 20  # a pax or GNU long-name record larger than this is not a header we can trust


class StreamCutShort(IntegrityError):
    """The stream ended before the archive did: usually the writer (pg_basebackup) failed; its error says why."""


class RawReader(Protocol):
    def readinto(self, buffer: memoryview) -> int | None: ...


@dataclass(frozen=True)
class Member:
    """One tar member: its path (no leading ``./``, no trailing ``/``), kind, size and mode."""

    name: str
    kind: str  # FILE, DIR, SYMLINK, or the raw type flag of anything else (devices, fifos)
    size: int
    mode: int  # permission bits
    link: str | None = None  # a symlink's target


def _octal(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:
        # GNU base-256: big-endian two's complement in the remaining bits (sizes over 8 GiB).
        value = int.from_bytes(field, "big") & ((1 << (8 * len(field) - 1)) - 1)
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise IntegrityError(f"the base backup's tar stream has a malformed {what} field ({text[:16]!r}); "
                             "the stream from pg_basebackup is damaged: run the backup again") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _checksum_ok(header: bytes) -> bool:
    stored = _octal(header[148:156], "checksum")
    computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
    return stored == computed


def _clean_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise IntegrityError(f"the base backup's tar stream names a member {name!r} outside the data directory; "
                             "refusing to store it: check what produced the stream")
    return name


class TarStream:
    """Iterate over a tar stream's members: ``for member, reader in TarStream(raw).members(): ...``.

    Each member's reader must be consumed (or left: the rest is skipped)
    before the next member is asked for.
    """

    def __init__(self, raw: RawReader) -> None:
        self._raw = raw
        self._remaining = 0  # content bytes of the current member not read yet
        self._padding = 0
        self.bytes_read = 0
        self.ended = False  # the end-of-archive marker was seen

    # -- low-level reading --

    def _readinto(self, view: memoryview) -> int:
        n = self._raw.readinto(view) or 0
        self.bytes_read += n
        return n

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._readinto(view[got:])
            if not k:
                break
            got += k
        return bytes(buf[:got])

    def _skip(self, n: int) -> None:
        scratch = memoryview(bytearray(min(n, 1 << 16) or 1))
        while n > 0:
            k = self._readinto(scratch[:min(n, len(scratch))])
            if not k:
                raise StreamCutShort("the base backup's tar stream ended inside a member; pg_basebackup stopped "
                                     "early: see its error, then run the backup again")
            n -= k

    def _finish_member(self) -> None:
        self._skip(self._remaining + self._padding)
        self._remaining = self._padding = 0

    def _header(self) -> bytes | None:
        """The next 512-byte header; None at the end-of-archive marker or at a clean end of the stream."""
        header = self._read_exact(BLOCK)
        if not header:
            return None
        if len(header) < BLOCK:
            raise StreamCutShort("the base backup's tar stream ended inside a header; pg_basebackup stopped "
                                 "early: see its error, then run the backup again")
        if not any(header):
            self.ended = True
            return None
        if not _checksum_ok(header):
            raise IntegrityError("a tar header in the base backup's stream fails its checksum; the stream is "
                                 "damaged: run the backup again")
        return header

    def _extension(self, size: int) -> bytes:
        if size > _MAX_EXTENSION:
            raise IntegrityError(f"the base backup's tar stream has an extended header of {size} bytes; "
                                 "not a stream pg_basebackup writes: check what produced it")
        data = self._read_exact(size)
        if len(data) < size:
            raise StreamCutShort("the base backup's tar stream ended inside an extended header; run the backup again")
        self._skip(-size % BLOCK)
        return data

    # -- members --

    def members(self) -> Iterator[tuple[Member, MemberReader]]:
        """Each member and a reader of exactly its content."""
        long_name: str | None = None
        long_link: str | None = None
        pax: dict[str, str] = {}
        while True:
            self._finish_member()
            header = self._header()
            if header is None:
                return
            flag = header[156:157]
            size = _octal(header[124:136], "size")
            if flag in (b"L", b"K"):  # GNU long name / long link name: the next header's
                value = _text(self._extension(size))
                long_name, long_link = (value, long_link) if flag == b"L" else (long_name, value)
                continue
            if flag in (b"x", b"g"):  # pax extended header (g: global; applies to nothing we keep)
                data = self._extension(size)
                if flag == b"x":
                    pax = _parse_pax(data)
                continue
            name = _text(header[0:100])
            if header[257:262] == b"ustar" and header[345:500].strip(b"\0"):
                name = _text(header[345:500]) + "/" + name
            name = pax.get("path", long_name or name)
            link = pax.get("linkpath", long_link or _text(header[157:257]))
            if "size" in pax:
                size = int(pax["size"])
            long_name = long_link = None
            pax = {}
            mode = _octal(header[100:108], "mode") & 0o7777
            if flag in _REGULAR:
                kind = FILE
            elif flag == b"5":
                kind, size = DIR, 0
            elif flag == b"2":
                kind, size = SYMLINK, 0
            else:
                kind = flag.decode("latin-1")
            self._remaining, self._padding = size, -size % BLOCK
            yield Member(_clean_name(name), kind, size, mode, link if kind == SYMLINK else None), MemberReader(self)


def _parse_pax(data: bytes) -> dict[str, str]:
    """pax records: ``<length> <key>=<value>\\n`` each."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise IntegrityError("the base backup's tar stream has a malformed pax header; run the backup again") \
                from None
        record = data[space + 1: pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
        if length <= 0:
            break
    return out


class MemberReader:
    """The content of one member, then EOF (what StreamWriter.write reads)."""

    def __init__(self, tar: TarStream) -> None:
        self._tar = tar

    def readinto(self, view: memoryview) -> int:
        tar = self._tar
        if tar._remaining <= 0:
            return 0
        n = tar._readinto(view[:min(len(view), tar._remaining)])
        if not n:
            raise StreamCutShort("the base backup's tar stream ended inside a file; pg_basebackup stopped early: "
                                 "see its error, then run the backup again")
        tar._remaining -= n
        return n
