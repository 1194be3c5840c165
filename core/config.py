"""The configuration file: one YAML document, validated on load.

An error names the file, the key path and what was expected, e.g.
``config error in /etc/backstop.yaml: targets.1.bucket: field required``.
Secrets are never inline: they come from files or environment variables.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import stat
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from core.errors import ConfigError
from core.schedule.config import ScheduleConfig, check_schedules

CONFIG_ENV = "BACKSTOP_CONFIG"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def default_data_dir() -> Path:
    """Backstop's per-user data directory (XDG)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "backstop"


class CatalogConfig(_Strict):
    url: str = Field(default_factory=lambda: f"sqlite:///{default_data_dir() / 'catalog.db'}")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if v.startswith("sqlite:///"):
            return v
        if v.startswith(("postgresql://", "postgres://")):
            if ":" in v.split("://", 1)[1].split("@", 1)[0] and "@" in v:
                raise ValueError("the catalog URL holds a password: leave it out and give it in ~/.pgpass,"
                                 " PGPASSWORD or ?passfile=PATH (config files end up in tickets and backups)")
            return v
        raise ValueError("expected sqlite:///path/to/catalog.db or postgresql://user@host:port/dbname")

    @property
    def is_postgres(self) -> bool:
        """True when the catalog lives in PostgreSQL (the fleet's control plane)."""
        return not self.url.startswith("sqlite:///")

    @property
    def sqlite_path(self) -> Path:
        if self.is_postgres:
            raise ValueError("the catalog is on PostgreSQL, not in an SQLite file")
        return Path(self.url[len("sqlite:///"):])


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """``90d``, ``24h``, ``5m``, ``30s``, ``2w`` or a number of seconds, as a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a duration like 90d, 24h, 5m or 30s, got {value!r}")
    return timedelta(seconds=float(m.group(1)) * _DURATION_UNITS[m.group(2)])


# A config value written as ``90d``/``5m``; validated into a timedelta.
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*/\s*s\s*$")
_BYTE_RATE_UNITS = {"B": 1, "KB": 10**3, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_BIT_RATE_UNITS = {"bit": 1, "kbit": 10**3, "Kbit": 10**3, "Mbit": 10**6, "Gbit": 10**9, "Tbit": 10**12}


def parse_rate(value: object) -> float:
    """``20MB/s``, ``5MiB/s`` (bytes) or ``100Mbit/s`` (bits), as bytes per second; a bare number is bytes/s."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), "B"
    else:
        m = _RATE_RE.match(str(value))
        if not m or (m.group(2) or "B") not in _BYTE_RATE_UNITS.keys() | _BIT_RATE_UNITS.keys():
            raise ValueError(f"expected a rate like 20MB/s, 5MiB/s or 100Mbit/s (case matters: MB bytes, "
                             f"Mbit bits), got {value!r}")
        number, unit = float(m.group(1)), m.group(2) or "B"
    rate = number * _BYTE_RATE_UNITS[unit] if unit in _BYTE_RATE_UNITS else number * _BIT_RATE_UNITS[unit] / 8
    if rate < 1024:
        raise ValueError(f"expected a rate of at least 1KiB/s, got {value!r}")
    return rate


# A config value written as ``20MB/s``/``100Mbit/s``; validated into bytes per second.
Rate = Annotated[float, BeforeValidator(parse_rate)]


