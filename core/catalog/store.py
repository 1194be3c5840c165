"""The embedded SQLite catalog under its original name (``Catalog(path)``).

The implementation is :mod:`core.catalog.sqlite`; the interface every other
module types against is :class:`core.catalog.base.Catalog`.
"""

from __future__ import annotations

from core.catalog.sqlite import SqliteCatalog

Catalog = SqliteCatalog

__all__ = ["Catalog"]
