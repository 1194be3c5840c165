"""The security gate: the one place that decides whether a destructive action may run.

Front ends (CLI, TUI) never decide; they pass an :class:`Identity` (who is
acting, and how to get their one-time code) to an engine method, and the
engine asks the gate before touching anything. The gate checks, in order:

1. the operator is enrolled (and their catalog record is intact);
2. their role is high enough for the action (viewers change nothing);
3. a code was given (the code source is asked only now, so nobody is
   prompted for an action their role forbids anyway);
4. they are not locked out;
5. the code is a valid, unused RFC 6238 code.

Every refusal and every code check is written to the audit log, with the
verdict but never the code or the secret. Wrong, expired, replayed and
malformed codes all count towards the lockout.
"""

from __future__ import annotations

import getpass
import inspect
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from core.config import SecurityConfig
from core.errors import AuthError, MfaRequired
from core.format import utc
from core.security.audit import AuditLog
from core.security.operators import OperatorStore, role_at_least
from core.security.totp import check_code


class Action(str, Enum):
    """Destructive actions; the value is the audit log's action name."""

    RESTORE_OVERWRITE = "restore.overwrite"
    SNAPSHOT_FORGET = "snapshot.forget"
    PRUNE = "prune"
    KEY_ROTATE = "key.rotate"
    KEY_REENCRYPT = "key.reencrypt"
    KEY_RETIRE = "key.retire"
    SCHEDULE_CHANGE = "settings.schedule"
    RETENTION_CHANGE = "settings.retention"
    ENCRYPTION_CHANGE = "settings.encryption"
    OPERATOR_ADD = "operator.add"
    OPERATOR_CHANGE = "operator.change"
    OPERATOR_REMOVE = "operator.remove"
    OPERATOR_RECOVER = "operator.recover"
    UNLOCK = "repository.unlock"
    AGENT_REGISTER = "agent.register"

    @property
    def required_role(self) -> str:
        return REQUIRED_ROLE[self]

    @property
    def label(self) -> str:
        return _LABELS[self]


# Operators run restores and housekeeping; retiring a key (irreversible) and
# managing operators is for admins.
REQUIRED_ROLE: dict[Action, str] = {
    Action.RESTORE_OVERWRITE: "operator",
    Action.SNAPSHOT_FORGET: "operator",
    Action.PRUNE: "operator",
    Action.KEY_ROTATE: "operator",
    Action.KEY_REENCRYPT: "operator",
    Action.KEY_RETIRE: "admin",
    Action.SCHEDULE_CHANGE: "operator",
    Action.RETENTION_CHANGE: "operator",
    Action.ENCRYPTION_CHANGE: "admin",
    Action.OPERATOR_ADD: "admin",
    Action.OPERATOR_CHANGE: "admin",
    Action.OPERATOR_REMOVE: "admin",
    Action.OPERATOR_RECOVER: "admin",
    Action.UNLOCK: "operator",
    Action.AGENT_REGISTER: "admin",
}

_LABELS: dict[Action, str] = {
    Action.RESTORE_OVERWRITE: "restoring over an existing database",
    Action.SNAPSHOT_FORGET: "forgetting snapshots",
    Action.PRUNE: "pruning the repository",
    Action.KEY_ROTATE: "rotating keys",
    Action.KEY_REENCRYPT: "re-encrypting the repository",
    Action.KEY_RETIRE: "retiring a data key",
    Action.SCHEDULE_CHANGE: "changing schedules",
    Action.RETENTION_CHANGE: "changing retention",
    Action.ENCRYPTION_CHANGE: "changing encryption settings",
    Action.OPERATOR_ADD: "enrolling an operator",
    Action.OPERATOR_CHANGE: "changing an operator",
    Action.OPERATOR_REMOVE: "removing an operator",
    Action.OPERATOR_RECOVER: "recovering operator access",
    Action.UNLOCK: "removing another process's repository lock",
    Action.AGENT_REGISTER: "registering a fleet agent (which databases it may serve)",
}

# A code, or something that produces one when asked (a prompt, a TUI modal).
CodeSource = str | Callable[[], str | None | Awaitable[str | None]] | None


@dataclass(frozen=True)
class Identity:
    """Who is acting, and where their one-time code comes from."""

    operator: str
    code: CodeSource = field(default=None, repr=False)
    host: str = field(default_factory=socket.gethostname)


OPERATOR_ENV = "BACKSTOP_OPERATOR"


def default_operator() -> str:
    """Who is acting when nobody said: $BACKSTOP_OPERATOR, else the OS user name."""
    return os.environ.get(OPERATOR_ENV) or getpass.getuser()


def acting_operator(name: str | None) -> str:
    """The operator named on the command line (or the default), refused unless it is a valid operator name.

    Names go into the audit log and onto terminals: a newline or escape in
    one could forge a line of `audit list`.
    """
    from core.security.operators import check_name

    return check_name(name or default_operator())


def default_identity() -> Identity:
    """The acting operator without a code (enough for non-destructive, audited steps)."""
    return Identity(default_operator())


@dataclass(frozen=True)
class Authorization:
    """Proof that the gate allowed an action (what the engine logs the outcome against)."""

    action: Action
    operator: str
    role: str
    subject: str
    bootstrap: bool = False


def _until(ts: float) -> str:
    return utc(ts, "%H:%M:%S UTC")


