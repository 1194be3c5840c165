"""Which target a restore reads each object from, and what each target served.

Targets are tried by configured ``priority`` (lower first), then by recent
health (failed calls in the last hour, from the catalog's per-target health
windows: fewer first), then in config order; a restore plan's target goes
first. A target
that fails a read (unreachable, or a damaged copy) is demoted for the rest of
the restore: later reads go to the others and come back to it only when every
other copy fails, so a stopped server costs one timeout, not one per object.
The shares say which target served how much.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from core.config import LocalTargetConfig, S3TargetConfig
from core.storage.base import Storage
from core.storage.health import ERROR_CLASSES, HealthWindow

# The priority of a target not in the config (the config's own default; lower is preferred).
DEFAULT_PRIORITY = 100
# How far back a target's failed calls count against it when ordering reads.
RECENT_S = 3600.0


def recent_errors(windows: Sequence[HealthWindow]) -> dict[str, int]:
    """Failed calls per target in the catalog's health windows (core/storage/metered.py)."""
    out: dict[str, int] = {}
    for w in windows:
        out[w.target] = out.get(w.target, 0) + sum(n for k, n in w.outcomes.items() if k in ERROR_CLASSES)
    return out


@dataclass
class TargetShare:
    """What one target served to a restore, and its failures."""

    target: str
    bytes: int = 0
    objects: int = 0
    failures: int = 0
    failed: str | None = None  # the first failure's reason

    def to_json(self) -> dict[str, object]:
        return {"target": self.target, "bytes": self.bytes, "objects": self.objects, "failures": self.failures,
                "failed": self.failed}


@dataclass
class ReadSources:
    """The read order over a repository's targets, demotion on failure, and per-target accounting."""

    storages: list[Storage]
    priority: Mapping[str, int] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)  # recent errors per target (health)
    first: str | None = None  # read first whatever its priority (a restore plan's choice)
    # Per target, packs to read elsewhere first: they are in a class that must be thawed there (tiers.py).
    frozen: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pos = {st.name: i for i, st in enumerate(self.storages)}
        self.storages = sorted(self.storages, key=lambda st: (
            st.name != self.first if self.first else False, self.priority.get(st.name, DEFAULT_PRIORITY),
            self.errors.get(st.name, 0), pos[st.name]))
        self.shares = {st.name: TargetShare(st.name) for st in self.storages}
        self._demoted: list[str] = []  # in the order they failed

    @classmethod
    def for_targets(cls, storages: Sequence[Storage], targets: Sequence[LocalTargetConfig | S3TargetConfig],
                    first: str | None = None, health: Sequence[HealthWindow] = ()) -> ReadSources:
        """From the configured targets' ``priority`` (lower is preferred) and recent ``health`` windows."""
        return cls(list(storages), {t.name: t.priority for t in targets}, recent_errors(health), first)

    def order(self, pack_id: str | None = None) -> list[Storage]:
        """Targets to try for the next object: healthy ones by rank, then the demoted ones as a last resort.

        Targets holding ``pack_id`` frozen (a class that needs a thaw) come after every other one.
        """
        healthy = [st for st in self.storages if st.name not in self._demoted]
        by_name = {st.name: st for st in self.storages}
        out = healthy + [by_name[n] for n in self._demoted]
        if pack_id is not None and self.frozen:
            out.sort(key=lambda st: pack_id in self.frozen.get(st.name, ()))
        return out

    def served(self, st: Storage, nbytes: int) -> None:
        share = self.shares.setdefault(st.name, TargetShare(st.name))
        share.bytes += nbytes
        share.objects += 1

    def failed(self, st: Storage, reason: str) -> None:
        """A read from ``st`` failed: count it and demote the target for the rest of the restore."""
        share = self.shares.setdefault(st.name, TargetShare(st.name))
        share.failures += 1
        if share.failed is None:
            share.failed = reason
        if st.name not in self._demoted:
            self._demoted.append(st.name)

    def report(self) -> list[TargetShare]:
        """Targets that served or failed something, in read order."""
        return [s for s in (self.shares[st.name] for st in self.storages) if s.objects or s.failures]

    def summary(self) -> str:
        """One line: ``read 80% from offsite-eu, 20% from local1 after offsite-eu failed: <reason>``."""
        return summarise(self.report())


def summarise(shares: Sequence[TargetShare]) -> str:
    """The one-line account of ``shares`` (also for a result read back from JSON)."""
    total = sum(s.bytes for s in shares)
    if not total:
        return "read nothing from the targets"
    parts = [f"{_percent(s.bytes, total)} from {s.target}" for s in shares if s.bytes]
    failed = [f"{s.target} failed: {s.failed}" for s in shares if s.failed]
    return "read " + ", ".join(parts) + (" after " + "; ".join(failed) if failed else "")


def _percent(part: int, total: int) -> str:
    pct = 100 * part / total
    return "<1%" if 0 < pct < 1 else ">99%" if 99 < pct < 100 else f"{round(pct)}%"
