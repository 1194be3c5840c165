"""The table of contents as a graph, and what Backstop adds to it: TABLE DATA entries.

A per-table backup keeps the schema as a ``pg_dump --exclude-table-data``
archive and each table's rows as a COPY stream. To hand a standard archive
back (``backstop export``), each table gets the TABLE DATA entry pg_dump would
have written for it (:func:`table_data_entry`), placed where pg_dump puts
them (:func:`order_entries`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import overload

from core.errors import PostgresError
from core.postgres.archive.model import OFFSET_NOT_SET, RELKIND_PARTITIONED_TABLE, Section, TocEntry, raw_bytes

TableName = tuple[str, str]  # (schema, table)

# Keywords pg_dump quotes as identifiers: every category but UNRESERVED_KEYWORD, as
# pg_get_keywords() lists them for PostgreSQL 16, plus the ones PostgreSQL 17 added. A
# newer list only quotes more, which older servers read just the same.
_QUOTED_KEYWORDS = frozenset((
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization", "between",
    "bigint", "binary", "bit", "boolean", "both", "case", "cast", "char", "character", "check", "coalesce",
    "collate", "collation", "column", "concurrently", "constraint", "create", "cross", "current_catalog",
    "current_date", "current_role", "current_schema", "current_time", "current_timestamp", "current_user", "dec",
    "decimal", "default", "deferrable", "desc", "distinct", "do", "else", "end", "except", "exists", "extract",
    "false", "fetch", "float", "for", "foreign", "freeze", "from", "full", "grant", "greatest", "group", "grouping",
    "having", "ilike", "in", "initially", "inner", "inout", "int", "integer", "intersect", "interval", "into", "is",
    "isnull", "join", "json_array", "json_arrayagg", "json_exists", "json_object", "json_objectagg", "json_query",
    "json_scalar", "json_serialize", "json_table", "json_value", "lateral", "leading", "least", "left", "like",
    "limit", "localtime", "localtimestamp", "merge_action", "national", "natural", "nchar", "none", "normalize",
    "not", "notnull", "null", "nullif", "numeric", "offset", "on", "only", "or", "order", "out", "outer",
    "overlaps", "overlay", "placing", "position", "precision", "primary", "real", "references", "returning",
    "right", "row", "select", "session_user", "setof", "similar", "smallint", "some", "substring", "symmetric",
    "system_user", "table", "tablesample", "then", "time", "timestamp", "to", "trailing", "treat", "trim", "true",
    "union", "unique", "user", "using", "values", "varchar", "variadic", "verbose", "when", "where", "window",
    "with", "xmlattributes", "xmlconcat", "xmlelement", "xmlexists", "xmlforest", "xmlnamespaces", "xmlparse",
    "xmlpi", "xmlroot", "xmlserialize", "xmltable",
))

# Entry types that carry properties of the database itself (tag "DATABASE <name>" for the dependent kinds).
_DATABASE_DESCS = ("DATABASE", "DATABASE PROPERTIES")
_DATABASE_DEPENDENT_DESCS = ("COMMENT", "ACL", "SECURITY LABEL")


def fmt_id(name: str) -> str:
    """An identifier quoted as pg_dump's fmtId quotes it: only when it must be."""
    plain = (
        name != ""
        and (name[0] == "_" or "a" <= name[0] <= "z")
        and all(c == "_" or "a" <= c <= "z" or "0" <= c <= "9" for c in name)
        and name not in _QUOTED_KEYWORDS
    )
    return name if plain else '"' + name.replace('"', '""') + '"'


def fmt_qualified(namespace: str | None, name: str) -> str:
    """``schema.name`` with each part quoted as pg_dump quotes it."""
    return f"{fmt_id(namespace)}.{fmt_id(name)}" if namespace else fmt_id(name)


