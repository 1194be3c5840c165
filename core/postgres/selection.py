"""Which archive entries a table restore needs: the tables, what they depend on, what hangs on them.

Following the archive's dependency graph (each TOC entry's ``deps``), not
every function and type of the database: a function whose argument is
another table's row type has nothing to do with the table asked for, and
creating it would fail without that other table.

For each table asked for (a partitioned table brings all its partitions):

- everything it depends on, transitively (schemas, types, domains,
  sequences of its defaults, functions its defaults call);
- everything that depends on it and belongs to it: indexes, constraints,
  defaults, triggers (with the functions they call), row-level security and
  its policies, rules, extended statistics, comments, grants, sequences it
  owns and their values, partition attachments; and the dependencies of those;
- foreign keys only when every table they join comes back too; the others
  are left out and listed.

Views and functions that use the table are not brought back: restoring a
table must not recreate half of the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.errors import RestoreRefused, UsageError
from core.postgres.archive import Toc, TocEntry
from core.postgres.names import Relation, parse_relation, show_relation

# Entries that belong to a table when they depend on it.
_BELONG = frozenset({
    "INDEX", "CONSTRAINT", "CHECK CONSTRAINT", "DEFAULT", "TRIGGER", "POLICY", "ROW SECURITY", "RULE",
    "STATISTICS", "EXTENDED STATISTICS", "COMMENT", "ACL", "SECURITY LABEL", "SEQUENCE", "SEQUENCE OWNED BY",
    "SEQUENCE SET", "INDEX ATTACH", "TABLE ATTACH", "FK CONSTRAINT",
})
_TABLES = frozenset({"TABLE"})
# Entries that describe any object (its comment, grants, labels): they come with whatever is restored.
_DESCRIBES = frozenset({"COMMENT", "ACL", "SECURITY LABEL"})


@dataclass
class Selection:
    """What a table restore runs, in archive order, and why each entry is there."""

    entries: list[TocEntry] = field(default_factory=list)
    tables: list[Relation] = field(default_factory=list)  # tables whose rows are loaded (partitions included)
    left_out: list[str] = field(default_factory=list)  # foreign keys to tables not restored
    reason: dict[int, Relation] = field(default_factory=dict)  # dump id -> the table asked for it came with

    def why(self, dump_id: int | None) -> str:
        """"<object> for table <t>", for an error about a TOC entry."""
        entry = next((e for e in self.entries if e.dump_id == dump_id), None)
        if entry is None:
            return ""
        what = f"{entry.desc} {entry.namespace + '.' if entry.namespace else ''}{entry.tag}"
        table = self.reason.get(entry.dump_id)
        return f"{what} (needed for table {show_relation(table)})" if table else what


def tables_in(toc: Toc) -> list[Relation]:
    """Every table the archive defines."""
    return [(e.namespace or "", e.tag) for e in toc if e.desc in _TABLES]


def select(toc: Toc, wanted: list[Relation]) -> Selection:
    """The entries restoring ``wanted`` needs (see the module docstring)."""
    by_rel = {(e.namespace or "", e.tag): e for e in toc if e.desc in _TABLES}
    missing = [r for r in wanted if r not in by_rel]
    if missing:
        raise RestoreRefused(f"table(s) {', '.join(map(show_relation, missing))} are not in the snapshot")
    dependents: dict[int, list[TocEntry]] = {}
    for e in toc:
        for d in e.deps:
            dependents.setdefault(d, []).append(e)
    chosen: dict[int, Relation] = {}  # dump id -> the table asked for that brought it
    # The tables and what belongs to them: only their dependents are followed (not those of a
    # schema or a type they need, or every sequence of the schema would come along).
    owned: set[int] = set()

    def take(entry: TocEntry, reason: Relation, own: bool) -> bool:
        new = entry.dump_id not in chosen
        chosen.setdefault(entry.dump_id, reason)
        grew = own and entry.dump_id not in owned
        if own:
            owned.add(entry.dump_id)
        for dep in toc.dependencies(entry.dump_id):
            chosen.setdefault(dep.dump_id, reason)
        for seq in _sequences_used(toc, entry):
            grew |= take(seq, reason, own=True)
        return new or grew

    loaded: list[TocEntry] = []  # tables whose rows come back: those asked for and their partitions
    for rel in wanted:
        take(by_rel[rel], rel, own=True)
        loaded.append(by_rel[rel])
    for parent in list(loaded):
        for child in _partitions(toc, parent, dependents):
            take(child, chosen[parent.dump_id], own=True)
            loaded.append(child)
    loaded_ids = {t.dump_id for t in loaded}
    left_out: dict[int, str] = {}
    changed = True
    while changed:
        changed = False
        for dump_id, reason in list(chosen.items()):
            for e in dependents.get(dump_id, ()):
                if e.dump_id in chosen:
                    continue
                if e.desc in _DESCRIBES:  # a comment or grant of anything restored
                    changed |= take(e, reason, own=False)
                    continue
                if dump_id not in owned or e.desc not in _BELONG:
                    continue
                if e.desc == "FK CONSTRAINT":
                    joined = [d for d in e.deps if (x := toc.get(d)) is not None and x.desc in _TABLES]
                    if not all(d in chosen for d in joined):
                        if _own_table(toc, e) in loaded_ids:
                            left_out[e.dump_id] = f"{e.namespace}.{e.tag}" if e.namespace else e.tag
                        continue
                left_out.pop(e.dump_id, None)
                changed |= take(e, reason, own=True)
    sel = Selection()
    sel.entries = [e for e in toc if e.dump_id in chosen]
    sel.reason = chosen
    sel.tables = list(dict.fromkeys((e.namespace or "", e.tag) for e in loaded))
    sel.left_out = sorted(left_out.values())
    return sel


_NEXTVAL = re.compile(r"nextval\('((?:[^']|'')+)'::regclass\)")


def _sequences_used(toc: Toc, entry: TocEntry) -> list[TocEntry]:
    """Sequences a table's or default's definition calls nextval() on.

    pg_dump prints a column default inside CREATE TABLE without recording
    the table's dependency on the sequence, so it is read from the definition.
    """
    if entry.desc not in ("TABLE", "DEFAULT") or not entry.defn:
        return []
    out = []
    for text in _NEXTVAL.findall(entry.defn):
        try:
            schema, name = parse_relation(text.replace("''", "'"))
        except UsageError:
            continue  # an unqualified name: the table's own schema
        seq = toc.find("SEQUENCE", schema, name)
        if seq is not None:
            out.append(seq)
    return out


def _own_table(toc: Toc, fk: TocEntry) -> int | None:
    """The table a constraint is defined on (its tag is "<table> <constraint>")."""
    for d in fk.deps:
        t = toc.get(d)
        if t is not None and t.desc in _TABLES and t.namespace == fk.namespace and fk.tag.startswith(t.tag + " "):
            return t.dump_id
    return None


def _partitions(toc: Toc, parent: TocEntry, dependents: dict[int, list[TocEntry]]) -> list[TocEntry]:
    """Every partition of ``parent``, at any depth (attached through TABLE ATTACH entries)."""
    out: list[TocEntry] = []
    todo = [parent]
    while todo:
        table = todo.pop()
        for attach in dependents.get(table.dump_id, ()):
            if attach.desc != "TABLE ATTACH":
                continue
            # The attachment is named after the partition it attaches (to the table it depends on).
            child = toc.find("TABLE", attach.namespace, attach.tag)
            if child is not None and child is not table and child not in out:
                out.append(child)
                todo.append(child)
    return out
