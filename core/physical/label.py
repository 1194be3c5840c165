"""What a base backup says about itself: backup_label, the server's backup_manifest, global/pg_control.

Each is read while its bytes stream past on their way to the repository
(:class:`Tap`), so nothing is read twice and nothing is held but a line.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import IntegrityError
from core.repository.manifest import FileEntry

LABEL_FILE = "backup_label"
MANIFEST_FILE = "backup_manifest"
CONTROL_FILE = "global/pg_control"
TABLESPACE_MAP = "tablespace_map"

_START_WAL = re.compile(r"^START WAL LOCATION: ([0-9A-Fa-f]+/[0-9A-Fa-f]+) \(file ([0-9A-F]{24})\)$", re.M)
_START_TLI = re.compile(r"^START TIMELINE: (\d+)$", re.M)
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
_MAX_LINE = 1 << 20  # a manifest line holds one file's path and checksum: far below this
_MAX_LABEL = 1 << 16


class Tap:
    """A reader that shows every byte it passes on to ``sink`` (and nothing else changes)."""

    def __init__(self, reader: object, sink: Callable[[memoryview], None]) -> None:
        self._reader = reader
        self._sink = sink

    def readinto(self, view: memoryview) -> int:
        n = self._reader.readinto(view) or 0  # type: ignore[attr-defined]
        if n:
            self._sink(view[:n])
        return n


@dataclass(frozen=True)
class BackupLabel:
    """backup_label's start of the backup: where recovery begins."""

    start_lsn: str
    start_wal: str  # the segment file holding start_lsn
    timeline: int


def parse_label(data: bytes) -> BackupLabel:
    """START WAL LOCATION and START TIMELINE of a backup_label file."""
    text = data.decode("utf-8", "replace")
    wal, tli = _START_WAL.search(text), _START_TLI.search(text)
    if wal is None or tli is None:
        raise IntegrityError("the base backup's backup_label has no START WAL LOCATION or START TIMELINE; "
                             "the stream is not a base backup this version understands")
    return BackupLabel(_lsn(wal.group(1)), wal.group(2), int(tli.group(1)))


def _lsn(text: str) -> str:
    """An LSN as PostgreSQL prints it: upper-case hex, no leading zeros ("0/2000028")."""
    hi, lo = text.split("/")
    return f"{int(hi, 16):X}/{int(lo, 16):X}"


def control_system_identifier(head: bytes) -> int | None:
    """The system identifier at the start of global/pg_control, in the server's byte order.

    pg_control_version (the u32 after it) tells the order: read in the
    wrong one it is an absurd number.
    """
    if len(head) < 12:
        return None
    for order in ("<", ">"):
        sysid, version = struct.unpack(order + "QI", head[:12])
        if 0 < version < 100_000:
            return int(sysid)
    return None


@dataclass
class ManifestCheck:
    """The server's backup_manifest, checked line by line as it streams past.

    PostgreSQL writes one file per line (``{ "Path": ..., "Size": ...,
    "Checksum-Algorithm": "SHA256", "Checksum": ... }``) and the WAL range
    on lines of their own, then ``"Manifest-Checksum"``: the SHA-256 of
    every byte before that line.
    """

    files: dict[str, tuple[int, str | None, str | None]] = field(default_factory=dict)  # path -> size, algo, sum
    wal_ranges: list[tuple[int, str, str]] = field(default_factory=list)  # (timeline, start, end)
    version: int | None = None
    system_identifier: int | None = None
    manifest_checksum: str | None = None
    _buf: bytearray = field(default_factory=bytearray)
    _sha: hashlib._Hash = field(default_factory=hashlib.sha256)  # noqa: SLF001

    def feed(self, data: memoryview) -> None:
        """More bytes of the manifest."""
        self._buf += data
        while (nl := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:nl + 1])
            del self._buf[:nl + 1]
            self._line(line)
        if len(self._buf) > _MAX_LINE:
            raise IntegrityError("the base backup's backup_manifest has a line over 1 MiB; it is not a manifest "
                                 "PostgreSQL writes: run the backup again")

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "surrogateescape").strip()
        if text.startswith('"Manifest-Checksum"'):
            self.manifest_checksum = json.loads("{" + text.rstrip("}") + "}")["Manifest-Checksum"]
            return
        self._sha.update(raw)
        if m := re.search(r'"PostgreSQL-Backup-Manifest-Version": (\d+)', text):
            self.version = int(m.group(1))
        if m := re.search(r'"System-Identifier": (\d+)', text):
            self.system_identifier = int(m.group(1))
        body = text.rstrip(",")
        if body.startswith('{ "Path"') or body.startswith('{ "Encoded-Path"'):
            doc = _json(body)
            path = doc["Path"] if "Path" in doc else bytes.fromhex(doc["Encoded-Path"]).decode(
                "utf-8", "surrogateescape")
            self.files[path] = (int(doc["Size"]), doc.get("Checksum-Algorithm"), doc.get("Checksum"))
        elif body.startswith('{ "Timeline"'):
            doc = _json(body)
            self.wal_ranges.append((int(doc["Timeline"]), _lsn(doc["Start-LSN"]), _lsn(doc["End-LSN"])))

    def finish(self) -> None:
        """The manifest ended: its own checksum must match."""
        if self._buf.strip():
            self._line(bytes(self._buf))
            self._buf.clear()
        if self.manifest_checksum is None or self.manifest_checksum.lower() != self._sha.hexdigest():
            raise IntegrityError("the base backup's backup_manifest fails its own checksum (or has none); "
                                 "the stream is damaged: run the backup again")
        if not self.wal_ranges:
            raise IntegrityError("the base backup's backup_manifest has no WAL range; run the backup again")
        for _, start, end in self.wal_ranges:
            if not (_LSN.match(start) and _LSN.match(end)):
                raise IntegrityError("the base backup's backup_manifest has a malformed WAL range")

    @property
    def stop_lsn(self) -> str:
        """Where the WAL needed to make the backup consistent ends."""
        return self.wal_ranges[-1][2]

    def compare(self, entries: list[FileEntry], crc32c: dict[str, str] | None = None) -> None:
        """Every file the server listed was stored with its size and checksum, and nothing else was stored.

        The checksum is the manifest's CRC-32C (``crc32c``: what the stream held, per file) or SHA-256.
        """
        crcs = crc32c or {}
        stored = {e.name: e for e in entries if e.format == "pg-file" and e.name != MANIFEST_FILE}
        problems: list[str] = []
        for path, (size, algo, checksum) in self.files.items():
            entry = stored.pop(path, None)
            if entry is None:
                problems.append(f"{path} is in the server's backup_manifest but not in the stream")
            elif entry.size != size:
                problems.append(f"{path} is {entry.size} bytes in the stream, {size} in the backup_manifest")
            elif algo == "SHA256" and checksum and checksum.lower() != entry.sha256:
                problems.append(f"{path} does not match the SHA-256 the server computed")
            elif algo == "CRC32C" and checksum and checksum.lower() != crcs.get(path):
                problems.append(f"{path} does not match the CRC-32C the server computed")
        problems += [f"{path} is in the stream but not in the server's backup_manifest" for path in sorted(stored)]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise IntegrityError(f"the base backup does not match the server's backup_manifest: {problems[0]}{more}; "
                                 "nothing was committed: run the backup again")


def _json(body: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise IntegrityError("the base backup's backup_manifest has a malformed line; run the backup again") from None
    if not isinstance(doc, dict):
        raise IntegrityError("the base backup's backup_manifest has a malformed line; run the backup again")
    return doc
