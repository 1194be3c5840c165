"""The settings every command and the daemon use: the config file with its guarded sections as approved.

While no operator has ever been enrolled, the file applies as written (a
new installation works before anyone enrols), and what it says is recorded
as the settings in force. From the first enrolment on, the guarded sections
(``core.settings.sections``) stay as last approved until an operator
approves the file's version with a fresh code (`backstop settings
approve`); the difference is *pending*.

Fast path: a catalog that holds the record answers alone. A catalog without
operators or record (new, or lost) is checked against listings of the
targets, and the repository's sealed record is read when one exists, so a
lost catalog does not reset the settings.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.catalog.base import Catalog
from core.config import BackstopConfig, parse_config
from core.errors import BackstopError, CatalogError, ConfigError
from core.repository.repo import Repository
from core.security.operators import OperatorStore
from core.settings import approved as store
from core.settings.approved import Approved
from core.settings.sections import SectionChange, Sections, diff, extract, replace
from core.storage.base import Storage

PENDING_NOTICE = "settings changed in the config wait for approval: run `backstop settings diff`"
STORED_KEY = "settings:stored"  # the version of the record the repository is known to hold
UNENROLLED = "(no operator enrolled)"


@dataclass(frozen=True)
class EffectiveSettings:
    """The config to use, what the file says, what is in force, and the difference."""

    config: BackstopConfig
    written_config: BackstopConfig
    written: Sections
    in_force: Sections
    enforced: bool  # an operator was enrolled: changes wait for approval
    record: Approved | None
    pending: list[SectionChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings for the operator

    def to_json(self) -> dict[str, object]:
        rec = self.record
        return {
            "enforced": self.enforced,
            "in_force": self.in_force,
            "written": self.written,
            "approved_version": rec.version if rec else None,
            "approved_by": rec.approved_by if rec else None,
            "approved_at": rec.approved_at if rec else None,
            "pending": [c.to_json() for c in self.pending],
        }


async def _open(storages: list[Storage], config: BackstopConfig) -> Repository | None:
    try:
        return await Repository.open(storages, config.encryption.passphrase(), require_all=False)
    except BackstopError:
        return None  # not initialised yet, unreachable or wrong key: the command itself will say


async def _store(catalog: Catalog, storages: list[Storage], config: BackstopConfig, rec: Approved,
                 repo: Repository | None = None) -> list[str]:
    """Cache ``rec`` in the catalog and seal it into the repository (best effort: retried next time)."""
    _remember(catalog, rec, stored=False)
    repo = repo or await _open(storages, config)
    if repo is None:
        return []
    warnings = await store.save(repo, rec)
    if not warnings:
        _remember(catalog, rec, stored=True)
    return warnings


def _remember(catalog: Catalog, rec: Approved, stored: bool) -> None:
    """The catalog's copy, and whether the repository holds this version; a damaged catalog is left alone."""
    try:
        store.cache(catalog, rec)
        if stored:
            catalog.set_security_value(STORED_KEY, str(rec.version))
    except (sqlite3.Error, CatalogError):
        pass  # the catalog's own check reports the damage; the repository's copy is what counts


def _stored_version(catalog: Catalog) -> str | None:
    try:
        return catalog.security_value(STORED_KEY)
    except (sqlite3.Error, CatalogError):
        return None


async def resolve(catalog: Catalog, storages: list[Storage], data: object, path: Path, *,
                  verify: bool = False, now: float | None = None) -> EffectiveSettings:
    """The effective settings for the config document ``data`` (read from ``path``).

    ``verify`` reads the repository's record even when the catalog holds
    one (the settings commands do; a catalog's copy that differs is
    replaced and noted). Raises ConfigError when the file is invalid, or
    when the approved sections no longer fit it.
    """
    now = time.time() if now is None else now
    written_cfg = parse_config(data, path)
    written = extract(data)
    try:
        enrolled = OperatorStore(catalog, None).count() > 0
        rec = store.cached(catalog)
    except (sqlite3.Error, CatalogError):
        # A damaged catalog (the commands that report it must still run): the repository decides.
        enrolled, rec = False, None
    notes: list[str] = []
    repo: Repository | None = None
    repo_has_ops = False
    # A catalog with a record knows; one without is new or lost, and the targets tell.
    if rec is None or verify:
        has_record, repo_has_ops = await store.listed(storages)
        if has_record and (rec is None or verify):
            repo = await _open(storages, _opening_config(data, path, rec, written_cfg))
            theirs = await store.load(repo) if repo is not None else None
            if theirs is not None and theirs != rec:
                if rec is not None:
                    notes.append(f"the catalog's copy of the approved settings (version {rec.version}) differs from "
                                 f"the repository's (version {theirs.version}); the repository's applies")
                rec = theirs
                _remember(catalog, rec, stored=True)
    enforced = enrolled or repo_has_ops or (rec is not None and rec.enforced)

    if not enforced:
        # No operator yet: the file applies as written, and is remembered as the settings in force.
        if rec is None or not rec.same_sections(written) or _stored_version(catalog) != str(rec.version):
            if rec is None or not rec.same_sections(written):
                rec = Approved(written, False, (rec.version + 1) if rec else 1, now, UNENROLLED,
                               "applied as written: no operator is enrolled")
            notes += await _store(catalog, storages, written_cfg, rec, repo)
        return EffectiveSettings(written_cfg, written_cfg, written, written, False, rec, [], notes)

    if rec is None:
        # Operators, but no record anywhere (targets unreachable, or enrolled before records existed).
        rec = Approved(written, True, 1, now, UNENROLLED, "baseline: the settings in force when approval began")
        notes += await _store(catalog, storages, written_cfg, rec, repo)
    elif not rec.enforced:
        rec = dataclasses.replace(rec, enforced=True, version=rec.version + 1,
                                  reason=f"{rec.reason}; from the first enrolment on, changes need approval")
        notes += await _store(catalog, storages, _opening_config(data, path, rec, written_cfg), rec, repo)
    elif _stored_version(catalog) != str(rec.version):
        notes += await _store(catalog, storages, _opening_config(data, path, rec, written_cfg), rec, repo)
    config = _in_force_config(data, path, rec)
    return EffectiveSettings(config, written_cfg, written, rec.sections, True, rec, diff(rec.sections, written), notes)


def _in_force_config(data: object, path: Path, rec: Approved) -> BackstopConfig:
    try:
        return parse_config(replace(data, rec.sections), path)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (with the approved schedules/retention/encryption settings, version "
                          f"{rec.version}); fix the file or approve its settings with `backstop settings "
                          "approve`") from None


def _opening_config(data: object, path: Path, rec: Approved | None, written: BackstopConfig) -> BackstopConfig:
    """The config whose passphrase opens the repository: the approved encryption settings, else the file's."""
    if rec is None:
        return written
    try:
        return _in_force_config(data, path, rec)
    except ConfigError:
        return written
