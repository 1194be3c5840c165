"""When will restoring a database take longer than its RTO? Restore time against size, size against time.

Pure functions. Two least-squares lines per database:

- recovery time against the bytes restored, from the successful measured
  restores and drills (``duration = a + b * bytes``): the fixed cost of a
  restore and its cost per byte;
- the database's size against time, from its snapshots (``bytes = c + g * t``):
  its growth rate.

Together they give the recovery time as a function of time; the forecast is
the day that line crosses the database's ``rto_minutes``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from core.format import duration, size

DAY = 86_400.0
HORIZON_DAYS = 5 * 365  # "not within the next 5 years" beyond this
MIN_RESTORES = 3
MIN_SPAN_DAYS = 1  # a growth rate from snapshots minutes apart would extrapolate noise

Status = str  # "needs-restores", "needs-growth", "over", "date", "not-within"


@dataclass(frozen=True)
class Measured:
    """One successful measured restore or drill: when, how long, how many bytes it restored."""

    at: float
    seconds: float
    nbytes: int


@dataclass(frozen=True)
class Forecast:
    """One database's recovery-time forecast and the fits behind it."""

    db: str
    rto_s: float
    restores: int  # measured restores the fit used
    fixed_s: float | None  # a: the fitted recovery time of an empty database
    seconds_per_gib: float | None  # b, per GiB
    growth_bytes_per_day: float | None  # g
    size_now: int | None  # the size line at now
    recovery_now_s: float | None  # the recovery time the lines give for now
    status: Status
    crosses_at: float | None  # epoch seconds, when status is "date"
    line: str

    @property
    def crossing_date(self) -> str | None:
        """The crossing day (UTC, YYYY-MM-DD)."""
        return None if self.crosses_at is None else datetime.fromtimestamp(self.crosses_at, UTC).strftime("%Y-%m-%d")

    def to_json(self) -> dict[str, object]:
        return {"db": self.db, "rto_s": self.rto_s, "restores": self.restores, "fixed_s": self.fixed_s,
                "seconds_per_gib": self.seconds_per_gib, "growth_bytes_per_day": self.growth_bytes_per_day,
                "size_now": self.size_now, "recovery_now_s": self.recovery_now_s, "status": self.status,
                "crosses_at": self.crosses_at, "crossing_date": self.crossing_date, "line": self.line}


def fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares line ``y = intercept + slope * x``; None when the xs do not vary."""
    if len(xs) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope


def forecast(db: str, restores: Sequence[Measured], sizes: Sequence[tuple[float, int]], rto_s: float,
             now: float) -> Forecast:
    """The day the recovery time crosses ``rto_s`` at the current growth rate (``sizes``: (time, bytes)).

    Needs at least 3 measured restores. When they all restored the same
    number of bytes, or the fitted time falls with size (noise larger than
    the trend), recovery time is taken as proportional to size. A size
    series of fewer than 2 snapshots (or all at one moment) means no growth
    is known: the size is the newest one's, and it is taken as not growing;
    snapshots spanning less than a day give "needs-growth" (no date).
    "over" when the lines give a recovery time at or past the RTO today.
    """
    pts = [r for r in restores if r.nbytes > 0]
    n = len(pts)
    rto_text = duration(rto_s)
    if n < MIN_RESTORES:
        return Forecast(db, rto_s, n, None, None, None, None, None, "needs-restores", None,
                        f"{db}: forecast needs at least {MIN_RESTORES} measured restores (has {n})")
    line = fit([float(r.nbytes) for r in pts], [r.seconds for r in pts])
    if line is None or line[1] <= 0:
        # No size dependence measurable (one size, or noise larger than the trend): take the time as
        # proportional to size, the cautious reading.
        a, b = 0.0, sum(r.seconds for r in pts) / sum(r.nbytes for r in pts)
    else:
        a, b = line
    ordered = sorted(sizes)
    span = ordered[-1][0] - ordered[0][0] if ordered else 0.0
    growth = fit([(t - now) / DAY for t, _ in ordered], [float(s) for _, s in ordered])
    short = growth is not None and span < MIN_SPAN_DAYS * DAY
    if growth is None or short:
        c, g = float(ordered[-1][1]) if ordered else float(pts[-1].nbytes), 0.0
    else:
        c, g = growth
    now_s = a + b * c
    facts = (db, rto_s, n, a, b * 2**30, g, int(round(c)), now_s)
    if now_s >= rto_s:
        return Forecast(*facts, "over", None,
                        f"{db}: already over the RTO: a restore of {size(c)} takes about {duration(now_s)} "
                        f"(RTO {rto_text})")
    if short:
        return Forecast(*facts, "needs-growth", None,
                        f"{db}: a restore takes about {duration(now_s)} now ({duration(b * 2**30)}/GiB); the growth "
                        f"rate needs snapshots spanning at least {MIN_SPAN_DAYS} day (these span {duration(span)})")
    if g <= 0:
        return Forecast(*facts, "not-within", None,
                        f"{db}: RTO {rto_text} not reached within the next 5 years (the database is not growing; "
                        f"a restore takes about {duration(now_s)})")
    days = ((rto_s - a) / b - c) / g
    if days > HORIZON_DAYS:
        return Forecast(*facts, "not-within", None,
                        f"{db}: RTO {rto_text} not reached within the next 5 years (growing {size(g)} a day, "
                        f"a restore takes about {duration(now_s)})")
    at = now + days * DAY
    when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")
    return Forecast(*facts, "date", at,
                    f"{db}: recovery time reaches the RTO of {rto_text} on {when} (in {days:.0f} days; growing "
                    f"{size(g)}/day, restore {duration(now_s)} now, {duration(b * 2**30)}/GiB)")
