"""Formatting for the console: sizes, durations, times (UTC), text progress bars.

Times are shown in UTC everywhere, labelled as such: operators on call in
different time zones read the same figures, and so do the snapshot tests.
"""

from __future__ import annotations

from datetime import datetime, timezone

_BAR_FULL, _BAR_EMPTY = "█", "░"


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
    """A short duration: 45s, 4m 12s, 1h 05m."""
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


def when(ts: float | None) -> str:
    """Epoch seconds as 'MM-DD HH:MM' (UTC)."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%m-%d %H:%M")


def when_full(ts: float | None) -> str:
    """Epoch seconds as 'YYYY-MM-DD HH:MM:SS UTC'."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_short(iso: str) -> str:
    """A catalog ISO time as 'YYYY-MM-DD HH:MM' (UTC)."""
    try:
        return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def iso_epoch(iso: str) -> float:
    """A catalog ISO time as epoch seconds."""
    return datetime.fromisoformat(iso).timestamp()


def ago(ts: float | None, now: float) -> str:
    """How long ago, for lists: '3m ago'."""
    if ts is None:
        return "-"
    return f"{duration(now - ts)} ago"


def bar(done: float, total: float | None, width: int = 10) -> str:
    """A text progress bar with percentage; readable without colour."""
    if not total or total <= 0:
        return "·" * width + "   ?%"
    frac = min(1.0, max(0.0, done / total))
    filled = int(round(frac * width))
    return _BAR_FULL * filled + _BAR_EMPTY * (width - filled) + f" {frac * 100:3.0f}%"


def eta(done: float, total: float | None, rate: float) -> str:
    """Time left at the current rate."""
    if not total or rate <= 0 or done >= total:
        return "-"
    return duration((total - done) / rate)


def clip(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` cells with an ellipsis."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"
