"""Table names as PostgreSQL spells them: `schema.table`, quoted parts, and psql-style patterns.

``--table public."Tab le""q"`` names exactly the table ``Tab le"q`` in
``public``: a quoted part is taken as written (dots and all), an unquoted one
is folded to lower case, as PostgreSQL does. A pattern (``--pattern
'ledger.claim*'``) is explicit and uses psql's rules: ``*`` any run of
characters, ``?`` one character, quoted parts literal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import UsageError

Relation = tuple[str, str]  # (schema, table)


Segment = tuple[str, bool]  # text, and whether it was inside quotes


def _parts(text: str, what: str) -> list[list[Segment]]:
    """Split at unquoted dots into parts, each a list of quoted and unquoted segments ("" unescaped)."""
    parts: list[list[Segment]] = [[]]
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            end = i + 1
            while True:
                end = text.find('"', end)
                if end == -1:
                    raise UsageError(f"{what} {text!r}: a quote is not closed")
                if text[end + 1: end + 2] == '"':
                    end += 2
                    continue
                break
            parts[-1].append((text[i + 1: end].replace('""', '"'), True))
            i = end + 1
        elif ch == ".":
            parts.append([])
            i += 1
        else:
            j = i
            while j < len(text) and text[j] not in '".':
                j += 1
            parts[-1].append((text[i:j], False))
            i = j
    return parts


def _name(segments: list[Segment]) -> str:
    # Unquoted letters fold to lower case, as PostgreSQL folds unquoted identifiers.
    return "".join(t if quoted else t.lower() for t, quoted in segments)


def split_name(text: str) -> list[str]:
    """A dotted name's parts as PostgreSQL reads them (``ref_seq``, ``ledger."Seq"``): quoted parts exact,
    unquoted ones folded to lower case."""
    return [_name(p) for p in _parts(text.strip(), "name")]


def parse_relation(text: str) -> Relation:
    """``schema.table`` (quoting as PostgreSQL's) as the exact (schema, table) it names."""
    parts = _parts(text.strip(), "--table")
    if any(not quoted and any(c.isspace() for c in t) for part in parts for t, quoted in part):
        # PostgreSQL reads no unquoted name with a space in it: `public.My Table` is a mistake for
        # 'public."My Table"', never the table "my table" it would fold to.
        raise UsageError(f"--table {text!r}: a name holding spaces must be quoted as PostgreSQL quotes it, "
                         "e.g. 'public.\"My Table\"'")
    if len(parts) != 2 or not all(_name(p) for p in parts):
        raise UsageError(f"--table {text!r}: expected SCHEMA.TABLE, e.g. public.claims or 'public.\"My Table\"' "
                         "(quote a name holding dots, capitals or spaces)")
    return _name(parts[0]), _name(parts[1])


def show_relation(rel: Relation) -> str:
    """A (schema, table) as it is typed: quoted only where needed."""
    def show(part: str) -> str:
        return part if re.fullmatch(r"[a-z_][a-z0-9_$]*", part) else '"' + part.replace('"', '""') + '"'
    return f"{show(rel[0])}.{show(rel[1])}"


@dataclass(frozen=True)
class Pattern:
    """A psql-style relation pattern, compiled."""

    text: str
    schema: re.Pattern[str] | None  # None: any schema
    table: re.Pattern[str]

    def matches(self, rel: Relation) -> bool:
        return (self.schema is None or bool(self.schema.fullmatch(rel[0]))) and bool(self.table.fullmatch(rel[1]))


def _compile(segments: list[Segment]) -> re.Pattern[str]:
    out = []
    for t, quoted in segments:
        if quoted:
            out.append(re.escape(t))
        else:
            out.extend(".*" if c == "*" else "." if c == "?" else re.escape(c.lower()) for c in t)
    return re.compile("".join(out))


def parse_pattern(text: str) -> Pattern:
    """``[schema.]table`` with ``*``/``?`` wildcards; without a schema any schema matches."""
    parts = _parts(text.strip(), "--pattern")
    if len(parts) > 2 or not _name(parts[-1]):
        raise UsageError(f"--pattern {text!r}: expected [SCHEMA.]TABLE with * or ? wildcards, e.g. 'ledger.claim*'")
    return Pattern(text, _compile(parts[0]) if len(parts) == 2 else None, _compile(parts[-1]))
