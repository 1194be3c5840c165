"""A format 2 snapshot's schema archive, understood without pg_restore: its TOC and dependency graph.

The schema archive (`pg_dump -Fc -Z0` with every table's data excluded)
holds definitions, sequence values (in the TOC itself), materialized view
refreshes (statements, no data) and large objects (the only data blocks).
So every restore step but loading large objects needs only the header and
the TOC: those are read once and fed to pg_restore as a small archive of
their own, instead of reading the whole stream again for each step.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, replace

from core.postgres.archive import DataBlock, Header, Section, Toc, TocEntry, read_archive, write_custom


@dataclass(frozen=True)
class SchemaArchive:
    """The schema archive's header and table of contents."""

    header: Header
    toc: Toc

    @property
    def data_entries(self) -> list[TocEntry]:
        """Entries of the data section (sequence values, large objects, refreshes)."""
        return [e for e in self.toc if e.section is Section.DATA]

    @property
    def has_blocks(self) -> bool:
        """Whether any entry has a data block (large objects): then its data step needs the whole stream."""
        return any(e.had_dumper for e in self.toc)

    def toc_only(self) -> AsyncIterator[bytes]:
        """The archive without its data blocks: enough for every entry that has none.

        Entries that had data are marked as having none, so a list that does
        not select them (every list but the large objects') never waits for a block.
        """
        return write_custom(self.header, [replace(e, had_dumper=False) for e in self.toc], _no_blocks())


async def _no_blocks() -> AsyncIterator[DataBlock]:
    return
    yield  # an async generator that yields nothing


async def read_schema(stream: AsyncIterable[bytes]) -> SchemaArchive:
    """Read the header and the TOC, then stop reading (the data blocks are not needed)."""
    archive = await read_archive(stream)
    try:
        return SchemaArchive(archive.header, archive.toc)
    finally:
        await archive.aclose()


def restore_list(entries: Iterable[TocEntry]) -> str:
    """A `pg_restore -L` list of ``entries`` (pg_restore reads each line's leading dump id)."""
    return "".join(f"{e.dump_id};\n" for e in entries)
