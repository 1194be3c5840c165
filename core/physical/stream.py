"""Storing a base backup's tar stream: each member becomes a manifest entry, each file fixed blocks.

Runs in a worker thread reading the pipe from pg_basebackup. One member at
a time: its content goes straight through the repository writer in
512 KiB blocks (a whole number of 8 KiB pages, so an unchanged stretch of
a relation file is the same chunk in every backup). backup_label,
backup_manifest and the head of global/pg_control are read on the way
past, never twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import crc32c

from core.errors import IntegrityError
from core.physical.label import (
    CONTROL_FILE,
    LABEL_FILE,
    MANIFEST_FILE,
    BackupLabel,
    ManifestCheck,
    Tap,
    control_system_identifier,
    parse_label,
)
from core.physical.tar import DIR, FILE, SYMLINK, RawReader, StreamCutShort, TarStream
from core.repository.crc import manifest_hex
from core.repository.manifest import PG_DIR, PG_FILE, PG_SYMLINK, FileEntry
from core.repository.writer import StreamWriter

# 64 PostgreSQL pages. Each chunk is compressed alone: 128 KiB blocks stored 2-3% more than pgBackRest's
# whole-file zstd, 512 KiB ones 2% less, and a 5% append still re-stores a quarter of what pgBackRest's
# incremental does (core/repository/FORMAT.md, physical snapshots).
BLOCK_SIZE = 512 * 1024
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_LABEL_MAX = 1 << 16


@dataclass
class StoredBackup:
    """What the stream held: its entries in tar order and what the backup says about itself."""

    files: list[FileEntry]
    label: BackupLabel
    manifest: ManifestCheck
    control_system_identifier: int | None
    stream_bytes: int = 0
    crc32c: dict[str, str] = field(default_factory=dict)  # file name -> CRC-32C as backup_manifest writes it


class _Crc32c:
    """CRC-32C of what a member's reader passes on (what the server put in backup_manifest)."""

    def __init__(self) -> None:
        self.value = 0

    def feed(self, view: memoryview) -> None:
        self.value = crc32c.crc32c(view, value=self.value)

    def manifest_hex(self) -> str:
        return manifest_hex(self.value)


@dataclass
class _Seen:
    label: bytearray = field(default_factory=bytearray)
    control: bytearray = field(default_factory=bytearray)
    manifest: ManifestCheck = field(default_factory=ManifestCheck)

    def take_label(self, view: memoryview) -> None:
        if len(self.label) + len(view) > _LABEL_MAX:
            raise IntegrityError("the base backup's backup_label is over 64 KiB; it is not one PostgreSQL writes")
        self.label += view

    def take_control(self, view: memoryview) -> None:
        if len(self.control) < 16:
            self.control += view[:16 - len(self.control)]


def store_stream(writer: StreamWriter, raw: RawReader) -> StoredBackup:
    """Read the tar stream to its end, storing every member; the checks that need all of it come after."""
    tar = TarStream(raw)
    seen = _Seen()
    files: list[FileEntry] = []
    names: set[str] = set()
    crcs: dict[str, str] = {}
    for member, content in tar.members():
        if member.name in names:
            raise IntegrityError(f"the base backup's tar stream holds {member.name} twice; run the backup again")
        names.add(member.name)
        if member.kind == FILE:
            reader: object = content
            if member.name == LABEL_FILE:
                reader = Tap(content, seen.take_label)
            elif member.name == MANIFEST_FILE:
                reader = Tap(content, seen.manifest.feed)
            elif member.name == CONTROL_FILE:
                reader = Tap(content, seen.take_control)
            crc = _Crc32c()
            entry = writer.write(Tap(reader, crc.feed), member.name, PG_FILE,
                                 block_size=BLOCK_SIZE)
            crcs[member.name] = crc.manifest_hex()
            if entry.size != member.size:
                raise IntegrityError(f"{member.name}: {entry.size} bytes stored, {member.size} announced")
            entry.mode = member.mode
        elif member.kind == DIR:
            entry = FileEntry(member.name, PG_DIR, 0, _EMPTY_SHA256, [], mode=member.mode)
        elif member.kind == SYMLINK:
            entry = FileEntry(member.name, PG_SYMLINK, 0, _EMPTY_SHA256, [], mode=member.mode, link=member.link)
        else:
            raise IntegrityError(f"the base backup's tar stream holds {member.name} of tar type {member.kind!r}, "
                                 "which a data directory never has; check what produced the stream")
        files.append(entry)
    if not tar.ended:
        raise StreamCutShort("the base backup's tar stream ended without its end marker; pg_basebackup stopped "
                             "early: see its error, then run the backup again")
    _drain(raw)
    for required in (LABEL_FILE, MANIFEST_FILE, CONTROL_FILE):
        if required not in names:
            raise IntegrityError(f"the base backup's tar stream has no {required}; it is not a complete base "
                                 "backup: run the backup again")
    seen.manifest.finish()
    return StoredBackup(files, parse_label(bytes(seen.label)), seen.manifest,
                        control_system_identifier(bytes(seen.control)), tar.bytes_read, crcs)


def _drain(raw: RawReader) -> None:
    """Read what follows the end marker (padding) so the writer of the pipe can finish."""
    scratch = memoryview(bytearray(1 << 16))
    while raw.readinto(scratch):
        pass