class EncryptionConfig(_Strict):
    passphrase_file: Path | None = None
    passphrase_env: str | None = None
    # Key rotation policy: `backstop key rotate --if-due` rotates once the newest
    # key wrap is older than this (the scheduler calls it). None: rotate by hand only.
    rotate_every: Duration | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EncryptionConfig:
        if (self.passphrase_file is None) == (self.passphrase_env is None):
            raise ValueError("expected exactly one of passphrase_file or passphrase_env")
        return self

    def passphrase(self) -> bytes:
        """Read the passphrase from its file or environment variable."""
        if self.passphrase_env is not None:
            value = os.environ.get(self.passphrase_env)
            if value is None:
                raise ConfigError(
                    f"encryption.passphrase_env: environment variable {self.passphrase_env} is not set; "
                    "export it with the repository passphrase"
                )
            if not value.strip():
                raise ConfigError(
                    f"encryption.passphrase_env: environment variable {self.passphrase_env} is "
                    f"{'empty' if not value else 'whitespace only'}; export it with the repository passphrase"
                )
            return value.encode()
        assert self.passphrase_file is not None
        try:
            data = self.passphrase_file.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"encryption.passphrase_file: cannot read {self.passphrase_file}: {exc.strerror}"
            ) from None
        data = data.rstrip(b"\r\n")
        # A blank passphrase is a mistake (a truncated or wrongly written file), never a choice:
        # it would seal the repository with a key anyone can derive.
        if not data.decode("utf-8", "replace").strip():
            raise ConfigError(
                f"encryption.passphrase_file: {self.passphrase_file} is "
                f"{'empty' if not data else 'whitespace only'}; write the repository passphrase into it"
            )
        return data

    def passphrase_file_warning(self) -> str | None:
        """A one-line warning when the passphrase file is open to other users, else None.

        Like ssh's check of private key files, but a warning rather than a refusal,
        so a scheduled backup still runs. An unreadable or missing file is
        passphrase()'s error to report, not this one's.
        """
        if self.passphrase_file is None:
            return None
        try:
            mode = stat.S_IMODE(self.passphrase_file.stat().st_mode)
        except OSError:
            return None
        readable, writable = bool(mode & 0o044), bool(mode & 0o022)
        if not (readable or writable):
            return None
        what = "readable and writable" if readable and writable else "readable" if readable else "writable"
        path = str(self.passphrase_file)
        return (
            f"passphrase file {path} is {what} by other users (mode {mode:04o}); "
            f"run chmod 600 {shlex.quote(path)}"
        )


# What a target is for (FORMAT.md 12.4): primary and secondary copies count towards a write quorum;
# an archive copy counts only when targets_policy names it as required.
TargetRole = Literal["primary", "secondary", "archive"]


class _TransferLimits(_Strict):
    """Bandwidth and upload parallelism of one target (core/storage/throttle.py)."""

    # Bytes per second shared by all uploads (downloads) of this target, e.g. 20MB/s or 100Mbit/s; None: unlimited.
    max_upload_rate: Rate | None = None
    max_download_rate: Rate | None = None
    # Packs a backup uploads to this target at once.
    parallel_uploads: int = Field(default=3, ge=1, le=32)


class _TargetPlacement(_Strict):
    """Where a target is and how it is used, common to every target type."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    # Geographic region (free text, e.g. eu-west-1); for S3 targets it is also the AWS region of the bucket.
    region: str | None = None
    # Preference when reading: the LOWER number is preferred (like DNS MX records); ties keep config order.
    priority: int = Field(default=100, ge=0, le=1000)
    role: TargetRole = "primary"


class LocalTargetConfig(_TargetPlacement, _TransferLimits):
    type: Literal["local"]
    path: Path
    # Backstop never deletes or rewrites objects here (lock files excepted); see FORMAT.md 23.
    append_only: bool = False
    # `backstop archive` makes sure packs used only by snapshots older than this are present here (FORMAT.md 12.6).
    archive_after_days: int | None = Field(default=None, ge=1)


class ObjectLockConfig(_Strict):
    """S3 Object Lock retention Backstop sets on the objects it never rewrites (FORMAT.md 23)."""

    mode: Literal["compliance", "governance"]
    days: int = Field(ge=1, le=36500)


# S3 storage classes `backstop archive` may move packs to (STANDARD is where they start).
ArchiveStorageClass = Literal["STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER",
                              "DEEP_ARCHIVE"]


class S3TargetConfig(_TargetPlacement, _TransferLimits):
    type: Literal["s3"]
    bucket: str = Field(min_length=3)
    prefix: str = ""
    endpoint_url: str | None = None
    # TLS certificate verification: true (default), false, or a CA bundle path.
    verify_tls: bool | Path = True
    # Optional named profile of the standard AWS credential chain.
    profile: str | None = None
    # Parts of this size are uploaded in parallel for large packs.
    multipart_chunk_mib: int = Field(default=8, ge=5, le=512)
    max_attempts: int = Field(default=5, ge=1, le=20)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    # Write-once objects get this retention; the bucket must have Object Lock enabled.
    object_lock: ObjectLockConfig | None = None
    # Archive tier (`backstop archive`, FORMAT.md 12.6): packs used only by snapshots older than
    # archive_after_days go to storage_class here (copied in place); GLACIER/DEEP_ARCHIVE need a thaw to restore.
    storage_class: ArchiveStorageClass | None = None
    archive_after_days: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _archive_pair(self) -> S3TargetConfig:
        if self.storage_class is not None and self.archive_after_days is None:
            raise ValueError("storage_class needs archive_after_days (the snapshot age after which packs move there)")
        return self


TargetConfig = Annotated[LocalTargetConfig | S3TargetConfig, Field(discriminator="type")]


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}


def parse_size(value: object) -> int:
    """``500GB`` (10^9), ``1.5TiB`` (2^40), ``4096`` or ``4096B``, as a whole number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"expected a size of zero or more bytes, got {value}")
        return value
    m = _SIZE_RE.match(str(value))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"expected a size like 500GB, 1.5TiB or a number of bytes, got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


