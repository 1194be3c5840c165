"""The guarded config sections (schedules, each database's retention, encryption) as raw, canonical values.

They are read from the YAML document before validation, so this module
depends on no model of theirs: a section's value is its YAML value as
canonical JSON (keys sorted, dates as strings). A section is named
``schedules``, ``encryption`` or ``retention:<database>``; an absent
section has no entry.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from core.security.gate import Action

Sections = dict[str, Any]

RETENTION = "retention:"
TOP_LEVEL = ("schedules", "encryption")


def canonical(value: object) -> Any:
    """A YAML value as plain JSON data (what is compared, stored and shown)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def canonical_text(sections: Sections) -> str:
    """The one byte-exact text of a set of sections (compared and stored)."""
    return json.dumps(sections, sort_keys=True, separators=(",", ":"))


def _databases(data: dict[str, Any]) -> list[dict[str, Any]]:
    dbs = data.get("databases")
    return [d for d in dbs if isinstance(d, dict) and isinstance(d.get("name"), str)] if isinstance(dbs, list) else []


def extract(data: object) -> Sections:
    """The guarded sections of a parsed (not yet validated) config document."""
    if not isinstance(data, dict):
        return {}
    out: Sections = {}
    for key in TOP_LEVEL:
        if data.get(key) is not None:
            out[key] = canonical(data[key])
    for db in _databases(data):
        if db.get("retention") is not None:
            out[f"{RETENTION}{db['name']}"] = canonical(db["retention"])
    return out


def replace(data: object, sections: Sections) -> object:
    """A copy of the document with its guarded sections replaced by ``sections`` (absent there: removed).

    Retention of a database the document no longer lists is dropped with it;
    a database new in the document gets the retention ``sections`` holds for
    it, i.e. none until its rules are approved.
    """
    if not isinstance(data, dict):
        return data
    out = copy.deepcopy(data)
    for key in TOP_LEVEL:
        if key in sections:
            out[key] = copy.deepcopy(sections[key])
        else:
            out.pop(key, None)
    for db in _databases(out):
        name = f"{RETENTION}{db['name']}"
        if name in sections:
            db["retention"] = copy.deepcopy(sections[name])
        else:
            db.pop("retention", None)
    return out


def action_of(section: str) -> Action:
    """The gated action that approving a change of ``section`` is."""
    if section.startswith(RETENTION):
        return Action.RETENTION_CHANGE
    return Action.SCHEDULE_CHANGE if section == "schedules" else Action.ENCRYPTION_CHANGE


@dataclass(frozen=True)
class SectionChange:
    """One guarded section whose written value differs from the approved one."""

    section: str
    before: Any  # None: the section is new
    after: Any  # None: the section was removed
    lines: list[str] = field(default_factory=list)

    @property
    def action(self) -> Action:
        return action_of(self.section)

    @property
    def database(self) -> str | None:
        return self.section[len(RETENTION):] if self.section.startswith(RETENTION) else None

    def to_json(self) -> dict[str, Any]:
        return {"section": self.section, "action": self.action.value, "before": self.before, "after": self.after,
                "changes": self.lines}


def _show(value: object) -> str:
    return "(none)" if value is None else json.dumps(value, sort_keys=True)


def _keyed(items: list[Any]) -> dict[str, Any] | None:
    """A list of mappings with unique names (schedules) as name -> item, so entries diff by name, not position."""
    if not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        return None
    names = [i["name"] for i in items]
    return {f"[{n}]": i for n, i in zip(names, items, strict=True)} if len(set(names)) == len(names) else None


def _lines(path: str, before: Any, after: Any) -> list[str]:
    if before == after:
        return []
    if isinstance(before, list) and isinstance(after, list):
        kb, ka = _keyed(before), _keyed(after)
        if kb is not None and ka is not None:
            before, after = kb, ka
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for k in sorted(set(before) | set(after)):
            sub = f"{path}{k}" if k.startswith("[") else f"{path}.{k}"
            out += _lines(sub, before.get(k), after.get(k))
        return out
    if before is None:
        return [f"+ {path}: {_show(after)}"]
    if after is None:
        return [f"- {path}: {_show(before)}"]
    return [f"~ {path}: {_show(before)} -> {_show(after)}"]


def diff(approved: Sections, written: Sections) -> list[SectionChange]:
    """Each section whose written value is not the approved one, with readable ``+ - ~`` lines."""
    out = []
    for name in sorted(set(approved) | set(written)):
        before, after = approved.get(name), written.get(name)
        if before != after:
            out.append(SectionChange(name, before, after, _lines(name, before, after)))
    return out
