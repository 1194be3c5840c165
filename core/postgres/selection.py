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
from core.postgres.names import Relation, show_relation, split_name

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
    loaded: list[TocEntry] = []  # tables whose rows come back: those asked for and their partitions
    for rel in wanted:
        for table in (by_rel[rel], *_partitions(toc, by_rel[rel], dependents)):
            if table not in loaded:
                loaded.append(table)
    reasons = {t.dump_id: (t.namespace or "", t.tag) for t in loaded}
    for rel in wanted:  # a partition is there for the table asked for
        for child in _partitions(toc, by_rel[rel], dependents):
            reasons[child.dump_id] = rel
    # A partition comes back attached to its parents (without their other partitions): what it
    # inherits from them (triggers, indexes, identity, foreign keys) is defined on them.
    ancestors = [p for t in loaded for p in _parents(toc, t, dependents) if p not in loaded]
    for t in loaded:
        for p in _parents(toc, t, dependents):
            reasons.setdefault(p.dump_id, reasons[t.dump_id])
    homes = {t.dump_id for t in (*loaded, *ancestors)}  # tables whose own objects come back
    chosen: dict[int, Relation] = {}  # dump id -> the table asked for that brought it
    # The tables and what belongs to them: only their dependents are followed (not those of a
    # schema or a type they need, or every sequence of the schema would come along).
    owned: set[int] = set()

    def take(entry: TocEntry, reason: Relation, own: bool) -> bool:
        """Choose ``entry`` and what it needs; True if that added anything."""
        if entry.dump_id in chosen and (entry.dump_id in owned or not own):
            return False
        chosen.setdefault(entry.dump_id, reason)
        if own:
            owned.add(entry.dump_id)
        for dep in _needs(toc, entry):
            # A sequence comes with its value (and its grants): nextval continues where it was.
            take(dep, reason, own=dep.desc == "SEQUENCE")
        for seq in _sequences_used(toc, entry):
            take(seq, reason, own=True)
        return True

    for table in (*loaded, *ancestors):
        take(table, reasons[table.dump_id], own=True)
    left_out: dict[int, str] = {}
    changed = True
    while changed:
        changed = False
        for dump_id, reason in list(chosen.items()):
            for e in dependents.get(dump_id, ()):
                if e.dump_id in owned:
                    continue
                if e.desc in _DESCRIBES:  # a comment or grant of anything restored
                    changed |= take(e, reason, own=False)
                    continue
                if dump_id not in owned or e.desc not in _BELONG:
                    continue
                if any(t not in homes for t in _tables_touched(toc, e)):
                    # It joins a table that does not come back (or comes back empty, as a dependency):
                    # a foreign key to it, another partition's attachment, the owner of a shared sequence.
                    if e.desc == "FK CONSTRAINT" and _own_table(toc, e) in homes:
                        left_out[e.dump_id] = f"{e.namespace}.{e.tag}" if e.namespace else e.tag
                    continue
                changed |= take(e, reason, own=True)
    sel = Selection()
    sel.entries = [e for e in toc if e.dump_id in chosen]
    sel.reason = chosen
    sel.tables = [(e.namespace or "", e.tag) for e in loaded]
    sel.left_out = sorted(left_out.values())
    return sel


def _needs(toc: Toc, entry: TocEntry) -> list[TocEntry]:
    """What creating ``entry`` needs first: its dependencies, but the owner table of a plain sequence.

    pg_dump records a serial column's sequence as depending on its table, yet
    CREATE SEQUENCE needs no table (ownership is a SEQUENCE OWNED BY entry of
    its own); another table drawing from that sequence must not bring the owner
    along. An identity sequence is made by ALTER TABLE: it does need its table.
    """
    deps = [d for d in (toc.get(i) for i in entry.deps) if d is not None]
    if entry.desc == "SEQUENCE" and (entry.defn or "").lstrip().startswith("CREATE SEQUENCE"):
        deps = [d for d in deps if d.desc not in _TABLES]
    return deps


def _tables_touched(toc: Toc, entry: TocEntry) -> list[int]:
    """The tables an entry that belongs to a table acts on (each must come back for it to)."""
    tables = [d for d in entry.deps if (t := toc.get(d)) is not None and t.desc in _TABLES]
    if entry.desc == "SEQUENCE OWNED BY":  # its table is the one the sequence depends on
        for d in entry.deps:
            seq = toc.get(d)
            if seq is not None and seq.desc == "SEQUENCE":
                tables += [x for x in seq.deps if (t := toc.get(x)) is not None and t.desc in _TABLES]
    return tables


# nextval('ledger.claims_id_seq'::regclass) as pg_dump prints a default; in a function's body also
# without the cast, and currval/setval, as people write them.
_NEXTVAL = re.compile(r"nextval\('((?:[^']|'')+)'::regclass\)")
_SEQUENCE_CALL = re.compile(r"\b(?:nextval|currval|setval)\(\s*'((?:[^']|'')+)'(?:\s*::\s*regclass)?\s*[,)]")


def _sequences_used(toc: Toc, entry: TocEntry) -> list[TocEntry]:
    """Sequences a table's, default's or function's definition calls nextval() on.

    pg_dump prints a column default inside CREATE TABLE without always
    recording the table's dependency on the sequence, and a function body
    written as a string records none at all (a default calling it would fail
    with "relation does not exist"), so they are read from the definition.
    An unqualified name in a function body is looked up in the function's
    schema, then in public (what a default search_path finds).
    """
    if not entry.defn:
        return []
    if entry.desc in ("TABLE", "DEFAULT"):
        texts = _NEXTVAL.findall(entry.defn)
    elif entry.desc in ("FUNCTION", "PROCEDURE"):
        texts = _SEQUENCE_CALL.findall(entry.defn)
    else:
        return []
    out = []
    for text in texts:
        try:
            parts = split_name(text.replace("''", "'"))
        except UsageError:
            continue  # not a name (an unclosed quote): nothing to find
        if len(parts) == 2:
            candidates = [(parts[0], parts[1])]
        elif len(parts) == 1:
            candidates = [(entry.namespace or "public", parts[0]), ("public", parts[0])]
        else:
            continue  # database-qualified: not ours to guess
        seq = next((s for s in (toc.find("SEQUENCE", *c) for c in candidates) if s is not None), None)
        if seq is not None and seq not in out:
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


def _parents(toc: Toc, table: TocEntry, dependents: dict[int, list[TocEntry]]) -> list[TocEntry]:
    """The tables ``table`` is a partition of, nearest first (through its TABLE ATTACH entries)."""
    out: list[TocEntry] = []
    todo = [table]
    while todo:
        child = todo.pop()
        for attach in dependents.get(child.dump_id, ()):
            if attach.desc != "TABLE ATTACH" or (attach.namespace, attach.tag) != (child.namespace, child.tag):
                continue
            for d in attach.deps:
                parent = toc.get(d)
                if parent is not None and parent.desc in _TABLES and parent is not child and parent not in out:
                    out.append(parent)
                    todo.append(parent)
    return out