# A config value written as ``500GB``/``1.5TiB``; validated into bytes.
ByteSize = Annotated[int, BeforeValidator(parse_size)]


def _keep_count(value: object) -> object:
    return -1 if isinstance(value, str) and value.strip().lower() == "unlimited" else value


# A keep_* count: 0 (rule off), n, or -1 / "unlimited" (every bucket), as in restic.
KeepCount = Annotated[int, BeforeValidator(_keep_count), Field(ge=-1)]


class RetentionConfig(_Strict):
    """Which snapshots of a database `backstop forget --db` keeps (core/retention/policy.py)."""

    # restic's --keep-* rules, OR-ed; buckets are counted in UTC (restic: local time).
    keep_last: KeepCount = 0
    keep_hourly: KeepCount = 0
    keep_daily: KeepCount = 0
    keep_weekly: KeepCount = 0
    keep_monthly: KeepCount = 0
    keep_yearly: KeepCount = 0
    # Compliance floor: a snapshot younger than this is never removed, whatever the rules or the cap say.
    min_age_days: float = Field(default=0, ge=0)
    # Storage cap on the database's snapshots (their stored bytes): the oldest are removed until under it.
    max_bytes: ByteSize | None = Field(default=None, gt=0)


class DatabaseConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    dsn: str
    # Directory holding pg_dump/pg_restore; found automatically when absent.
    bin_dir: Path | None = None
    # Recovery time objective: restores (and drills) are measured against it.
    rto_minutes: float = Field(default=60, gt=0)
    # Retention rules for `backstop forget --db NAME` and the scheduler; None: snapshots are kept until forgotten.
    retention: RetentionConfig | None = None


class RepositoryConfig(_Strict):
    """Parameters fixed at `backstop init` (later changes are ignored)."""

    chunk_avg_kib: int = Field(default=1024, ge=64, le=4096)
    pack_target_mib: int = Field(default=16, ge=1, le=256)
    compression_level: int = Field(default=3, ge=1, le=19)


class SecurityConfig(_Strict):
    """Operators and one-time codes (TOTP, RFC 6238: SHA-1, 6 digits, 30 s steps)."""

    # Wrong codes in a row before an operator is locked out, and for how long.
    max_failures: int = Field(default=5, ge=1, le=100)
    lockout: Duration = Field(default=timedelta(minutes=5))
    # Clock drift tolerated between server and authenticator, in 30-second steps.
    totp_drift_steps: int = Field(default=1, ge=0, le=2)
    # Shown by authenticator apps next to the account name.
    issuer: str = Field(default="Backstop", min_length=1, max_length=64, pattern=r"^[^:]+$")


