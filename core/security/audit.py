"""The audit log: a keyed hash chain of security-relevant events, in the catalog.

Each entry records time, operator, host, action, subject, outcome and a
small JSON detail, plus ``prev`` (the MAC of the entry before it) and its
own ``mac``:

    mac = HMAC-SHA256(K, JSON[log_id, seq, ts, operator, host, action, subject, outcome, detail, prev])

where K is derived from the repository key (``derive.AUDIT_MAC``) and the
first entry's ``prev`` is HMAC-SHA256(K, "backstop-audit-genesis:" + log_id).
Without K nobody can recompute a MAC, so an entry edited in SQLite, a
deleted entry (a gap, or a ``prev`` that no longer matches) and a moved entry
(its MAC binds its sequence number) are all detected by :func:`verify_chain`.
Deleting entries from the end leaves a valid shorter chain; the copy in the
repository (``audit_copy``) is what exposes that.

``log_id`` names one chain. A catalog starts a chain on its first entry; a
catalog rebuilt after a loss adopts the chain found in the repository and
continues it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from core.errors import AuthError
from core.records import AuditEntry

if TYPE_CHECKING:
    from core.catalog.base import Catalog

__all__ = ["AuditEntry", "AuditLog", "VerifyReport", "entry_mac", "genesis", "verify_chain"]


def _hmac(key: bytes, msg: str) -> str:
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def genesis(key: bytes, log_id: str) -> str:
    """The ``prev`` of a chain's first entry."""
    return _hmac(key, f"backstop-audit-genesis:{log_id}")


def entry_mac(key: bytes, log_id: str, seq: int, e: AuditEntry) -> str:
    """The MAC an entry with ``e``'s content must carry at position ``seq``."""
    return _hmac(key, json.dumps([log_id, seq, e.ts, e.operator, e.host, e.action, e.subject, e.outcome, e.detail,
                                  e.prev], ensure_ascii=False, separators=(",", ":")))


@dataclass(frozen=True)
class VerifyReport:
    """Result of checking a chain: ok, or the first bad entry and why."""

    entries: int
    first_bad: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_chain(key: bytes, log_id: str, entries: Sequence[AuditEntry]) -> VerifyReport:
    """Walk the chain in sequence order and name the first entry that breaks it."""
    prev = genesis(key, log_id)
    expected = 1
    for e in entries:
        if e.seq != expected:
            return VerifyReport(len(entries), expected,
                                f"audit entry #{expected} is missing: it was deleted "
                                f"(entry #{e.seq} follows #{expected - 1})")
        if not hmac.compare_digest(entry_mac(key, log_id, e.seq, e), e.mac):
            # A MAC that fits another position means the entry was moved there.
            moved = next((s for s in range(1, len(entries) + 2)
                          if s != e.seq and hmac.compare_digest(entry_mac(key, log_id, s, e), e.mac)), None)
            if moved is not None:
                return VerifyReport(len(entries), e.seq,
                                    f"audit entry #{e.seq} holds the content of entry #{moved}: "
                                    "the log was reordered")
            return VerifyReport(len(entries), e.seq,
                                f"audit entry #{e.seq} ({e.time}, {e.action}) was altered: "
                                "its keyed hash does not match")
        if not hmac.compare_digest(e.prev, prev):
            return VerifyReport(len(entries), e.seq,
                                f"audit entry #{e.seq} does not follow entry #{e.seq - 1}: "
                                "the chain is broken (an entry was deleted, inserted or reordered)")
        prev = e.mac
        expected += 1
    return VerifyReport(len(entries))


def _canonical(detail: dict[str, Any] | None) -> str:
    return json.dumps(detail or {}, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


class AuditLog:
    """The catalog's audit chain: appending and verifying need the key, reading does not.

    The catalog stores the entries (``core.catalog``); this class computes
    and checks their keyed hashes.
    """

    def __init__(self, catalog: Catalog, key: bytes | None = None) -> None:
        self._catalog = catalog
        self._key = key

    def _need_key(self) -> bytes:
        if self._key is None:
            raise AuthError("the audit log needs the repository key; open the repository first")
        return self._key

    @property
    def log_id(self) -> str | None:
        return self._catalog.audit_log_id()

    def is_empty(self) -> bool:
        return self._catalog.audit_is_empty()

    def append(self, operator: str, host: str, action: str, subject: str, outcome: str,
               detail: dict[str, Any] | None, ts: float) -> AuditEntry:
        """Add one entry at the end of the chain (atomic against other processes)."""
        key = self._need_key()

        def build(log_id: str, last: tuple[int, str] | None) -> AuditEntry:
            seq, prev = (last[0] + 1, last[1]) if last else (1, genesis(key, log_id))
            draft = AuditEntry(seq, float(ts), operator, host, action, subject, outcome, _canonical(detail), prev, "")
            return replace(draft, mac=entry_mac(key, log_id, seq, draft))

        return self._catalog.audit_append(build, start_log_id=uuid.uuid4().hex)

    def entries(self, since: float | None = None, limit: int | None = None, after_seq: int = 0) -> list[AuditEntry]:
        """Entries in sequence order (optionally from a time on, or after a sequence number; the newest ``limit``)."""
        return self._catalog.audit_entries(since=since, limit=limit, after_seq=after_seq)

    def first(self, action: str, outcome: str) -> AuditEntry | None:
        """The earliest entry with this action and outcome (e.g. the first enrolment)."""
        return self._catalog.audit_first(action, outcome)

    def last(self) -> AuditEntry | None:
        """The newest entry of the chain."""
        return self._catalog.audit_last()

    def entry(self, seq: int) -> AuditEntry | None:
        return self._catalog.audit_entry(seq)

    def extend(self, entries: Iterable[AuditEntry]) -> int:
        """Append entries of this chain that another copy holds beyond the catalog's end, checked first."""
        log_id = self.log_id
        if log_id is None:
            raise AuthError("the catalog has no audit log to extend")
        new = sorted(entries, key=lambda e: e.seq)
        report = verify_chain(self._need_key(), log_id, [*self.entries(), *new])
        if not report.ok:
            raise AuthError(f"the repository's entries do not continue the catalog's audit log: {report.problem}")
        self._catalog.audit_insert(new)
        return len(new)

    def discard(self) -> int:
        """Drop the catalog's chain (before adopting the repository's); returns how many entries it had."""
        return self._catalog.audit_discard()

    def verify(self) -> VerifyReport:
        """Check the catalog's chain."""
        log_id = self.log_id
        entries = self.entries()
        if log_id is None:
            if entries:
                return VerifyReport(len(entries), entries[0].seq,
                                    "the audit log's chain id is missing from the catalog (edited outside backstop)")
            return VerifyReport(0)
        return verify_chain(self._need_key(), log_id, entries)

    def adopt(self, log_id: str, entries: Iterable[AuditEntry]) -> int:
        """Continue a chain found in the repository (the catalog was lost): import it, checked first."""
        entries = sorted(entries, key=lambda e: e.seq)
        report = verify_chain(self._need_key(), log_id, entries)
        if not report.ok:
            raise AuthError(f"the repository's copy of audit log {log_id[:8]} is damaged: {report.problem}")
        if not self._catalog.audit_adopt(log_id, entries):
            raise AuthError("the catalog already has an audit log; refusing to replace it")
        return len(entries)
