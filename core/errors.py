"""The one exception hierarchy of Backstop.

Every error carries the operator-facing message: one line saying what went
wrong and what to do. Front ends print ``str(err)`` and exit with
``err.exit_code``; they never need to inspect the cause.
"""

from __future__ import annotations


class BackstopError(Exception):
    """Base of every error Backstop raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(BackstopError):
    """Bad arguments on the command line."""

    exit_code = 2


class ConfigError(BackstopError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = 2


class StorageError(BackstopError):
    """A storage target failed an operation."""

    def __init__(self, target: str, message: str) -> None:
        super().__init__(f"target '{target}': {message}")
        self.target = target


def target_named(message: str | None) -> str | None:
    """The one target a message names in StorageError's form (``target 'NAME': ...``); None when none or several
    ('all' names no one target)."""
    import re

    names = set(re.findall(r"target '([^']+)'", message or "")) - {"all"}
    return names.pop() if len(names) == 1 else None


def error_target(exc: BaseException) -> str | None:
    """The target an error (or the error it wraps) blames: its ``target``, else the one its message names."""
    seen: BaseException | None = exc
    while seen is not None:
        target = getattr(seen, "target", None)
        if isinstance(target, str) and target != "all":
            return target
        seen = seen.__cause__ or seen.__context__
    return target_named(str(exc))


class TargetUnreachable(StorageError):
    """A target cannot be reached at all (server down, directory gone)."""


class DeletionRefused(StorageError):
    """A target keeps this object by design: Object Lock retention or an append-only target (FORMAT.md 23)."""

    def __init__(self, target: str, name: str, message: str, until: float | None = None) -> None:
        super().__init__(target, message)
        self.name = name
        self.until = until  # Unix time the retention ends; None for an append-only target


class ObjectNotFound(StorageError):
    """A named object does not exist on a target."""

    def __init__(self, target: str, name: str) -> None:
        super().__init__(target, f"object {name} is missing")
        self.name = name


class ObjectDamaged(StorageError):
    """An object a target returned is not what was stored (short read, truncated): damage, not an outage."""


class ObjectFrozen(StorageError):
    """The object is in an archive storage class (GLACIER, DEEP_ARCHIVE) and must be thawed before it can be read."""


class RepositoryError(BackstopError):
    """The repository is missing, of another format, or inconsistent."""


class RepositoryNotInitialised(RepositoryError):
    """No repository exists at a target yet."""


class WrongKey(RepositoryError):
    """The passphrase or key file does not unlock the repository."""

    exit_code = 2


class IntegrityError(RepositoryError):
    """Stored data failed a checksum or authentication check."""


class TargetDamaged(RepositoryError):
    """A target's own config or key objects are damaged: it cannot be opened on its own.

    Not a wrong passphrase: another target (or the object's own checksum)
    shows the passphrase is right and this copy is bad.
    """

    def __init__(self, target: str, message: str) -> None:
        super().__init__(f"target '{target}': {message}")
        self.target = target


class LockConflict(RepositoryError):
    """Another process holds a conflicting repository lock."""


class PostgresError(BackstopError):
    """PostgreSQL or one of its tools failed."""

    def __init__(self, message: str, toc_entry: int | None = None) -> None:
        super().__init__(message)
        # pg_restore's "from TOC entry N": the archive entry whose creation failed, when known.
        self.toc_entry = toc_entry


class RestoreRefused(BackstopError):
    """A restore was refused before anything was changed."""

    exit_code = 2


class DrillFailed(BackstopError):
    """A restore drill failed a check or a step (its report says which)."""


class AgentJobFailed(BackstopError):
    """A job a fleet agent ran failed after its retries (the agent's error, or that it stopped reporting)."""


class NotFound(BackstopError):
    """A snapshot, database or job that was asked for does not exist."""

    exit_code = 2


class AuthError(BackstopError):
    """The security gate refused an action: unknown operator, role too low, wrong or reused code, locked out."""

    exit_code = 2


class CatalogDisagrees(AuthError):
    """The catalog's operators or audit log do not match the repository's: gated actions stop until a rebuild."""


class CatalogError(BackstopError):
    """The catalog database is unreadable or its schema was altered."""

    exit_code = 1


class MfaRequired(AuthError):
    """A destructive action was asked for without a one-time code."""


class KeyInUse(RepositoryError):
    """A data key cannot be retired: stored data still needs it."""

    exit_code = 2
