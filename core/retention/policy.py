"""Which snapshots of one database the retention rules keep: a pure function of the snapshots, the rules and now.

The ``keep_*`` rules follow restic's ``forget`` policy (``ApplyPolicy``):

- snapshots are taken newest first; ``keep_last n`` keeps the n newest;
- ``keep_hourly/daily/weekly/monthly/yearly n`` keep the newest snapshot of
  each of the n most recent hours/days/ISO weeks/months/years *that hold a
  snapshot* (empty periods do not count); ``-1`` counts every period;
- the rules are OR-ed: a snapshot any rule keeps is kept;
- when a period rule still has count left after the oldest snapshot, that
  oldest snapshot is kept too ("oldest daily ..."), as restic does since 0.16;
- with no ``keep_*`` rule set, the rules keep everything (restic removes
  nothing without a policy).

The one difference: periods are counted in **UTC**, where restic uses the
local time zone of the machine running ``forget``. A schedule moving with
daylight saving time, or two hosts in different zones, would otherwise see
different days.

Each kind (logical, physical) is its own group, like restic's
``--group-by``: a daily logical dump must not push the day's physical
snapshot (the base of point-in-time recovery) out of its daily bucket.

On top of the rules:

- a snapshot that is not restorable yet (a physical one ``waiting`` for its
  WAL) is kept and not counted: it cannot stand in for a restorable one, and
  removing it would only throw away a backup that is about to become usable;
- ``min_age_days`` is a floor: a snapshot younger than that is kept whatever
  the rules or the cap say (compliance: an auditor may still ask for it);
- ``max_bytes`` caps the sum of the snapshots' ``stored_bytes`` (the packs
  each backup added to the repository; the only per-snapshot figure that sums
  to about the repository's size, since ``size_bytes`` counts shared data
  once per snapshot). It is approximate: deduplication means removing a
  snapshot frees only what no other snapshot shares, so the real saving shows
  after prune. The cap removes the oldest snapshots the rules keep, never one
  the floor protects and never the newest restorable snapshot of a kind (a
  cap must not leave a database without a backup); when that cannot bring
  the total under the cap, it removes nothing and the plan carries an alert.

Snapshot times are their ``finished_at``: what operators see listed, and for
the floor the later (safer) of the two times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from core.config import RetentionConfig
from core.format import size
from core.records import SnapshotRecord

RESTORABLE = "restorable"


@dataclass(frozen=True)
class RetainedFacts:
    """What the policy needs to know about one snapshot."""

    snapshot_id: str
    kind: str
    time: datetime  # finished_at, timezone-aware
    stored_bytes: int = 0
    status: str = RESTORABLE

    @classmethod
    def of(cls, rec: SnapshotRecord) -> RetainedFacts:
        """The facts of a catalog record."""
        return cls(rec.id, rec.kind, parse_time(rec.finished_at), rec.stored_bytes, rec.status)


def parse_time(text: str) -> datetime:
    """A stored ISO 8601 time as an aware datetime (a naive one is taken as UTC)."""
    t = datetime.fromisoformat(text)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@dataclass
class Decision:
    """Keep or remove one snapshot, and the rule(s) that decided it."""

    snapshot_id: str
    kind: str
    time: datetime
    stored_bytes: int
    keep: bool
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"snapshot": self.snapshot_id, "kind": self.kind, "time": self.time.isoformat(),
                "stored_bytes": self.stored_bytes, "keep": self.keep, "reasons": list(self.reasons)}


@dataclass
class RetentionPlan:
    """Every snapshot's decision (newest first), the ids to remove, and an alert when the cap cannot be met."""

    decisions: list[Decision]
    alert: str | None = None
    kept_bytes: int = 0  # stored bytes of the kept snapshots (what the cap compares)

    @property
    def remove(self) -> list[str]:
        return [d.snapshot_id for d in self.decisions if not d.keep]

    @property
    def keep(self) -> list[str]:
        return [d.snapshot_id for d in self.decisions if d.keep]

    def to_json(self) -> dict[str, object]:
        return {"decisions": [d.to_json() for d in self.decisions], "remove": self.remove, "alert": self.alert,
                "kept_bytes": self.kept_bytes}


