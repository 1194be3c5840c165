"""Snapshot manifests: the last object a backup writes, and what makes it exist."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from core.errors import IntegrityError, RepositoryError
from core.repository.crypto import open_object, seal_object
from core.repository.keys import DataKey

SNAPSHOT_PREFIX = "snapshots/"
# 1: one `pg_dump -Fc -Z0` stream. 2: a schema archive and one COPY stream per table.
MANIFEST_FORMAT = 2
SCHEMA_FILE = "schema.pgdump"  # format 2: every definition, sequence value and large object; no table data
_KIND = b"snapshot"
LOGICAL, PHYSICAL = "logical", "physical"
# Physical snapshots (FORMAT.md 10.2): one entry per member of pg_basebackup's tar stream.
PG_FILE, PG_DIR, PG_SYMLINK = "pg-file", "pg-dir", "pg-symlink"


@dataclass
class FileEntry:
    """One stored stream or file: its chunks in order and its plaintext SHA-256."""

    name: str
    format: str
    size: int
    sha256: str
    chunks: list[str]  # chunk ids, hex
    # A table's data stream (format "copy-text"): [schema, name] as PostgreSQL spells them, and the
    # columns in COPY order. Written only when set, so single-stream manifests keep their shape.
    relation: list[str] | None = None
    columns: list[str] | None = None
    # A physical snapshot's member (format "pg-file", "pg-dir", "pg-symlink"): its permission bits
    # and, for a symlink, its target. Written only when set, like the two above.
    mode: int | None = None
    link: str | None = None
    # A table's data stream: its row count and order-independent digest (core/repository/table_digest.py),
    # what a drill compares the restored table with. Written only when set.
    rows: int | None = None
    digest: str | None = None


@dataclass
class PhysicalInfo:
    """What a physical snapshot (a base backup) needs besides its files: the WAL range that makes it consistent."""

    start_lsn: str  # "X/Y", from backup_label's START WAL LOCATION
    stop_lsn: str  # "X/Y", the end of the backup_manifest's WAL range
    timeline: int
    system_identifier: str  # decimal: a u64 does not survive every JSON reader as a number
    pg_version: str  # server_version_num, e.g. "150010"
    wal_segment_size: int
    start_wal: str  # the 24-hex name of the segment holding start_lsn
    tablespaces: list[str] = field(default_factory=list)  # always empty: extra tablespaces are refused for now


_FILE_OPTIONAL = ("relation", "columns", "mode", "link", "rows", "digest")


@dataclass
class Manifest:
    """Everything needed to restore one snapshot."""

    db: str
    kind: str  # "logical" or "physical"
    started_at: str
    finished_at: str
    files: list[FileEntry]
    size_bytes: int
    stored_bytes: int
    new_chunks: int
    targets: list[str]
    server_version: str = ""
    tool_versions: dict[str, str] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    table_bytes: dict[str, int] = field(default_factory=dict)  # source size per table (restore weights)
    host: str = ""
    format: int = 1
    # Format 2: the source database's encoding; COPY streams are in it (client_encoding).
    encoding: str = ""
    # Id of the manifest this one replaces (re-sealed under a newer data key);
    # written only when set, so ordinary manifests stay as before (FORMAT.md 10).
    supersedes: str | None = None
    # Physical snapshots only; written only when set, so logical manifests keep their shape.
    physical: PhysicalInfo | None = None

    def seal(self, key: DataKey) -> tuple[str, str, bytes]:
        """Encrypt; returns (snapshot id, object name, bytes)."""
        doc = asdict(self)
        if doc["supersedes"] is None:
            del doc["supersedes"]
        if not doc["encoding"]:
            del doc["encoding"]
        if doc["physical"] is None:
            del doc["physical"]
        for f in doc["files"]:
            for optional in _FILE_OPTIONAL:
                if f[optional] is None:
                    del f[optional]
        data = seal_object(json.dumps(doc, separators=(",", ":")).encode(), _KIND, key)
        sid = hashlib.sha256(data).hexdigest()
        return sid, f"{SNAPSHOT_PREFIX}{sid}", data

    @classmethod
    def open(cls, data: bytes, keys: dict[int, DataKey]) -> Manifest:
        """Decrypt and parse a stored manifest."""
        try:
            doc = json.loads(open_object(data, _KIND, keys))
            if doc.get("format", 1) > MANIFEST_FORMAT:
                raise RepositoryError("snapshot manifest format is newer than this backstop; upgrade it")
            doc["files"] = [FileEntry(**f) for f in doc["files"]]
            if doc.get("physical") is not None:
                doc["physical"] = PhysicalInfo(**doc["physical"])
            return cls(**doc)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise IntegrityError("snapshot manifest is malformed") from None

    @property
    def per_table(self) -> bool:
        """Format 2: a schema archive plus one COPY stream per table (else one pg_dump archive)."""
        if self.kind != LOGICAL:
            return False
        return any(f.relation is not None for f in self.files) or self.format >= 2

    @property
    def is_physical(self) -> bool:
        """A base backup of a whole cluster (FORMAT.md 10.2), not a dump of one database."""
        return self.kind == PHYSICAL

    def file(self, name: str) -> FileEntry:
        """The stored stream called ``name``."""
        for f in self.files:
            if f.name == name:
                return f
        raise IntegrityError(f"snapshot manifest has no stream {name!r}")

    def table_files(self) -> list[FileEntry]:
        """The per-table data streams, largest first."""
        return sorted((f for f in self.files if f.relation is not None), key=lambda f: -f.size)

    def chunk_ids(self) -> set[bytes]:
        """Every chunk this snapshot needs."""
        return {bytes.fromhex(c) for f in self.files for c in f.chunks}
