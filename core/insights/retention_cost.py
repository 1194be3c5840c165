"""What retention costs in repository bytes, per database, and what a smaller rule would save.

Pure functions over a database's snapshots and its ``retention:`` rules
(the same :func:`core.retention.policy.plan_retention` that ``backstop forget``
applies, so "kept" means what forget would keep today).

The bytes are an estimate from what the catalog records per snapshot: its
``size_bytes`` (the whole database as backed up, before compression) and its
``stored_bytes`` (the packs that backup added to the repository). The
chunk-level truth needs every manifest; this needs none. The model, per kind
(logical and physical snapshots share no chunks), snapshots oldest first:

- ``r`` = the highest stored/size ratio of the series: what the first backup
  of a database, which adds everything, stores per byte of database;
- a snapshot's whole content takes ``C_i = r * size_i`` in the repository;
- the repository bytes a set of kept snapshots ``k_1 < ... < k_m`` needs is
  ``C_k1 + sum_j min(N(k_j-1, k_j], C_kj)``, where ``N(a, b]`` is the sum of
  ``stored_bytes`` of the snapshots after ``a`` up to ``b``: what changed
  between two kept snapshots, assuming a change is not changed again before
  the next kept snapshot (so the saving below may be understated, never
  overstated by that assumption).

The cost of a rule is that figure for the snapshots it keeps; the saving of a
smaller rule is the difference: the bytes only the snapshots it would drop
hold, i.e. what ``forget`` and ``prune`` would free. Append-only data (each
backup only adds) frees nothing, however many snapshots go: that is right,
since every later snapshot still holds the older rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from core.config import RetentionConfig
from core.format import size
from core.retention.policy import RetainedFacts, plan_retention

# The keep_* rules, finest first, with the plural an operator says.
RULES = (("keep_last", "last"), ("keep_hourly", "hourlies"), ("keep_daily", "dailies"), ("keep_weekly", "weeklies"),
         ("keep_monthly", "monthlies"), ("keep_yearly", "yearlies"))


@dataclass(frozen=True)
class SnapshotSize:
    """One snapshot's sizes as the catalog records them."""

    snapshot_id: str
    kind: str
    time: datetime  # finished_at, timezone-aware
    size_bytes: int
    stored_bytes: int
    status: str = "restorable"


@dataclass(frozen=True)
class KindSizes:
    """Full versus incremental sizes of one kind of snapshot of a database."""

    kind: str
    snapshots: int
    full_bytes: int  # the newest snapshot's size_bytes: what one full copy is
    first_stored: int  # what the oldest snapshot held added
    mean_added: int  # mean stored_bytes of the later snapshots: what one more backup adds
    stored_bytes: int  # sum of stored_bytes

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "snapshots": self.snapshots, "full_bytes": self.full_bytes,
                "first_stored_bytes": self.first_stored, "mean_added_bytes": self.mean_added,
                "stored_bytes": self.stored_bytes}

    def line(self) -> str:
        """One line: full size against what each backup adds."""
        share = f" ({self.mean_added / self.full_bytes:.1%} of full)" if self.full_bytes else ""
        return (f"{self.kind}: {self.snapshots} snapshot(s), full {size(self.full_bytes)}, each later backup adds "
                f"{size(self.mean_added)}{share}; {size(self.stored_bytes)} stored in all")


@dataclass(frozen=True)
class RetentionCost:
    """What one database's retention costs and what a smaller rule would save (bytes, estimated as above)."""

    db: str
    rule: str  # the rule described: "14 dailies", "every snapshot" (no rules)
    kept: int  # snapshots the current rules keep
    cost_bytes: int
    smaller_rule: str | None  # "7", or None when no smaller rule keeps fewer snapshots
    smaller_kept: int
    saving_bytes: int
    kinds: tuple[KindSizes, ...]
    advice: str

    def to_json(self) -> dict[str, object]:
        return {"db": self.db, "rule": self.rule, "kept": self.kept, "cost_bytes": self.cost_bytes,
                "smaller_rule": self.smaller_rule, "smaller_kept": self.smaller_kept,
                "saving_bytes": self.saving_bytes, "sizes": [k.to_json() for k in self.kinds], "advice": self.advice}


def repository_bytes(series: Sequence[SnapshotSize], kept: set[str]) -> int:
    """Estimated repository bytes the ``kept`` snapshots of one kind's series need (model: module docstring)."""
    ordered = sorted(series, key=lambda s: s.time)
    ratio = max((s.stored_bytes / s.size_bytes for s in ordered if s.size_bytes > 0), default=0.0)
    total = 0.0
    changed = 0
    first = True
    for s in ordered:
        changed += s.stored_bytes
        if s.snapshot_id not in kept:
            continue
        whole = ratio * s.size_bytes
        total += whole if first else min(changed, whole)
        first = False
        changed = 0
    return int(round(total))


