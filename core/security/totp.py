"""Time-based one-time passwords, RFC 6238: HMAC-SHA-1, 6 digits, 30-second steps.

Code generation is cryptography's ``TOTP``; this module adds what a server
needs around it: enrolment URIs, the drift window, and the rules that make a
code single-use (a step at or before the last accepted one is a replay) and
tell an expired code from a wrong one, for the operator's sake and the
audit log's.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

STEP_S = 30
DIGITS = 6
SECRET_BYTES = 20  # 160 bits, the HMAC-SHA-1 block-size recommendation of RFC 4226 section 4
# How far back a code still counts as "expired" rather than "wrong" (5 minutes).
_EXPIRED_LOOKBACK = 10
_CODE_RE = re.compile(rf"^\d{{{DIGITS}}}$")

Verdict = Literal["ok", "wrong", "expired", "replayed", "malformed"]


def new_secret() -> bytes:
    """A fresh random TOTP secret."""
    return secrets.token_bytes(SECRET_BYTES)


def secret_base32(secret: bytes) -> str:
    """The secret as authenticator apps and ``oathtool -b`` take it (RFC 4648 base32, no padding)."""
    return base64.b32encode(secret).decode().rstrip("=")


def _totp(secret: bytes, digits: int = DIGITS) -> TOTP:
    return TOTP(secret, digits, SHA1(), STEP_S, enforce_key_length=False)


def code_at(secret: bytes, t: float, digits: int = DIGITS) -> str:
    """The code valid at Unix time ``t``."""
    return _totp(secret, digits).generate(int(t)).decode()


def step_of(t: float) -> int:
    """The RFC 6238 time step T = floor(t / 30) (T0 = 0)."""
    return int(t // STEP_S)


def provisioning_uri(secret: bytes, account: str, issuer: str) -> str:
    """The ``otpauth://totp/ISSUER:ACCOUNT?secret=...`` URI an authenticator app enrols from."""
    return _totp(secret).get_provisioning_uri(account, issuer)


@dataclass(frozen=True)
class CodeCheck:
    """The verdict on one code, and the step it matched (for replay protection)."""

    verdict: Verdict
    step: int | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def check_code(secret: bytes, code: str, now: float, last_step: int, drift: int = 1) -> CodeCheck:
    """Judge ``code`` at time ``now`` for an operator whose last accepted step is ``last_step``.

    Accepted: a code of step T-drift .. T+drift (T = the current step) that is
    later than ``last_step``. Refusing every step up to the last accepted one,
    not only that step, is RFC 6238 section 5.2: once a code is used, no code
    of the same or an earlier window is valid again.
    """
    code = code.strip().replace(" ", "")
    if not _CODE_RE.match(code):
        return CodeCheck("malformed")
    t = _totp(secret)
    current = step_of(now)

    def matches(step: int) -> bool:
        return hmac.compare_digest(t.generate(step * STEP_S), code.encode())

    window = [s for s in range(current - drift, current + drift + 1) if matches(s)]
    fresh = [s for s in window if s > last_step]
    if fresh:
        # Of several matches (a 1-in-a-million collision), take the earliest unused one.
        return CodeCheck("ok", min(fresh))
    if window:
        return CodeCheck("replayed", max(window))
    for s in range(current - drift - 1, current - drift - 1 - _EXPIRED_LOOKBACK, -1):
        if matches(s):
            return CodeCheck("expired", s)
    return CodeCheck("wrong")