class Toc(Sequence[TocEntry]):
    """An archive's entries in archive order, with look-ups by dump id and name and the dependency graph."""

    def __init__(self, entries: Iterable[TocEntry]) -> None:
        self._entries = list(entries)
        self._by_id: dict[int, TocEntry] = {}
        self._position: dict[int, int] = {}
        self._dependents: dict[int, list[int]] = {}
        self._by_name: dict[tuple[str, str, str], TocEntry] = {}
        for i, entry in enumerate(self._entries):
            if entry.dump_id in self._by_id:
                raise PostgresError(f"the archive lists dump id {entry.dump_id} twice: it is damaged")
            self._by_id[entry.dump_id] = entry
            self._position[entry.dump_id] = i
            self._by_name.setdefault((entry.desc, entry.namespace or "", entry.tag), entry)
        self._deps = {e.dump_id: e.deps for e in self._entries}
        for entry in self._entries:
            for dep in entry.deps:
                self._dependents.setdefault(dep, []).append(entry.dump_id)

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> TocEntry: ...

    @overload
    def __getitem__(self, index: slice) -> list[TocEntry]: ...

    def __getitem__(self, index: int | slice) -> TocEntry | list[TocEntry]:
        return self._entries[index]

    def __iter__(self) -> Iterator[TocEntry]:
        return iter(self._entries)

    def get(self, dump_id: int) -> TocEntry | None:
        """The entry with ``dump_id``, or None."""
        return self._by_id.get(dump_id)

    def entry(self, dump_id: int) -> TocEntry:
        """The entry with ``dump_id``; KeyError if the archive has none."""
        return self._by_id[dump_id]

    @property
    def max_dump_id(self) -> int:
        """The highest dump id in use (0 for an empty TOC): new entries take ids above it."""
        return max(self._by_id, default=0)

    def find(self, desc: str, namespace: str | None, tag: str) -> TocEntry | None:
        """The first entry of type ``desc`` named ``tag`` in schema ``namespace`` (None or "": outside schemas)."""
        return self._by_name.get((desc, namespace or "", tag))

    def find_all(self, desc: str | None = None, tag: str | None = None) -> list[TocEntry]:
        """Entries of type ``desc`` and/or with tag ``tag``, in archive order."""
        return [e for e in self._entries if (desc is None or e.desc == desc) and (tag is None or e.tag == tag)]

    def _walk(self, start: int, edges: Mapping[int, Sequence[int]], transitive: bool) -> list[TocEntry]:
        seen: set[int] = set()
        todo = list(edges.get(start, ()))
        while todo:
            dump_id = todo.pop()
            if dump_id in seen or dump_id == start:
                continue
            seen.add(dump_id)
            if transitive:
                todo.extend(edges.get(dump_id, ()))
        # pg_dump may record a dependency on an object it did not dump: only entries that exist count.
        return sorted((self._by_id[i] for i in seen if i in self._by_id), key=lambda e: self._position[e.dump_id])

    def dependencies(self, dump_id: int, *, transitive: bool = True) -> list[TocEntry]:
        """What the entry depends on (directly, or all the way down), in archive order."""
        return self._walk(dump_id, self._deps, transitive)

    def dependents(self, dump_id: int, *, transitive: bool = True) -> list[TocEntry]:
        """What depends on the entry (directly, or all the way up), in archive order."""
        return self._walk(dump_id, self._dependents, transitive)

    def database_entries(self) -> list[TocEntry]:
        """The entries about the database itself: DATABASE, DATABASE PROPERTIES and the database's
        COMMENT, ACL and SECURITY LABEL (pg_restore applies them only with --create)."""
        return [e for e in self._entries
                if e.desc in _DATABASE_DESCS
                or (e.desc in _DATABASE_DEPENDENT_DESCS and e.tag.startswith("DATABASE ") and not e.namespace)]

    def tables(self) -> list[TocEntry]:
        """The TABLE entries (ordinary and partitioned tables), in archive order."""
        return [e for e in self._entries if e.desc == "TABLE"]


def table_data_entry(table: TocEntry, columns: Sequence[str], dump_id: int) -> TocEntry:
    """The TABLE DATA entry pg_dump writes for ``table`` (its TABLE entry) whose COPY data lists
    ``columns`` in this order (the table's columns but dropped and generated ones)."""
    if table.desc != "TABLE":
        raise PostgresError(f"table data can only belong to a TABLE entry, not to {table.label()}")
    if table.relkind == RELKIND_PARTITIONED_TABLE:  # known from archive 1.16 on
        raise PostgresError(f"{table.label()} is partitioned: its partitions hold its data, it has none")
    column_list = f"({', '.join(fmt_id(c) for c in columns)})" if columns else ""
    return TocEntry(
        dump_id=dump_id, had_dumper=True, table_oid=0, oid=table.oid, tag=table.tag, desc="TABLE DATA",
        section=Section.DATA, defn=None, drop_stmt=None,
        # Two spaces before FROM when there is no column list: what pg_dump writes for a table without columns.
        copy_stmt=f"COPY {fmt_qualified(table.namespace, table.tag)} {column_list} FROM stdin;\n",
        namespace=table.namespace, tablespace=None, tableam=None, owner=table.owner, deps=(table.dump_id,),
        relkind=0, data_state=OFFSET_NOT_SET,
    )


def _data_order(entry: TocEntry) -> tuple[bool, bytes, bytes]:
    # pg_dump sorts objects of one kind by schema name, then name, comparing bytes (strcmp);
    # objects outside any schema come last.
    return entry.namespace is None, raw_bytes(entry.namespace or ""), raw_bytes(entry.tag)


def order_entries(entries: Iterable[TocEntry]) -> list[TocEntry]:
    """Entries in the order pg_restore expects: every TABLE DATA entry at the start of the data
    section (after all pre-data entries, before sequence values and large objects), sorted as
    pg_dump sorts them; every other entry keeps its place."""
    entries = list(entries)
    table_data = sorted((e for e in entries if e.desc == "TABLE DATA"), key=_data_order)
    rest = [e for e in entries if e.desc != "TABLE DATA"]
    at = next((i for i, e in enumerate(rest) if e.section in (Section.DATA, Section.POST_DATA)), len(rest))
    return rest[:at] + table_data + rest[at:]


def with_table_data(entries: Sequence[TocEntry],
                    columns: Mapping[TableName, Sequence[str]]) -> tuple[list[TocEntry], dict[TableName, int]]:
    """``entries`` plus a TABLE DATA entry for each ``(schema, table)`` in ``columns`` (its COPY columns),
    with fresh dump ids, in pg_restore's order. Returns the entries and the new dump id of each table."""
    toc = Toc(entries)
    next_id = toc.max_dump_id + 1
    added: list[TocEntry] = []
    ids: dict[TableName, int] = {}
    for (schema, name), cols in sorted(columns.items(), key=lambda kv: (raw_bytes(kv[0][0]), raw_bytes(kv[0][1]))):
        table = toc.find("TABLE", schema, name)
        if table is None:
            raise PostgresError(f"the schema archive has no table {schema}.{name}: it cannot take its data")
        if toc.find("TABLE DATA", schema, name) is not None:
            raise PostgresError(f"the schema archive already holds the data of {schema}.{name}")
        added.append(table_data_entry(table, cols, next_id))
        ids[(schema, name)] = next_id
        next_id += 1
    return order_entries([*entries, *added]), ids