def _cost(snaps: Sequence[SnapshotSize], kept: set[str]) -> int:
    return sum(repository_bytes([s for s in snaps if s.kind == kind], kept) for kind in {s.kind for s in snaps})


def _kind_sizes(snaps: Sequence[SnapshotSize]) -> tuple[KindSizes, ...]:
    out = []
    for kind in sorted({s.kind for s in snaps}):
        ordered = sorted((s for s in snaps if s.kind == kind), key=lambda s: s.time)
        later = [s.stored_bytes for s in ordered[1:]]
        out.append(KindSizes(kind, len(ordered), ordered[-1].size_bytes, ordered[0].stored_bytes,
                             int(round(sum(later) / len(later))) if later else 0,
                             sum(s.stored_bytes for s in ordered)))
    return tuple(out)


def _kept(snaps: Sequence[SnapshotSize], rules: RetentionConfig, now: datetime) -> set[str]:
    facts = [RetainedFacts(s.snapshot_id, s.kind, s.time, s.stored_bytes, s.status) for s in snaps]
    return set(plan_retention(facts, rules, now).keep)


def _main_rule(snaps: Sequence[SnapshotSize], rules: RetentionConfig, now: datetime) -> tuple[str, str] | None:
    """The keep_* rule that keeps the most snapshots on its own (key, plural), or None when no rule is set."""
    best: tuple[int, int, str, str] | None = None
    for i, (key, word) in enumerate(RULES):
        if getattr(rules, key) == 0:
            continue
        alone = RetentionConfig(**{key: getattr(rules, key)})
        n = len(_kept(snaps, alone, now))
        if best is None or (n, -i) > (best[0], best[1]):
            best = (n, -i, key, word)
    return None if best is None else (best[2], best[3])


def _describe(key: str, word: str, count: int) -> str:
    if key == "keep_last":
        return "every snapshot" if count < 0 else f"the last {count}"
    return f"every {word[:-3]}y" if count < 0 and word.endswith("ies") else f"{count} {word}"


def retention_cost(db: str, snaps: Sequence[SnapshotSize], rules: RetentionConfig | None,
                   now: datetime) -> RetentionCost:
    """The cost of the database's current rules and the saving of halving its main rule, as one sentence.

    The main rule is the keep_* rule that keeps the most snapshots on its
    own; the smaller rule halves its count (an unlimited count becomes half
    the periods it keeps now). Without rules everything is kept, and the
    smaller rule is keeping the newest half (``keep_last``).
    """
    kinds = _kind_sizes(snaps)
    if not snaps:
        return RetentionCost(db, "no snapshots", 0, 0, None, 0, 0, kinds, f"{db}: no snapshots yet")
    current = rules or RetentionConfig()
    kept = _kept(snaps, current, now)
    cost = _cost(snaps, kept)
    main = _main_rule(snaps, current, now)
    if main is None:
        key, word, count = "keep_last", "last", -1
        rule = "every snapshot"
    else:
        key, word = main
        count = getattr(current, key)
        rule = _describe(key, word, count)
    if count < 0:
        count = len(_kept(snaps, RetentionConfig(**{key: -1}), now))
    smaller = count // 2
    smaller_kept, saving, smaller_rule = len(kept), 0, None
    if smaller >= 1:
        fewer = _kept(snaps, replace_rule(current, key, smaller), now)
        if len(fewer) < len(kept):
            smaller_rule, smaller_kept, saving = str(smaller), len(fewer), cost - _cost(snaps, fewer)
    head = f"{db}: keeping {rule} ({len(kept)} snapshot(s)) costs {size(cost)}"
    if smaller_rule is None:
        advice = f"{head}; no smaller {word} rule would keep fewer"
    else:
        noun = "the newest" if main is None else ""
        advice = f"{head}; {noun + ' ' if noun else ''}{smaller_rule} would save {size(saving)}"
    return RetentionCost(db, rule, len(kept), cost, smaller_rule, smaller_kept, saving, kinds, advice)


def replace_rule(rules: RetentionConfig, key: str, count: int) -> RetentionConfig:
    """The rules with one keep_* count changed (the rest, floor and cap as they are)."""
    return RetentionConfig(**{**rules.model_dump(), key: count})
