"""TOTP (RFC 6238) and the gate's rules, checked against an independent implementation."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from core.catalog.store import Catalog
from core.config import SecurityConfig
from core.errors import AuthError, MfaRequired
from core.security import totp
from core.security.audit import AuditLog
from core.security.derive import SecurityKeys
from core.security.gate import Action, Gate, Identity
from core.security.operators import OperatorStore

from tests.fixtures.otp import rfc6238, secret_from_uri

# RFC 6238 appendix B: the SHA-1 seed and the published 8-digit values.
RFC_SECRET = b"12345678901234567890"
RFC_VECTORS = [(59, "94287082"), (1111111109, "07081804"), (1111111111, "14050471"), (1234567890, "89005924"),
               (2000000000, "69279037"), (20000000000, "65353130")]


@pytest.mark.parametrize("t,expected", RFC_VECTORS)
def test_rfc6238_vectors(t: int, expected: str) -> None:
    assert rfc6238(RFC_SECRET, t, digits=8) == expected  # the test's own implementation
    assert totp.code_at(RFC_SECRET, t, digits=8) == expected  # Backstop's
    assert totp.code_at(RFC_SECRET, t) == expected[-6:]  # 6 digits: the same truncation, mod 10^6


def test_codes_match_independent_implementation() -> None:
    for _ in range(20):
        secret = totp.new_secret()
        for t in (0, 29, 30, 1_700_000_000, 1_700_000_029.9):
            assert totp.code_at(secret, t) == rfc6238(secret, t)


def test_provisioning_uri_round_trips_the_secret() -> None:
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, "alice", "Backstop")
    assert uri.startswith("otpauth://totp/Backstop:alice?") and "issuer=Backstop" in uri
    assert secret_from_uri(uri) == secret
    assert totp.secret_base32(secret) in uri


def test_check_code_verdicts() -> None:
    secret = totp.new_secret()
    now = 1_700_000_015.0
    step = int(now // 30)
    code = rfc6238(secret, now)
    assert totp.check_code(secret, code, now, last_step=-1) == totp.CodeCheck("ok", step)
    # One step of drift either way, but not two.
    assert totp.check_code(secret, rfc6238(secret, now - 30), now, -1).verdict == "ok"
    assert totp.check_code(secret, rfc6238(secret, now + 30), now, -1).verdict == "ok"
    assert totp.check_code(secret, rfc6238(secret, now + 60), now, -1).verdict == "wrong"
    assert totp.check_code(secret, rfc6238(secret, now - 60), now, -1).verdict == "expired"
    assert totp.check_code(secret, rfc6238(secret, now - 60), now, -1, drift=2).verdict == "ok"
    # Replay: the accepted step and every earlier one are refused.
    assert totp.check_code(secret, code, now, last_step=step).verdict == "replayed"
    assert totp.check_code(secret, rfc6238(secret, now - 30), now, last_step=step).verdict == "replayed"
    assert totp.check_code(secret, rfc6238(secret, now + 30), now, last_step=step).verdict == "ok"
    assert totp.check_code(secret, "12345", now, -1).verdict == "malformed"
    assert totp.check_code(secret, "abcdef", now, -1).verdict == "malformed"


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _gate(tmp_path: Path, clock: _Clock) -> tuple[Gate, Catalog]:
    cat = Catalog(tmp_path / "catalog.db")
    keys = SecurityKeys.derive(b"\x01" * 32, "0" * 32)
    policy = SecurityConfig(max_failures=5, lockout=timedelta(minutes=5))
    return Gate(OperatorStore(cat, keys), AuditLog(cat, keys.audit_mac), policy, clock), cat


async def test_gate_lockout_and_recovery(tmp_path: Path) -> None:
    clock = _Clock(1_700_000_015.0)
    gate, cat = _gate(tmp_path, clock)
    await gate.authorize(Action.OPERATOR_ADD, Identity("root"), "alice", enrol_role="admin")
    secret = gate.operators.add("alice", "admin", "root", clock())
    alice = lambda code: Identity("alice", code)  # noqa: E731
    with pytest.raises(MfaRequired, match="one-time code"):
        await gate.authorize(Action.PRUNE, alice(None), "x")
    for i in range(4):
        with pytest.raises(AuthError, match=f"{4 - i} more failure"):
            wrong = "000000" if rfc6238(secret, clock()) != "000000" else "111111"
            await gate.authorize(Action.PRUNE, alice(wrong), "x")
    with pytest.raises(AuthError, match="locked out for 5 min"):
        await gate.authorize(Action.PRUNE, alice("999999" if rfc6238(secret, clock()) != "999999" else "111111"), "x")
    # Locked: even the right code is refused, and that is audited too.
    with pytest.raises(AuthError, match="locked out"):
        await gate.authorize(Action.PRUNE, alice(rfc6238(secret, clock())), "x")
    clock.t += 301
    auth = await gate.authorize(Action.PRUNE, alice(rfc6238(secret, clock.t)), "x")
    assert auth.operator == "alice" and auth.role == "admin"
    verdicts = [e.outcome for e in gate.audit.entries() if e.action == "mfa.verify"]
    assert verdicts == ["wrong"] * 5 + ["locked", "ok"]
    assert gate.audit.verify().ok
    cat.close()


async def test_operator_record_edited_in_sqlite_is_refused(tmp_path: Path) -> None:
    clock = _Clock(1_700_000_015.0)
    gate, cat = _gate(tmp_path, clock)
    gate.operators.add("mallory", "viewer", "root", clock())
    cat.connection.execute("UPDATE operators SET role='admin' WHERE name='mallory'")
    with pytest.raises(AuthError, match="integrity check"):
        await gate.authorize(Action.PRUNE, Identity("mallory", "123456"), "x")
    cat.close()
