"""The settings as an operator reviews them: schedules, each database's retention and its effect now,
targets, and the config file's edits waiting for an approval (the console's Settings screen).

Catalog reads only (no target is contacted): call it from a thread in a
front end with an event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from core.config import LocalTargetConfig, RetentionConfig, TargetConfig
from core.context import EngineContext
from core.format import size, utc
from core.ops.retention import plan_for
from core.ops.settings import retention_removals
from core.schedule.overview import ScheduleStatus, schedule_overview
from core.settings.effective import EffectiveSettings
from core.settings.sections import SectionChange


@dataclass(frozen=True)
class RetentionStatus:
    """A database's retention rules in force and what they would do now."""

    db: str
    rules: RetentionConfig | None  # None: no rules, every snapshot is kept until forgotten
    keep: int = 0
    remove: int = 0
    alert: str | None = None  # the storage cap cannot be met

    @property
    def rules_text(self) -> str:
        """The rules set, as `key value` pairs ('none' without rules)."""
        if self.rules is None:
            return "none (kept until forgotten)"
        parts = [f"{k} {size(v) if k == 'max_bytes' else v}"
                 for k, v in self.rules.model_dump(exclude_defaults=True).items()]
        return ", ".join(parts) or "no keep rule set (keeps everything)"


@dataclass(frozen=True)
class TargetRow:
    """A configured target and where it keeps the repository."""

    name: str
    type: str
    where: str


@dataclass(frozen=True)
class PendingSetting:
    """A guarded section the config file changed, waiting for an approval."""

    change: SectionChange
    would_remove: list[str] | None = None  # retention changes: the snapshots the new rules would remove now

    @property
    def required_role(self) -> str:
        return self.change.action.required_role


@dataclass(frozen=True)
class SettingsOverview:
    """Everything the Settings screen shows."""

    schedules: list[ScheduleStatus]
    retention: list[RetentionStatus]
    targets: list[TargetRow]
    pending: list[PendingSetting] = field(default_factory=list)
    # None: the engine was built without the config file's text, so approvals are not known here.
    enforced: bool | None = None
    in_force: str = ""  # which approved version is in force, by whom and when


def target_row(t: TargetConfig) -> TargetRow:
    """A target's name, type and location (no credentials: S3 keys come from the AWS chain)."""
    if isinstance(t, LocalTargetConfig):
        return TargetRow(t.name, t.type, str(t.path))
    where = f"s3://{t.bucket}/{t.prefix}".rstrip("/")
    if t.endpoint_url:
        where += f" at {t.endpoint_url}"
    elif t.region:
        where += f" ({t.region})"
    return TargetRow(t.name, t.type, where)


def retention_status(ctx: EngineContext, db: str, now: datetime) -> RetentionStatus:
    """The rules in force for ``db`` and how many of its snapshots they would keep and remove at ``now``."""
    rules = ctx.config.database(db).retention
    if rules is None:
        return RetentionStatus(db, None)
    plan = plan_for(ctx, db, rules, now)
    return RetentionStatus(db, rules, len(plan.keep), len(plan.remove), plan.alert)


def in_force_line(eff: EffectiveSettings | None) -> str:
    """'settings version N, approved by X at T' (or why there is none)."""
    if eff is None:
        return "approvals unknown: the console was opened without the config file's text"
    rec = eff.record
    if rec is None:
        return "no settings approved yet"
    when = utc(rec.approved_at, "%Y-%m-%d %H:%M UTC") if rec.approved_at else "unknown time"
    return f"settings version {rec.version}, approved by {rec.approved_by or 'unknown'} at {when}"


def settings_overview(ctx: EngineContext, eff: EffectiveSettings | None, now: datetime) -> SettingsOverview:
    """Schedules, retention, targets and pending changes of the config in force (catalog reads only)."""
    cfg = ctx.config
    pending = list(eff.pending) if eff is not None else []
    removals = retention_removals(ctx, pending, now) if pending else {}
    return SettingsOverview(
        schedules=schedule_overview(cfg.schedules, ctx.catalog, now),
        retention=[retention_status(ctx, d.name, now) for d in cfg.databases],
        targets=[target_row(t) for t in cfg.targets],
        pending=[PendingSetting(c, removals.get(c.database) if c.database is not None else None) for c in pending],
        enforced=None if eff is None else eff.enforced,
        in_force=in_force_line(eff),
    )