# (config key, reason word, bucket of a UTC time). keep_last has no bucket: each snapshot is its own.
_PERIODS: tuple[tuple[str, str, Callable[[datetime], str]], ...] = (
    ("keep_hourly", "hourly", lambda t: t.strftime("%Y-%m-%dT%H")),
    ("keep_daily", "daily", lambda t: t.strftime("%Y-%m-%d")),
    ("keep_weekly", "weekly", lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2])),
    ("keep_monthly", "monthly", lambda t: t.strftime("%Y-%m")),
    ("keep_yearly", "yearly", lambda t: t.strftime("%Y")),
)


def _apply_keep_rules(group: list[Decision], rules: RetentionConfig) -> None:
    """restic's ApplyPolicy over one group, newest first: fills in ``keep`` and the keeping reasons."""
    last = rules.keep_last
    counts = {key: getattr(rules, key) for key, _, _ in _PERIODS}
    if last == 0 and not any(counts.values()):
        for d in group:
            d.keep, d.reasons = True, ["no keep_* rule set: the rules keep everything"]
        return
    seen: dict[str, str | None] = {key: None for key, _, _ in _PERIODS}
    for nr, d in enumerate(group):
        oldest = nr == len(group) - 1
        reasons = []
        if last == -1 or nr < last:
            reasons.append(f"last {nr + 1}")
        t = d.time.astimezone(UTC)
        for key, word, bucket in _PERIODS:
            if counts[key] == 0:
                continue
            val = bucket(t)
            if val != seen[key] or oldest:
                reasons.append(f"{word} {val}" if val != seen[key] else f"oldest {word} {val}")
                seen[key] = val
                if counts[key] > 0:
                    counts[key] -= 1
        d.keep = bool(reasons)
        d.reasons = reasons or ["no rule keeps it"]


def plan_retention(snapshots: Sequence[RetainedFacts], rules: RetentionConfig, now: datetime) -> RetentionPlan:
    """Keep or remove each snapshot of one database under ``rules`` at ``now`` (see the module docstring)."""
    ordered = sorted(enumerate(snapshots), key=lambda p: (p[1].time, p[0]), reverse=True)
    decisions = [Decision(s.snapshot_id, s.kind, s.time, s.stored_bytes, True) for _, s in ordered]
    status = {s.snapshot_id: s.status for s in snapshots}
    floor = now - timedelta(days=rules.min_age_days)
    groups: dict[str, list[Decision]] = {}
    for d in decisions:
        if status[d.snapshot_id] != RESTORABLE:
            d.reasons = [f"not restorable yet ({status[d.snapshot_id]}): kept, not counted"]
        else:
            groups.setdefault(d.kind, []).append(d)
    for group in groups.values():
        _apply_keep_rules(group, rules)
    protected = {id(d) for d in decisions if rules.min_age_days > 0 and d.time > floor}
    for d in decisions:
        if not d.keep and id(d) in protected:
            d.keep = True
            d.reasons = [f"min_age_days: younger than {rules.min_age_days:g} days (no rule keeps it otherwise)"]
    plan = RetentionPlan(decisions)
    plan.kept_bytes = sum(d.stored_bytes for d in decisions if d.keep)
    if rules.max_bytes is not None and plan.kept_bytes > rules.max_bytes:
        _apply_cap(plan, groups, protected, rules)
    return plan


def _apply_cap(plan: RetentionPlan, groups: dict[str, list[Decision]], protected: set[int],
               rules: RetentionConfig) -> None:
    """Remove the oldest kept snapshots the floor allows until under ``max_bytes``; alert if impossible."""
    cap = rules.max_bytes
    assert cap is not None
    newest = {id(g[0]) for g in groups.values()}
    restorable = {id(d) for g in groups.values() for d in g}
    candidates = [d for d in reversed(plan.decisions)  # oldest first
                  if d.keep and id(d) in restorable and id(d) not in protected and id(d) not in newest]
    over = plan.kept_bytes - cap
    chosen: list[Decision] = []
    freed = 0
    for d in candidates:
        if freed >= over:
            break
        chosen.append(d)
        freed += d.stored_bytes
    if freed < over:
        floor = f"older than min_age_days {rules.min_age_days:g} and " if rules.min_age_days > 0 else ""
        plan.alert = (f"max_bytes {size(cap)}: the kept snapshots take {size(plan.kept_bytes)}, and removing every "
                      f"one {floor}not the newest of its kind would free only {size(freed)}; the cap removed "
                      "nothing: raise max_bytes, lower min_age_days or add storage")
        return
    for d in chosen:
        d.reasons = [f"max_bytes: oldest over the {size(cap)} cap (was kept by {', '.join(d.reasons)})"]
        d.keep = False
    plan.kept_bytes -= freed
