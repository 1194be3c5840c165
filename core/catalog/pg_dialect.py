"""The catalog's SQL, written for SQLite, rewritten for PostgreSQL.

The catalog's queries are one text for both back ends (a second copy of
600 lines of SQL would drift). This module rewrites the few SQLite idioms
they use into PostgreSQL; the rest is covered by functions the PostgreSQL
schema defines under SQLite's names (``instr``, ``json_valid``,
``json_extract``, ``total`` and ``sum`` over booleans, in
:mod:`core.catalog.pg_schema`).

Rewritten here:

- ``?`` and ``?N`` placeholders become ``%s`` (arguments reordered for ``?N``);
  a literal ``%`` is doubled;
- ``INSERT OR REPLACE`` becomes ``INSERT ... ON CONFLICT (key) DO UPDATE``,
  ``INSERT OR IGNORE`` becomes ``... ON CONFLICT DO NOTHING``;
- scalar ``max(a, b)`` / ``min(a, b)`` become ``greatest`` / ``least``;
- ``CAST(x AS INTEGER)`` truncates as in SQLite (PostgreSQL rounds);
- the unary ``+column`` (an SQLite index hint) is dropped;
- ``BEGIN IMMEDIATE`` is a transaction holding the catalog's write lock.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

# The advisory lock every write transaction takes (BEGIN IMMEDIATE in SQLite grants one writer at a time).
WRITE_LOCK_KEY = 0x6261636B73746F70  # "backstop"

_NUMBERED = re.compile(r"\?(\d+)")
_INSERT_OR = re.compile(r"^\s*INSERT\s+OR\s+(REPLACE|IGNORE)\s+INTO\s+(\w+)\s*\(([^)]*)\)", re.IGNORECASE | re.DOTALL)
_UNARY_PLUS = re.compile(r"(?<=[\s(])\+(?=[A-Za-z_])")
_FUNC = re.compile(r"\b(max|min|CAST)\(", re.IGNORECASE)


@dataclass(frozen=True)
class Statement:
    """A rewritten statement, and how to order its arguments (None: as given)."""

    sql: str
    order: tuple[int, ...] | None = None

    def args(self, given: Sequence[object] | Mapping[str, object]) -> Sequence[object]:
        """The arguments in placeholder order."""
        if isinstance(given, Mapping):
            raise TypeError("the catalog's SQL takes positional arguments only")
        if self.order is None:
            return given
        return [given[i - 1] for i in self.order]


def _unquoted(sql: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """(index, character, depth) of each character outside quotes; depth counts the parentheses open after it."""
    depth, quote = 0, ""
    for i in range(start, len(sql)):
        ch = sql[i]
        if quote:
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
            continue
        depth += (ch == "(") - (ch == ")")
        yield i, ch, depth


def _close_paren(sql: str, start: int) -> int:
    """Index of the parenthesis closing the one opened just before ``start`` (quotes respected)."""
    for i, ch, depth in _unquoted(sql, start):
        if ch == ")" and depth == -1:
            return i
    raise ValueError(f"unbalanced parentheses in catalog SQL: {sql[:80]!r}")


def _top_level_commas(body: str) -> int:
    return sum(1 for _, ch, depth in _unquoted(body) if ch == "," and depth == 0)


def _functions(sql: str) -> str:
    """Scalar max/min to greatest/least, and CAST(... AS INTEGER) to a truncating cast."""
    out: list[str] = []
    pos = 0
    for m in _FUNC.finditer(sql):
        if m.start() < pos:
            continue  # inside a call already rewritten
        name = m.group(1).lower()
        end = _close_paren(sql, m.end())
        body = _functions(sql[m.end():end])
        out.append(sql[pos:m.start()])
        if name in ("max", "min") and _top_level_commas(body):
            out.append(f"{'greatest' if name == 'max' else 'least'}({body})")
        elif name == "cast" and re.search(r"\s+AS\s+INTEGER\s*$", body, re.IGNORECASE):
            inner = re.sub(r"\s+AS\s+INTEGER\s*$", "", body, flags=re.IGNORECASE)
            out.append(f"trunc({inner})::bigint")
        else:
            out.append(f"{m.group(1)}({body})")
        pos = end + 1
    out.append(sql[pos:])
    return "".join(out)


def _insert_or(sql: str, keys: Mapping[str, tuple[str, ...]]) -> str:
    m = _INSERT_OR.match(sql)
    if m is None:
        return sql
    verb, table, cols = m.group(1).upper(), m.group(2), [c.strip() for c in m.group(3).split(",")]
    head = f"INSERT INTO {table} ({', '.join(cols)})"
    rest = sql[m.end():].rstrip().rstrip(";")
    if verb == "IGNORE":
        return f"{head}{rest} ON CONFLICT DO NOTHING"
    key = keys.get(table)
    if not key:
        raise ValueError(f"INSERT OR REPLACE into {table}: no key known for it")
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in key)
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    return f"{head}{rest} ON CONFLICT ({', '.join(key)}) {action}"


def _placeholders(sql: str) -> tuple[str, tuple[int, ...] | None]:
    order: list[int] = []
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(sql):
        ch = sql[i]
        if quote:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "%":
            out.append("%%")
        elif ch == "?":
            m = _NUMBERED.match(sql, i)
            if m:
                order.append(int(m.group(1)))
                i = m.end()
                out.append("%s")
                continue
            order.append(len(order) + 1)
            out.append("%s")
        else:
            out.append(ch)
        i += 1
    numbered = _NUMBERED.search(sql) is not None
    return "".join(out), (tuple(order) if numbered else None)


@lru_cache(maxsize=2048)
def _translate(sql: str, keys: tuple[tuple[str, tuple[str, ...]], ...]) -> Statement:
    text = _insert_or(sql, dict(keys))
    text = _UNARY_PLUS.sub("", text)
    text = _functions(text)
    text, order = _placeholders(text)
    return Statement(text, order)


def translate(sql: str, keys: Mapping[str, tuple[str, ...]]) -> Statement:
    """The PostgreSQL form of one catalog statement (``keys``: each table's conflict key, for OR REPLACE)."""
    return _translate(sql, tuple(sorted(keys.items())))
