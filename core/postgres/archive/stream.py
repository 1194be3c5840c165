"""The input side of reading an archive: bytes read forward only, and pg_dump's primitive encodings.

ReadInt, ReadStr and ReadOffset of src/bin/pg_dump/pg_backup_archiver.c, over
an async iterable of bytes or a binary file, with a small look-ahead buffer
(see model.py for the encodings).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import BinaryIO

from core.errors import PostgresError
from core.postgres.archive.model import MAX_FRAME, OFFSET_NO_DATA, OFFSET_NOT_SET, OFFSET_SET, text

_READ_SIZE = 1 << 20
# No string in an archive is longer than a text value can be (1 GB); a longer length is damage.
_MAX_STRING = 1 << 30

Source = AsyncIterable[bytes] | BinaryIO


def damaged(what: str) -> PostgresError:
    """The error for an archive whose bytes make no sense at ``what``."""
    return PostgresError(f"the pg_dump archive is damaged: {what}; take a new backup or restore an older one")


class Input:
    """Bytes of ``source`` (an async iterable of bytes, or a binary file), read forward only."""

    def __init__(self, source: Source) -> None:
        self._file: BinaryIO | None = None
        self._pieces: AsyncIterator[bytes] | None = None
        if isinstance(source, AsyncIterable):
            self._pieces = aiter(source)
        else:
            self._file = source
        self._buf = bytearray()
        self._pos = 0
        self._base = 0  # archive offset of _buf[0]

    @property
    def offset(self) -> int:
        """How many bytes of the archive have been consumed."""
        return self._base + self._pos

    async def _more(self) -> bool:
        """Append the next piece of input to the buffer; False at the end of the input."""
        while True:
            if self._file is not None:
                piece = await asyncio.to_thread(self._file.read, _READ_SIZE)
                if not piece:
                    return False
            else:
                assert self._pieces is not None
                try:
                    piece = await anext(self._pieces)
                except StopAsyncIteration:
                    return False
            if piece:
                break
        if self._pos:
            del self._buf[:self._pos]
            self._base += self._pos
            self._pos = 0
        self._buf += piece
        return True

    def truncated(self, what: str) -> PostgresError:
        """The error for an input that ended inside ``what``."""
        return PostgresError(f"the pg_dump archive ends early (at byte {self.offset}, in {what}): it is truncated; "
                             "take a new backup or restore an older one")

    async def exact(self, n: int, what: str) -> bytes:
        """The next ``n`` bytes; PostgresError if the input ends first."""
        while len(self._buf) - self._pos < n:
            if not await self._more():
                raise self.truncated(what)
        start = self._pos
        self._pos += n
        return bytes(self._buf[start:self._pos])

    def frame_now(self, int_size: int) -> bytes | None:
        """A whole data frame (length, then 1 to MAX_FRAME bytes) if it is already buffered, else None.

        pg_dump frames every COPY row on its own: this path, without awaiting, is most of a read.
        """
        buf, pos = self._buf, self._pos
        start = pos + 1 + int_size
        if start > len(buf) or buf[pos]:
            return None
        length = int.from_bytes(buf[pos + 1:start], "little")
        end = start + length
        if not 0 < length <= MAX_FRAME or end > len(buf):
            return None
        self._pos = end
        return bytes(buf[start:end])

    async def skip(self, n: int, what: str) -> None:
        """Consume ``n`` bytes without keeping them."""
        while n:
            if self._pos == len(self._buf) and not await self._more():
                raise self.truncated(what)
            step = min(n, len(self._buf) - self._pos)
            self._pos += step
            n -= step

    async def prefix(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the input)."""
        while len(self._buf) - self._pos < n and await self._more():
            pass
        start = self._pos
        self._pos = min(len(self._buf), self._pos + n)
        return bytes(self._buf[start:self._pos])

    async def byte_or_eof(self) -> int | None:
        """The next byte, or None at the end of the input."""
        if self._pos == len(self._buf) and not await self._more():
            return None
        self._pos += 1
        return self._buf[self._pos - 1]

    async def aclose(self) -> None:
        """Close an async source that can be closed (stops its read-ahead)."""
        close = getattr(self._pieces, "aclose", None)
        if close is not None:
            await close()


class Decoder:
    """ReadInt, ReadStr and ReadOffset over an input, with the sizes the header gave."""

    def __init__(self, inp: Input, int_size: int = 4, offset_size: int = 8) -> None:
        self.inp = inp
        self.int_size = int_size
        self.offset_size = offset_size

    async def read_int(self, what: str) -> int:
        """ReadInt: a sign byte, then int_size bytes of magnitude, least significant first."""
        raw = await self.inp.exact(1 + self.int_size, what)
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    async def read_str(self, what: str) -> str | None:
        """ReadStr: a length (-1: NULL), then that many bytes."""
        length = await self.read_int(what)
        if length == -1:
            return None
        if length < -1 or length > _MAX_STRING:
            raise damaged(f"a string of length {length} at byte {self.inp.offset}, in {what}")
        return text(await self.inp.exact(length, what))

    async def read_number(self, what: str) -> int:
        """A number pg_dump stores as a string (oids, dump ids)."""
        value = await self.read_str(what)
        try:
            return int(value or "")
        except ValueError:
            raise damaged(f"{value!r} where {what} should be a number (byte {self.inp.offset})") from None

    async def read_offset(self, what: str) -> tuple[int, int]:
        """ReadOffset: (state, offset), the state one of OFFSET_*."""
        state = (await self.inp.exact(1, what))[0]
        if state not in (OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA):
            raise damaged(f"data offset state {state} at byte {self.inp.offset}, in {what}")
        return state, int.from_bytes(await self.inp.exact(self.offset_size, what), "little")
