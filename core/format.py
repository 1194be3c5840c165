"""How Backstop writes times, sizes and durations: one helper each, for the CLI, the console and messages.

Times are UTC everywhere and say so: operators on call in different time
zones read the same figures.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now_iso() -> str:
    """The current time as stored in manifests, locks and the catalog: ISO 8601, seconds, UTC offset."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def iso_at(ts: float) -> str:
    """Epoch seconds in the stored ISO form."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def utc(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """Epoch seconds for people, in UTC (``fmt`` picks the fields; '-' when unknown)."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime(fmt)


def size(n: float | None) -> str:
    """Bytes for humans: 512 B, 3.4 MiB."""
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def duration(seconds: float | None) -> str:
    """A short duration for operators: 45s, 4m 12s, 1h 05m, 2d 03h."""
    if seconds is None:
        return "?"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s % 3600) // 60:02d}m"
    return f"{s // 86400}d {(s % 86400) // 3600:02d}h"


def config_duration(seconds: float) -> str:
    """A duration as the config file writes it (90d, 24h, 5m, 30s)."""
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span and seconds % span == 0:
            return f"{int(seconds // span)}{unit}"
    return f"{seconds:g}s"
