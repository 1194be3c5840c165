"""Per-table integrity: digests taken from the COPY streams at backup time, compared after a drill's restore.

Placeholder interface (issue 13): the digest and the checks are filled in by
the integrity work; until then a manifest carries no digests and the checks
say so instead of passing silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.drills.model import DrillCheck
from core.repository.manifest import Manifest


@dataclass(frozen=True)
class TableDigest:
    """A table's row count and order-independent content digest (hex)."""

    rows: int
    digest: str


async def check_tables(dsn: str, manifest: Manifest) -> list[DrillCheck]:
    """One check per table whose digest the manifest recorded, comparing the restored table at ``dsn``."""
    return [DrillCheck("tables", False, "this snapshot records no table digests")]


async def check_indexes(dsn: str) -> DrillCheck | None:
    """amcheck over the restored database's btree indexes; None where the extension is not available."""
    return None


async def verify_data_dir(bin_dir: Path, pgdata: Path) -> DrillCheck:
    """pg_verifybackup over a restored physical data directory (its backup_manifest)."""
    return DrillCheck("pg_verifybackup", False, "not run")
