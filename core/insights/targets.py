"""Per-target health as `backstop targets` and the dashboard show it: one summary per configured target.

Pure functions over the catalog's health rows (core/storage/metered.py
writes them): latency percentiles and error counts over a window (24 h),
bytes moved, bytes stored as of the newest listing, newest successful write
and read, newest error; and the alerts a target's health raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from core.config import BackstopConfig, LocalTargetConfig
from core.format import utc
from core.insights.alerts import Alert
from core.storage.health import ERROR_CLASSES, HealthWindow, TargetHealthState, percentile

DAY = 86_400.0
HOUR = 3_600.0
# A write this long before the newest backup (or older) means the target missed it.
WRITE_GRACE_S = 600.0


@dataclass
class TargetHealth:
    """One configured target's health over the last ``window_s`` seconds."""

    name: str
    type: str
    where: str
    region: str | None
    priority: int | None
    role: str | None
    window_s: float
    calls: int = 0
    # Seconds; None when the target was not called in the window.
    p50_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    errors: dict[str, int] = field(default_factory=dict)  # class -> count, every class present
    errors_last_hour: int = 0
    not_found: int = 0  # absent objects asked for (answers, not errors)
    bytes_written: int = 0
    bytes_read: int = 0
    calls_by_kind: dict[str, int] = field(default_factory=dict)
    stored_bytes: int | None = None
    stored_objects: int | None = None
    stored_measured_at: float | None = None
    last_write_ok_at: float | None = None
    last_read_ok_at: float | None = None
    last_error_class: str | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _where(cfg: object) -> str:
    if isinstance(cfg, LocalTargetConfig):
        return str(cfg.path)
    endpoint = getattr(cfg, "endpoint_url", None) or "aws"
    prefix = getattr(cfg, "prefix", "")
    return f"s3://{getattr(cfg, 'bucket', '?')}/{prefix}".rstrip("/") + f" at {endpoint}"


def summarise(config: BackstopConfig, windows: Sequence[HealthWindow], states: Mapping[str, TargetHealthState],
              now: float, window_s: float = DAY) -> list[TargetHealth]:
    """One summary per configured target, in config order, from the rows of the last ``window_s`` seconds."""
    out: list[TargetHealth] = []
    for cfg in config.targets:
        h = TargetHealth(cfg.name, cfg.type, _where(cfg), getattr(cfg, "region", None),
                         getattr(cfg, "priority", None), getattr(cfg, "role", None), window_s,
                         errors=dict.fromkeys(ERROR_CLASSES, 0))
        hist: dict[int, int] = {}
        for w in windows:
            if w.target != cfg.name or w.end < now - window_s:
                continue
            h.calls += w.calls
            h.calls_by_kind[w.kind] = h.calls_by_kind.get(w.kind, 0) + w.calls
            h.bytes_written += w.bytes_written
            h.bytes_read += w.bytes_read
            h.not_found += w.outcomes.get("not_found", 0)
            for cls in ERROR_CLASSES:
                n = w.outcomes.get(cls, 0)
                h.errors[cls] += n
                if w.end >= now - HOUR:
                    h.errors_last_hour += n
            for b, n in w.hist.items():
                hist[b] = hist.get(b, 0) + n
        h.p50_s, h.p95_s, h.p99_s = (percentile(hist, q) for q in (50, 95, 99))
        st = states.get(cfg.name)
        if st is not None:
            h.stored_bytes, h.stored_objects, h.stored_measured_at = (st.stored_bytes, st.stored_objects,
                                                                      st.stored_measured_at)
            h.last_write_ok_at, h.last_read_ok_at = st.last_write_ok_at, st.last_read_ok_at
            h.last_error_class, h.last_error, h.last_error_at = st.last_error_class, st.last_error, st.last_error_at
        out.append(h)
    return out


def target_health_alerts(health: Sequence[TargetHealth], now: float, newest_backup_at: float | None,
                         known: Sequence[str] = ()) -> list[Alert]:
    """Warnings for targets with errors in the last hour, or no successful write since the newest backup.

    ``known``: targets the catalog has health marks for (one never measured, e.g. just configured or from
    before health was recorded, raises no write alert).
    """
    out: list[Alert] = []
    for h in health:
        if h.errors_last_hour:
            classes = ", ".join(f"{cls} {n}" for cls, n in h.errors.items() if n)
            last = f"; last: {h.last_error.splitlines()[0]}" if h.last_error else ""
            out.append(Alert("warning", "target-errors",
                             f"target {h.name} had {h.errors_last_hour} failed call(s) in the last hour ({classes})"
                             f"{last}; see `backstop targets`", h.last_error_at))
        if h.name in known and newest_backup_at is not None and (
                h.last_write_ok_at is None or h.last_write_ok_at < newest_backup_at - WRITE_GRACE_S):
            since = "ever" if h.last_write_ok_at is None else f"since {utc(h.last_write_ok_at, '%m-%d %H:%M UTC')}"
            out.append(Alert("warning", "target-no-write",
                             f"target {h.name} has had no successful write {since}, though a backup finished at "
                             f"{utc(newest_backup_at, '%m-%d %H:%M UTC')}; it misses copies: check it with "
                             "`backstop targets`", h.last_write_ok_at))
    return out
