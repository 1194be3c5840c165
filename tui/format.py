"""Formatting for the console: sizes, durations, times (UTC), text progress bars.

Times are shown in UTC everywhere, labelled as such: operators on call in
different time zones read the same figures, and so do the snapshot tests.
"""

from __future__ import annotations

from datetime import UTC, datetime

from core import format as core_format

_BAR_FULL, _BAR_EMPTY = "█", "░"


# One helper each for sizes and durations, shared with the CLI (core/format.py).
size = core_format.size
duration = core_format.duration


def when(ts: float | None) -> str:
    """Epoch seconds as 'MM-DD HH:MM' (UTC)."""
    return core_format.utc(ts, "%m-%d %H:%M")


def when_full(ts: float | None) -> str:
    """Epoch seconds as 'YYYY-MM-DD HH:MM:SS UTC'."""
    return core_format.utc(ts, "%Y-%m-%d %H:%M:%S UTC")


def iso_short(iso: str) -> str:
    """A catalog ISO time as 'YYYY-MM-DD HH:MM' (UTC)."""
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M")
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
