"""`backstop operator ...`: enrol, change, remove and recover operators (admins, with a one-time code)."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from core.context import EngineContext
from core.errors import AuthError, UsageError
from core.security import operator_copy
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Guard, act
from core.security.operators import Operator, OperatorStore, check_name, check_role
from core.security.totp import provisioning_uri, secret_base32


@dataclass(frozen=True)
class Enrolment:
    """A new operator: the URI holds the TOTP secret and is shown this once."""

    name: str
    role: str
    uri: str
    secret_base32: str


def list_operators(ctx: EngineContext) -> list[Operator]:
    """Enrolled operators (no secrets; reading needs no key)."""
    return OperatorStore(ctx.catalog, None).list()


def _enrolment(ctx: EngineContext, name: str, role: str, secret: bytes) -> Enrolment:
    return Enrolment(name, role, provisioning_uri(secret, name, ctx.config.security.issuer), secret_base32(secret))


async def add_operator(ctx: EngineContext, name: str, role: str, who: Identity | None = None) -> Enrolment:
    """Enrol an operator; the very first one needs no code and must be an admin."""
    check_name(name)
    check_role(role)
    who = who or default_identity()
    async with Guard(ctx).action(who, Action.OPERATOR_ADD, f"{name} ({role})", require_all=False,
                                 enrol_role=role) as acting:
        ops = acting.session.operators
        secret = ops.add(name, role, who.operator, time.time())
        acting.detail.update(name=name, role=role)
        await operator_copy.save(acting.repo, ops.export(name, time.time()))
    return _enrolment(ctx, name, role, secret)


async def set_operator_role(ctx: EngineContext, name: str, role: str, who: Identity | None = None) -> Operator:
    check_role(role)
    who = who or default_identity()
    async with Guard(ctx).action(who, Action.OPERATOR_CHANGE, f"{name} -> {role}", require_all=False) as acting:
        ops = acting.session.operators
        if role != "admin" and ops.admins() == [name]:
            raise UsageError(f"'{name}' is the last admin; enrol another admin before changing this role")
        op = ops.set_role(name, role)
        acting.detail.update(name=name, role=role)
        await operator_copy.save(acting.repo, ops.export(name, time.time()))
    return op


async def remove_operator(ctx: EngineContext, name: str, who: Identity | None = None) -> None:
    who = who or default_identity()
    async with Guard(ctx).action(who, Action.OPERATOR_REMOVE, name, require_all=False) as acting:
        ops = acting.session.operators
        if ops.admins() == [name] and ops.count() > 1:
            raise UsageError(f"'{name}' is the last admin; enrol another admin before removing it")
        ops.remove(name)
        acting.detail.update(name=name)
        await operator_copy.drop(acting.repo, name)


async def recover_operator(ctx: EngineContext, name: str, passphrase: bytes, who: Identity | None = None) -> Enrolment:
    """Enrol an admin without a code when every operator record is lost, proven by the repository passphrase.

    The way back when the repository's operator records were deleted on
    every target and the catalog lost them too: nobody could ever pass the
    gate again. Knowing the passphrase (typed, not read from the config file)
    already gives full access to the repository, so it is the proof asked
    for; the enrolment is audited as operator.recover.
    """
    check_name(name)
    who = who or default_identity()
    subject = f"{name} (admin)"
    action = Action.OPERATOR_RECOVER
    async with Guard(ctx).session(who, require_all=True) as sec:
        if sec.operators.count() or await operator_copy.load(sec.repo):
            sec.gate.record(who, action.value, subject, "refused", reason="operators exist")
            raise AuthError("operators are enrolled (the repository holds their records): an admin enrols more "
                            "with `backstop operator add`; recovery is only for when every record is lost")
        if not hmac.compare_digest(passphrase, ctx.config.encryption.passphrase()):
            sec.gate.record(who, action.value, subject, "refused", reason="wrong passphrase")
            raise AuthError("that is not the repository passphrase; operator recovery needs it typed in")
        async with act(sec, who, action, subject,
                       approved_by="no operator records anywhere; repository passphrase given") as acting:
            secret = sec.operators.add(name, "admin", who.operator, time.time())
            acting.detail.update(name=name, role="admin")
            await operator_copy.save(sec.repo, sec.operators.export(name, time.time()))
    return _enrolment(ctx, name, "admin", secret)
