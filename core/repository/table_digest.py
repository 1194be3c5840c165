"""A table's row count and order-independent content digest, from its COPY text stream (FORMAT.md 10).

One row is one line of ``COPY ... TO STDOUT`` text (newlines inside values
are escaped as ``\\n``). With ``c`` the CRC-32C of a row (its terminating
newline excluded), the digest is two sums over the rows, each mod 2^64: of
``c`` and of ``c * c``; written as 32 hex digits, the first sum's 16 first.
Sums do not depend on the order of the rows, so a restored table read back
in any order gives the same digest; the sum of squares makes it more than a
linear function of the rows, which a CRC alone is (two rows trading equal-
length values would otherwise go unnoticed once in about 2^15, not 2^32).

Why a CRC per row and not a cryptographic hash: the cost is per row, not per
byte, and the cheapest per-row calls at C speed are ``map(crc32c, rows)``
(hardware CRC) and a multiply: BLAKE2b per row is about twice as slow
(bench/digest_bench.py has the figures). The digest guards against lost,
added, duplicated and changed rows, not against someone forging rows (the
repository's encryption does that); a changed row goes unnoticed only if
its CRC-32C is unchanged, about once in 2^32.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import mul

from crc32c import crc32c

_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class TableDigest:
    """A table's row count and order-independent content digest (hex)."""

    rows: int
    digest: str


class CopyDigest:
    """Fed a COPY text stream in blocks cut anywhere; :meth:`result` is its :class:`TableDigest`.

    Not thread-safe: one instance per stream, fed from the stream's thread.
    """

    def __init__(self) -> None:
        self._rows = 0
        self._sum = 0
        self._squares = 0
        # The start of a row whose newline has not arrived yet (a row longer than a block spans several).
        self._carry: list[bytes] = []

    def update(self, block: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the stream."""
        rows = bytes(block).split(b"\n")
        tail = rows.pop()  # after the block's last newline: the start of a row still to finish
        if rows:
            if self._carry:
                self._carry.append(rows[0])
                rows[0] = b"".join(self._carry)
                self._carry = []
            self._add(rows)
        if tail:
            self._carry.append(tail)

    def _add(self, rows: list[bytes]) -> None:
        crcs = list(map(crc32c, rows))
        self._rows += len(rows)
        self._sum = (self._sum + sum(crcs)) & _MASK
        self._squares = (self._squares + sum(map(mul, crcs, crcs))) & _MASK

    def result(self) -> TableDigest:
        """The digest of everything fed so far; bytes after the last newline (COPY always ends a row
        with one) count as one more row."""
        rows, s1, s2 = self._rows, self._sum, self._squares
        if self._carry:
            c = crc32c(b"".join(self._carry))
            rows += 1
            s1, s2 = (s1 + c) & _MASK, (s2 + c * c) & _MASK
        return TableDigest(rows, f"{s1:016x}{s2:016x}")


EMPTY_DIGEST = TableDigest(0, "0" * 32)  # an empty table's


def digest_of(data: bytes) -> TableDigest:
    """The digest of a whole COPY text stream held in memory."""
    d = CopyDigest()
    d.update(data)
    return d.result()