class WalConfig(_Strict):
    """WAL archiving (wal-push, wal-fetch): where their spool is and how far they work ahead."""

    # The spool of the resident pusher and the read-ahead fetcher (relative: to the config file's
    # directory). Default: wal-spool beside the config file when that directory is writable, else
    # under Backstop's data directory. It must be writable by the PostgreSQL server's OS user.
    spool_dir: Path | None = None
    # WAL files the resident pusher archives at once ahead of PostgreSQL's archive_command calls.
    push_ahead: int = Field(default=4, ge=1, le=32)
    # Segments the read-ahead fetcher keeps ready for restore_command.
    fetch_ahead: int = Field(default=8, ge=1, le=128)


class RestoreConfig(_Strict):
    """Restores: where a table restored as of a moment gets its private scratch cluster."""

    # The physical snapshot is written here and recovered to the moment before the tables are copied
    # out, then removed (it needs about the snapshot's size plus WAL). Default: the system temp directory.
    scratch_dir: Path | None = None


class AlertsConfig(_Strict):
    """Limits past which the console's dashboard raises an alert."""

    # The age of the newest recoverable moment (newest archived WAL segment, or newest snapshot
    # when no WAL is archived): what a lost primary would take with it right now.
    recovery_point_age: Duration = Field(default=timedelta(minutes=15))


# -- fleet agents' thresholds (core/fleet/thresholds.py watches them) --

@dataclass(frozen=True)
class RowLimit:
    """``changed_rows``: an absolute count of rows, or a percentage of the database's live rows."""

    value: float
    percent: bool

    def rows(self, live_rows: int) -> int:
        """The limit in rows for a database of ``live_rows`` live rows (at least 1: no change never fires)."""
        if not self.percent:
            return int(self.value)
        return max(1, math.ceil(self.value * live_rows / 100))

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else str(int(self.value))


_ROWS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


def parse_row_limit(value: object) -> RowLimit:
    """``5%`` (of the live rows), ``200000`` or ``"200000"`` (rows), as a RowLimit."""
    if isinstance(value, RowLimit):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a row count like 200000 or a percentage like 5%, got {value!r}")
    m = _ROWS_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a row count like 200000 or a percentage like 5%, got {value!r}")
    number, percent = float(m.group(1)), m.group(2) == "%"
    if percent:
        if not 0 < number <= 100:
            raise ValueError(f"expected a percentage above 0% and at most 100%, got {value!r}")
    elif number != int(number) or number < 1:
        raise ValueError(f"expected a whole number of rows, at least 1, got {value!r}")
    return RowLimit(number, percent)


def _positive_size(value: object) -> int:
    size = parse_size(value)
    if size < 1:
        raise ValueError(f"expected a size above zero like 4GB or 512MiB, got {value!r}")
    return size


# Serialised back to what an operator writes (``config show``, settings diffs): "5%", "200000".
Rows = Annotated[RowLimit, BeforeValidator(parse_row_limit), PlainSerializer(str, return_type=str)]
WalSize = Annotated[int, BeforeValidator(_positive_size)]


