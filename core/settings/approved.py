"""The settings in force: ``settings/approved`` in the repository (sealed), cached in the catalog.

The repository's copy is the one that counts (FORMAT.md 18.3): a lost or
new catalog takes it back from there, so deleting the catalog does not
reset the settings to what the file says. The catalog keeps a copy so that
commands need not open the repository to know their settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from core.catalog.base import Catalog
from core.errors import BackstopError, StorageError
from core.repository.crypto import open_object, seal_object
from core.repository.repo import OPERATOR_PREFIX, SETTINGS_KIND, SETTINGS_PREFIX, Repository
from core.settings.sections import Sections, canonical_text
from core.storage.base import Storage

OBJECT_NAME = f"{SETTINGS_PREFIX}approved"
CACHE_KEY = "settings:approved"


@dataclass(frozen=True)
class Approved:
    """A set of guarded sections in force, and how it came to be."""

    sections: Sections
    # False: saved while no operator was enrolled (the file's settings, applied as written).
    # True: from then on a change needs an approval.
    enforced: bool
    version: int = 1
    approved_at: float = 0.0
    approved_by: str = ""
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: object) -> Approved:
        if not isinstance(doc, dict) or not isinstance(doc.get("sections"), dict):
            raise ValueError("not a settings record")
        return cls(sections=doc["sections"], enforced=bool(doc.get("enforced")), version=int(doc.get("version", 1)),
                   approved_at=float(doc.get("approved_at", 0.0)), approved_by=str(doc.get("approved_by", "")),
                   reason=str(doc.get("reason", "")), extra=dict(doc.get("extra") or {}))

    def same_sections(self, sections: Sections) -> bool:
        return canonical_text(self.sections) == canonical_text(sections)


# -- the catalog's copy -------------------------------------------------------------------------------------


def cached(catalog: Catalog) -> Approved | None:
    """The catalog's copy (None: a new or lost catalog, or a damaged value)."""
    text = catalog.security_value(CACHE_KEY)
    if not text:
        return None
    try:
        return Approved.from_json(json.loads(text))
    except (ValueError, TypeError):
        return None


def cache(catalog: Catalog, approved: Approved) -> None:
    catalog.set_security_value(CACHE_KEY, json.dumps(approved.to_json(), sort_keys=True))


# -- the repository's copy ------------------------------------------------------------------------------------


async def save(repo: Repository, approved: Approved) -> list[str]:
    """Write the record to every target; returns warnings for targets that failed."""
    data = seal_object(json.dumps(approved.to_json(), sort_keys=True).encode(), SETTINGS_KIND, repo.key)
    warnings = []
    for st in repo.storages:
        try:
            await st.put(OBJECT_NAME, data)
        except StorageError as exc:
            warnings.append(f"approved settings not copied to target '{st.name}': {exc}")
    return warnings


async def load(repo: Repository) -> Approved | None:
    """The record on any reachable target; of several copies, the highest version (then the newest)."""
    best: Approved | None = None
    for st in repo.storages:
        try:
            rec = Approved.from_json(json.loads(open_object(await st.get(OBJECT_NAME), SETTINGS_KIND, repo.keys)))
        except (BackstopError, ValueError, TypeError, KeyError):
            continue  # missing or unreadable here: another target may hold it
        if best is None or (rec.version, rec.approved_at) > (best.version, best.approved_at):
            best = rec
    return best


async def listed(storages: list[Storage]) -> tuple[bool, bool]:
    """(settings record, operator records) present on any target, from listings alone (no key needed)."""
    settings = operators = False
    for st in storages:
        try:
            settings = settings or any(o.name == OBJECT_NAME for o in await st.list(SETTINGS_PREFIX))
            operators = operators or bool(await st.list(OPERATOR_PREFIX))
        except BackstopError:
            continue  # unreachable: the others may tell
    return settings, operators
