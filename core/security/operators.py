"""Enrolled operators: name, role, sealed TOTP secret and attempt state, in the catalog.

Every row carries a keyed MAC over all its columns (key derived from the
repository key, see ``derive``), so a row edited in SQLite directly (a
viewer promoted to admin, a lockout lifted, a replay counter reset) is
refused instead of trusted. The TOTP secret is sealed with AES-256-GCM,
bound to the repository and the operator's name, so it cannot be read from
the catalog nor moved to another operator's row.

Attempt bookkeeping runs with the operator's row locked by the catalog
(``Catalog.operator_update``: ``BEGIN IMMEDIATE`` in SQLite): two processes
guessing codes for one operator at the same time are serialised, so neither
the failure count nor the replay rule can be raced. The catalog only stores
rows; the MACs and seals are computed here.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import AuthError, UsageError
from core.records import OperatorRow
from core.security.derive import SecurityKeys
from core.security.totp import new_secret

if TYPE_CHECKING:
    from core.catalog.base import Catalog

ROLES = ("viewer", "operator", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def role_at_least(role: str, required: str) -> bool:
    """True when ``role`` includes the rights of ``required`` (viewer < operator < admin)."""
    return _RANK.get(role, -1) >= _RANK[required]


def check_name(name: str) -> str:
    """An operator name: letters, digits and ``_.@-``, at most 64 characters."""
    if not _NAME_RE.match(name):
        raise UsageError(f"operator name {name!r}: use letters, digits and _.@- (at most 64 characters)")
    return name


def check_role(role: str) -> str:
    if role not in _RANK:
        raise UsageError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    return role


@dataclass(frozen=True)
class Operator:
    """An operator as the gate sees it (never the secret)."""

    name: str
    role: str
    created_at: float
    created_by: str
    last_step: int  # last accepted TOTP step; codes of this step or earlier are refused
    failures: int  # wrong codes in a row
    locked_until: float  # Unix time; 0 when not locked

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class OperatorStore:
    """The catalog's operators; needs the derived keys for anything but listing."""

    def __init__(self, catalog: Catalog, keys: SecurityKeys | None) -> None:
        self._catalog = catalog
        self._keys = keys

    # -- crypto helpers --------------------------------------------------------

    def _need_keys(self) -> SecurityKeys:
        if self._keys is None:
            raise AuthError("operator records need the repository key; open the repository first")
        return self._keys

    def _aad(self, name: str) -> bytes:
        return f"backstop-totp:{self._need_keys().repo_id}:{name}".encode()

    def _seal(self, name: str, secret: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self._need_keys().totp_seal).encrypt(nonce, secret, self._aad(name))

    def _mac(self, row: tuple[object, ...]) -> str:
        name, role, sealed, created_at, created_by, last_step, failures, locked_until = row
        msg = json.dumps([name, role, bytes(sealed).hex(), created_at, created_by, last_step, failures,  # type: ignore[call-overload]
                          locked_until], separators=(",", ":"))
        return hmac.new(self._need_keys().operator_mac, msg.encode(), hashlib.sha256).hexdigest()

    def _verified(self, row: OperatorRow) -> Operator:
        if not hmac.compare_digest(self._mac(row.values()[:8]), str(row.mac)):
            raise AuthError(
                f"the catalog record of operator '{row.name}' fails its integrity check (edited outside backstop); "
                "refusing to trust it: an admin must remove and re-enrol the operator"
            )
        return _operator(row)

    def _signed(self, name: str, role: str, sealed: bytes, created_at: float, created_by: str, last_step: int,
                failures: int, locked_until: float) -> OperatorRow:
        # Types fixed as the catalog returns them, so the MAC computed now matches the one checked on read.
        values = (name, role, bytes(sealed), float(created_at), created_by, int(last_step), int(failures),
                  float(locked_until))
        return OperatorRow(*values, self._mac(values))

    def _existing(self, name: str) -> OperatorRow:
        row = self._catalog.operator_row(name)
        if row is None:
            raise UsageError(f"no operator named '{name}'")
        return row

    # -- reading ---------------------------------------------------------------

    def count(self) -> int:
        return self._catalog.operator_count()

    def list(self) -> list[Operator]:
        """Every operator (no integrity check: listing needs no key)."""
        return [_operator(r) for r in self._catalog.operator_rows()]

    def get(self, name: str) -> Operator | None:
        """The operator called ``name``, checked against its MAC; None if not enrolled."""
        row = self._catalog.operator_row(name)
        return self._verified(row) if row else None

    def admins(self) -> builtins.list[str]:
        return [str(r.name) for r in self._catalog.operator_rows() if r.role == "admin"]

    # -- changes ---------------------------------------------------------------

    def add(self, name: str, role: str, created_by: str, now: float) -> bytes:
        """Enrol ``name``; returns the new TOTP secret (shown once, then only stored sealed)."""
        check_name(name)
        check_role(role)
        secret = new_secret()
        with self._catalog.operator_update(name) as slot:
            if slot.row is not None:
                raise UsageError(f"operator '{name}' is already enrolled; remove it first to re-enrol")
            slot.put(self._signed(name, role, self._seal(name, secret), now, created_by, -1, 0, 0.0))
        return secret

    def set_role(self, name: str, role: str) -> Operator:
        check_role(role)
        with self._catalog.operator_update(name) as slot:
            row = slot.row
            if row is None:
                raise UsageError(f"no operator named '{name}'")
            op = self._verified(row)
            slot.put(self._signed(name, role, row.secret_sealed, op.created_at, op.created_by, op.last_step,
                                  op.failures, op.locked_until))
        return Operator(name, role, op.created_at, op.created_by, op.last_step, op.failures, op.locked_until)

    def remove(self, name: str) -> None:
        with self._catalog.operator_update(name) as slot:
            if slot.row is None:
                raise UsageError(f"no operator named '{name}'")
            slot.delete()

    def export(self, name: str, now: float) -> dict[str, object]:
        """The operator's durable record (for the repository copy): never the plain secret."""
        row = self._existing(name)
        op = self._verified(row)
        return {"name": op.name, "role": op.role, "secret_sealed": base64.b64encode(bytes(row.secret_sealed)).decode(),
                "created_at": op.created_at, "created_by": op.created_by, "updated_at": now}

    def import_records(self, records: builtins.list[dict[str, object]]) -> int:
        """Take operators back from repository records into an empty table (attempt state starts afresh)."""
        rows = []
        for r in records:
            name, role = check_name(str(r["name"])), check_role(str(r["role"]))
            rows.append(self._signed(name, role, base64.b64decode(str(r["secret_sealed"])), float(r["created_at"]),  # type: ignore[arg-type]
                                     str(r["created_by"]), -1, 0, 0.0))
        if not self._catalog.insert_operators_if_empty(rows):
            raise AuthError("the catalog already has operators; refusing to replace them")
        return len(records)

    def clear(self) -> None:
        """Remove every operator row (a rebuild takes them back from the repository)."""
        self._catalog.delete_operators()

    def set_attempt_state(self, name: str, last_step: int, failures: int, locked_until: float) -> None:
        """Restore attempt state (after records were imported), re-signing the row."""
        with self._catalog.operator_update(name) as slot:
            row = slot.row
            if row is None:
                raise UsageError(f"no operator named '{name}'")
            op = self._verified(row)
            slot.put(self._signed(name, op.role, row.secret_sealed, op.created_at, op.created_by, last_step, failures,
                                  locked_until))

    def secret(self, name: str) -> bytes:
        """Unseal an operator's TOTP secret (for checking a code; never shown)."""
        row = self._existing(name)
        self._verified(row)
        sealed = bytes(row.secret_sealed)
        try:
            return AESGCM(self._need_keys().totp_seal).decrypt(sealed[:12], sealed[12:], self._aad(name))
        except InvalidTag:
            raise AuthError(f"the TOTP secret of operator '{name}' cannot be unsealed; re-enrol the operator") from None

    @contextmanager
    def attempt(self, name: str) -> Iterator[Attempt]:
        """Lock the operator's row for one code check; the caller records the result on the handle."""
        with self._catalog.operator_update(name) as slot:
            row = slot.row
            if row is None:
                raise UsageError(f"no operator named '{name}'")
            att = Attempt(self._verified(row))
            yield att
            op = att.operator
            if att.changed:
                slot.put(self._signed(op.name, op.role, row.secret_sealed, op.created_at, op.created_by, op.last_step,
                                      op.failures, op.locked_until))


class Attempt:
    """One code check in progress: the operator's state, to be updated by the gate."""

    def __init__(self, op: Operator) -> None:
        self.operator = op
        self.changed = False

    def succeeded(self, step: int) -> None:
        op = self.operator
        self.operator = Operator(op.name, op.role, op.created_at, op.created_by, step, 0, 0.0)
        self.changed = True

    def failed(self, now: float, max_failures: int, lockout_s: float) -> None:
        op = self.operator
        failures = op.failures + 1
        locked = now + lockout_s if failures >= max_failures else op.locked_until
        # After a lockout the count starts again, so the next lock needs another full series.
        self.operator = Operator(op.name, op.role, op.created_at, op.created_by, op.last_step,
                                 0 if failures >= max_failures else failures, locked)
        self.changed = True


def _operator(row: OperatorRow) -> Operator:
    return Operator(str(row.name), str(row.role), float(row.created_at), str(row.created_by), int(row.last_step),
                    int(row.failures), float(row.locked_until))