class Gate:
    """Role and one-time-code checks, with every decision in the audit log."""

    def __init__(self, operators: OperatorStore, audit: AuditLog, policy: SecurityConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.operators = operators
        self.audit = audit
        self.policy = policy
        self.clock = clock

    def record(self, who: Identity, action: str, subject: str, outcome: str, **detail: object) -> None:
        """Append an audit entry (used by the engine for outcomes and key events too)."""
        self.audit.append(who.operator, who.host, action, subject, outcome, detail, self.clock())

    def _refuse(self, who: Identity, action: Action, subject: str, reason: str, message: str,
                exc: type[AuthError] = AuthError) -> AuthError:
        self.record(who, action.value, subject, "refused", reason=reason)
        return exc(message)

    async def authorize(self, action: Action, who: Identity, subject: str, *,
                        enrol_role: str | None = None) -> Authorization:
        """Allow ``action`` on ``subject`` for ``who``, or raise AuthError (exit code 2).

        ``enrol_role`` is the role of an operator being enrolled: the very
        first operator of a catalog is enrolled without a code, and must be
        an admin (otherwise nobody could ever manage operators).
        """
        if action is Action.OPERATOR_ADD and self.operators.count() == 0:
            # "No operators" must mean "never had any": rows deleted from the catalog must not
            # reopen the code-free first enrolment. The keyed audit log remembers.
            earlier = self.audit.first(Action.OPERATOR_ADD.value, "succeeded")
            if earlier is not None:
                # The catalog agrees with the repository (checked before the gate), so the
                # repository's sealed operator records are gone too: nothing to rebuild from.
                raise self._refuse(
                    who, action, subject, "operators vanished",
                    f"operators were enrolled before (audit entry #{earlier.seq}, {earlier.time}) but neither the "
                    "catalog nor the repository holds any operator now; someone who knows the repository passphrase "
                    "can enrol a new admin with `backstop operator recover NAME` (audited)")
            if enrol_role != "admin":
                raise self._refuse(who, action, subject, "first operator must be admin",
                                   "the first operator of a catalog must be an admin: use --role admin")
            self.record(who, action.value, subject, "allowed", reason="first operator (no code needed)")
            return Authorization(action, who.operator, "admin", subject, bootstrap=True)

        op = self.operators.get(who.operator)
        if op is None:
            raise self._refuse(
                who, action, subject, "unknown operator",
                f"{action.label} needs an enrolled operator, and '{who.operator}' is not one; an admin enrols "
                f"operators with `backstop operator add NAME --role operator` (choose who acts with --operator "
                "NAME or $BACKSTOP_OPERATOR)")
        required = action.required_role
        if not role_at_least(op.role, required):
            raise self._refuse(who, action, subject, f"role {op.role} too low",
                               f"operator '{op.name}' has role {op.role}; {action.label} needs role {required}"
                               f"{' or admin' if required == 'operator' else ''}")

        code = await _obtain(who.code)
        if not code:
            raise self._refuse(
                who, action, subject, "no code",
                f"{action.label} is destructive and needs a fresh one-time code from the authenticator of operator "
                f"'{op.name}' (role {op.role}), so that no one acts in their name unnoticed; pass --otp CODE, "
                "or run in a terminal to be prompted",
                MfaRequired)

        now = self.clock()
        policy = self.policy
        step: int | None = None
        with self.operators.attempt(op.name) as att:
            state = att.operator
            if state.locked_until > now:
                verdict = "locked"
            else:
                check = check_code(self.operators.secret(op.name), code, now, state.last_step,
                                   policy.totp_drift_steps)
                verdict = check.verdict
                if check.ok:
                    assert check.step is not None
                    step = check.step
                    att.succeeded(step)
                else:
                    att.failed(now, policy.max_failures, policy.lockout.total_seconds())
            state = att.operator
        # Recorded after the attempt's transaction committed: the failure count
        # must stick even though the action is refused below.
        # The attempt state rides along (never the code): a catalog that loses its
        # operator rows takes it back from here, so deleting rows lifts no lockout.
        self.record(who, "mfa.verify", f"{action.value} {subject}", verdict,
                    failures=state.failures, locked_until=state.locked_until or None, step=step)
        if verdict == "ok":
            self.record(who, action.value, subject, "allowed", role=op.role)
            return Authorization(action, op.name, op.role, subject)

        lock_min = policy.lockout.total_seconds() / 60
        if verdict == "locked":
            message = (f"operator '{op.name}' is locked out after {policy.max_failures} wrong codes until "
                       f"{_until(state.locked_until)}; try again later")
        elif state.locked_until > now:
            message = (f"wrong one-time code for operator '{op.name}'; that was failure {policy.max_failures} of "
                       f"{policy.max_failures}: locked out for {lock_min:g} min, until {_until(state.locked_until)}")
        else:
            left = policy.max_failures - state.failures
            why = {
                "replayed": "this code was already used (each code works once); wait for the next one",
                "expired": "the code has expired (it belongs to an earlier 30-second window); enter the current "
                           "code and check the authenticator's clock",
                "malformed": "a code is 6 digits",
                "wrong": "the code is wrong",
            }[verdict]
            message = (f"one-time code refused for operator '{op.name}': {why} "
                       f"({left} more failure{'s' if left != 1 else ''} lock the operator out for {lock_min:g} min)")
        raise self._refuse(who, action, subject, f"code {verdict}", message)


async def _obtain(source: CodeSource) -> str | None:
    if source is None or isinstance(source, str):
        return source
    value = source()
    if inspect.isawaitable(value):
        value = await value
    return value
