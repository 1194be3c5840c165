"""Open the catalog a config names: an SQLite file, or a PostgreSQL database for a fleet."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.catalog.base import Catalog
    from core.config import CatalogConfig


def open_catalog(config: CatalogConfig) -> Catalog:
    """The catalog at ``catalog.url``, its schema migrated to this version."""
    if config.is_postgres:
        # Imported here: psycopg and the dialect layer cost nothing to an SQLite user's commands.
        from core.catalog.postgres import PostgresCatalog

        return PostgresCatalog(config.url)
    from core.catalog.sqlite import SqliteCatalog

    return SqliteCatalog(config.sqlite_path)
