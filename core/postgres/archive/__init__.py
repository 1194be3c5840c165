"""pg_dump's archive formats, read and written without pg_restore.

Backstop reads archives to restore tables in dependency order (each TOC
entry's ``deps``, which ``pg_restore -l`` does not show) and to re-apply a
database's own properties (``Toc.database_entries``), and writes them to hand
per-table backups back as one standard archive (``backstop export``): the
schema archive's TOC plus a TABLE DATA entry per table whose data block is
the stored COPY stream.

Covered: archive versions 1.14 (pg_dump 12 to 15), 1.15 (pg_dump 16) and 1.16
(pg_dump 17), uncompressed (``-Z0``); the custom format read from a stream
and written as one, the directory format written and read. Anything else is
refused with a one-line PostgresError.

    archive = await read_archive(stream)            # header + TOC; blocks stream after
    archive.toc.dependencies(dump_id)               # the dependency graph
    entries, ids = with_table_data(archive.entries, {("public", "t"): ["id", "name"]})
    data = merge_data(entries, {ids[("public", "t")]: open_copy_stream}, archive.blocks())
    async for piece in write_custom(archive.header, entries, data): ...
"""

from core.postgres.archive.model import (
    BLK_BLOBS,
    BLK_DATA,
    COPY_END,
    DataBlock,
    Header,
    LargeObject,
    LargeObjects,
    Section,
    TableData,
    TocEntry,
)
from core.postgres.archive.reader import Archive, read_archive, read_directory
from core.postgres.archive.toc import (
    Toc,
    fmt_id,
    fmt_qualified,
    order_entries,
    table_data_entry,
    with_table_data,
)
from core.postgres.archive.writer import directory_filename, merge_data, write_custom, write_directory

__all__ = [
    "BLK_BLOBS", "BLK_DATA", "COPY_END", "Archive", "DataBlock", "Header", "LargeObject", "LargeObjects",
    "Section", "TableData", "Toc", "TocEntry", "directory_filename", "fmt_id", "fmt_qualified", "merge_data",
    "order_entries", "read_archive", "read_directory", "table_data_entry", "with_table_data", "write_custom",
    "write_directory",
]
