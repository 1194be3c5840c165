"""The SQLite catalog's read-only side under its original name (``CatalogReader(path)``).

The implementation is :mod:`core.catalog.sqlite_queries`; the interface is
:class:`core.catalog.base.CatalogQueries`, and front ends reach it through
the engine (``engine.queries``, :mod:`core.queries`). The record types live
in :mod:`core.records`.
"""

from __future__ import annotations

from core.catalog.sqlite_queries import SqliteQueries
from core.records import AuditTable, DatabaseSummary, SnapshotRow, TargetCheck

CatalogReader = SqliteQueries

__all__ = ["AuditTable", "CatalogReader", "DatabaseSummary", "SnapshotRow", "TargetCheck"]