class ThresholdsConfig(_Strict):
    """When an agent starts a snapshot of its own accord; any one crossed threshold fires."""

    wal_bytes: WalSize | None = None  # WAL written since the last snapshot: 4GB (10^9), 512MiB (2^20), bytes
    changed_rows: Rows | None = None  # rows inserted+updated+deleted since the last snapshot: 200000 or 5%
    max_age: Duration | None = None  # time since the last successful snapshot: 26h, 2d

    @field_validator("max_age")
    @classmethod
    def _positive_age(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v.total_seconds() <= 0:
            raise ValueError("expected a duration above zero like 26h or 2d")
        return v

    @model_validator(mode="after")
    def _something_set(self) -> ThresholdsConfig:
        if self.wal_bytes is None and self.changed_rows is None and self.max_age is None:
            raise ValueError("set at least one of wal_bytes, changed_rows, max_age (e.g. {max_age: 26h})")
        return self



class FleetConfig(_Strict):
    """``fleet:``: this host's agent, the control plane it takes work from, and how often it reports."""

    # The agent's name in the control plane (`backstop agents`); its login role is registered under it.
    # At most 48 characters: its wake-up channel (backstop_agent_NAME) must fit PostgreSQL's 63.
    agent: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
    # The control plane's catalog, reached as the agent's own role: postgresql://ROLE@host:port/dbname.
    control_plane: str
    # Presence and each running job's lease are renewed this often; a job whose lease (lease_s) lapses is
    # taken back by the control plane and retried, and the agent stops working on it.
    heartbeat_s: float = Field(default=15.0, gt=0, le=300)
    lease_s: float = Field(default=60.0, gt=0, le=3600)
    # Queued work wakes the agent at once (LISTEN); this is the fallback look when a notification is lost.
    poll_s: float = Field(default=10.0, gt=0, le=600)
    # Snapshots the agent asks for when its databases change this much (core/fleet/thresholds.py:
    # {wal_bytes: 4GB, changed_rows: 5%, max_age: 26h}); checked at every heartbeat while idle.
    thresholds: ThresholdsConfig | None = None
    # Where the agent keeps each database's activity at its last snapshot (default: the data directory).
    state_dir: Path | None = None

    @field_validator("control_plane")
    @classmethod
    def _postgres_url(cls, v: str) -> str:
        return CatalogConfig._known_scheme(v) if v.startswith(("postgresql://", "postgres://")) else _bad_plane(v)

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> FleetConfig:
        if self.lease_s < 2 * self.heartbeat_s:
            raise ValueError(f"lease_s ({self.lease_s:g}) must be at least twice heartbeat_s ({self.heartbeat_s:g}):"
                             " one late heartbeat must not lose the job")
        return self


class DispatchConfig(_Strict):
    """``dispatch:``: how the daemon on a fleet's catalog hands scheduled runs to agents and retries them."""

    # A job whose agent failed or went silent is queued again this many times in all, each retry after
    # retry_delay_s x its attempt number.
    max_attempts: int = Field(default=3, ge=1, le=20)
    retry_delay_s: float = Field(default=30.0, ge=0, le=86400)
    # A running job's lease must have lapsed this long before it is taken back (clock skew between hosts).
    reap_grace_s: float = Field(default=10.0, ge=0, le=3600)


def _bad_plane(v: str) -> str:
    raise ValueError("expected postgresql://ROLE@host:port/dbname (the control plane's catalog)")


class QuorumPolicy(_Strict):
    """``targets_policy: {quorum: N, required: [names]}``: stored once N targets hold it, the required ones included."""

    quorum: int = Field(ge=1)
    required: list[str] = Field(default_factory=list)


class BackstopConfig(_Strict):
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    encryption: EncryptionConfig
    targets: list[TargetConfig] = Field(min_length=1)
    # When a backup or WAL file counts as stored (FORMAT.md 12.4): on every target ("all", the default),
    # or on a quorum of targets that includes the required ones; `backstop sync` later fills the others.
    targets_policy: Literal["all"] | QuorumPolicy = "all"
    databases: list[DatabaseConfig] = Field(default_factory=list)
    repository: RepositoryConfig = Field(default_factory=RepositoryConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    wal: WalConfig = Field(default_factory=WalConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    restore: RestoreConfig = Field(default_factory=RestoreConfig)
    # This host's agent in a fleet (`backstop agent`); absent on a single host.
    fleet: FleetConfig | None = None
    # The daemon's side of a fleet (catalog on PostgreSQL): retries of the agents' jobs.
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    # What `backstop daemon` runs and when (core/schedule/config.py).
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    # Threads for compression and encryption (they release the GIL).
    workers: int = Field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)), ge=1, le=64)
    # pg_restore processes run at once in a whole-database restore (like pg_restore -j).
    restore_jobs: int = Field(default=2, ge=1, le=16)
    # Tables copied at once by a logical backup, each on its own connection inside one
    # snapshot (like pg_dump -j); the backup opens jobs + 2 connections.
    jobs: int = Field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)), ge=1, le=32)

    @field_validator("targets_policy", mode="before")
    @classmethod
    def _policy_form(cls, v: object) -> object:
        # One clear line instead of pydantic's report on each branch of the union.
        if v == "all" or isinstance(v, QuorumPolicy):
            return v
        if isinstance(v, dict):
            try:
                return QuorumPolicy.model_validate(v)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(x) for x in first["loc"])
                raise ValueError(f"{where}: {first['msg']}" if where else first["msg"]) from None
        raise ValueError("expected all, or {quorum: N, required: [target names]}")

    @model_validator(mode="after")
    def _unique_names(self) -> BackstopConfig:
        for kind, names in (("targets", [t.name for t in self.targets]),
                            ("databases", [d.name for d in self.databases])):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"{kind}: duplicate name {sorted(dup)[0]!r}")
        check_schedules(self.schedules, [d.name for d in self.databases], [t.name for t in self.targets])
        self._check_policy()
        return self

    def _check_policy(self) -> None:
        policy = self.targets_policy
        if isinstance(policy, str):
            return
        names = [t.name for t in self.targets]
        for r in policy.required:
            if r not in names:
                raise ValueError(f"targets_policy.required: no target named {r!r} (configured: {', '.join(names)})")
        voters = self.quorum_targets()
        if policy.quorum > len(voters):
            raise ValueError(f"targets_policy.quorum {policy.quorum} cannot be met: only {len(voters)} target(s) count "
                             "(primary and secondary ones, and required archive ones)")

    def quorum_targets(self) -> list[str]:
        """Targets counting towards the write quorum: primaries, secondaries, and archive targets named as required."""
        required = [] if isinstance(self.targets_policy, str) else self.targets_policy.required
        return [t.name for t in self.targets if t.role != "archive" or t.name in required]

    def write_satisfied(self, holders: list[str] | set[str]) -> str | None:
        """None when ``holders`` meet targets_policy, else why not (one line, for an error message)."""
        policy = self.targets_policy
        if isinstance(policy, str):
            missing = [t.name for t in self.targets if t.name not in holders]
            return f"targets_policy all: not stored on {', '.join(missing)}" if missing else None
        lacking = [r for r in policy.required if r not in holders]
        if lacking:
            return f"required target(s) {', '.join(lacking)} did not store it"
        counted = [n for n in self.quorum_targets() if n in holders]
        if len(counted) < policy.quorum:
            return f"stored on {len(counted)} of the {policy.quorum} target(s) the quorum needs"
        return None

    def database(self, name: str) -> DatabaseConfig:
        """The configured database called ``name``."""
        for db in self.databases:
            if db.name == name:
                return db
        known = ", ".join(d.name for d in self.databases) or "none"
        raise ConfigError(f"no database named {name!r} in the config (configured: {known})")

    def target(self, name: str) -> TargetConfig:
        """The configured target called ``name``."""
        for t in self.targets:
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.targets)
        raise ConfigError(f"no target named {name!r} in the config (configured: {known})")


def _format_validation_error(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if p not in ("local", "s3")) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"config error in {path}: {loc}: {msg}{more}"


def parse_config(data: object, path: Path) -> BackstopConfig:
    """Validate an already-parsed YAML document."""
    if not isinstance(data, dict):
        raise ConfigError(f"config error in {path}: expected a mapping at the top level")
    try:
        return BackstopConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(path, err)) from None


def load_config(path: str | os.PathLike[str] | None) -> BackstopConfig:
    """Load and validate the config file (``--config`` or ``$BACKSTOP_CONFIG``)."""
    return parse_config(*read_config(path))


def read_config(path: str | os.PathLike[str] | None) -> tuple[object, Path]:
    """The config file's parsed YAML, not yet validated, and its path (core/settings works on the raw sections)."""
    if path is None:
        env = os.environ.get(CONFIG_ENV)
        if not env:
            raise ConfigError(f"no config file: pass --config PATH or set ${CONFIG_ENV}")
        path = env
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"config error in {p}: cannot read the file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config error in {p}: not valid YAML{where}") from None
    return data, p
