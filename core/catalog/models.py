"""The catalog's records, now in :mod:`core.records` (this name stays importable)."""

from __future__ import annotations

from core.records import (
    BackupRecord,
    JobRecord,
    RestoreRecord,
    SnapshotRecord,
    VerificationRecord,
)

__all__ = ["BackupRecord", "JobRecord", "RestoreRecord", "SnapshotRecord", "VerificationRecord"]
