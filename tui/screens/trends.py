"""5 Trends: restore times against the RTO and the forecast, backup durations, stored sizes and retention cost,
failures and their pattern."""

from __future__ import annotations

import statistics
from typing import ClassVar

from core.insights.digest import Insights
from core.insights.trends import Trends
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Sparkline, Static
from textual.worker import get_current_worker

from tui import format as fmt
from tui.host import ConsoleHost
from tui.screens.base import ConsoleScreen
from tui.widgets.charts import BarChart

WINDOWS = (30, 90, 7)
RESTORE_BARS = 8


class TrendsScreen(ConsoleScreen):
    """Charts drawn with text and sparklines (they read the same without colour)."""

    NUMBER = 5
    SCREEN_TITLE = "Trends"
    AUTO_FOCUS = "#trends-body"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("w", "window", "Window", id="trends.window"),
    ]

    def __init__(self, host: ConsoleHost) -> None:
        super().__init__(host)
        self.days = WINDOWS[0]

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="trends-body"):
            yield Static("Restore time (last restores; │ = RTO)", classes="section-title")
            yield BarChart(id="restore-chart")
            yield Static("", id="restore-forecast", classes="chart-note")
            yield Static("Backup duration", classes="section-title", id="backup-title")
            yield Sparkline([], id="backup-spark", classes="trend-spark")
            yield Static("", id="backup-note", classes="chart-note")
            yield Static("Stored per day: full snapshots", classes="section-title", id="full-title")
            yield Sparkline([], id="full-spark", classes="trend-spark")
            yield Static("Stored per day: incremental (WAL, when archiving lands)", classes="section-title",
                         id="incr-title")
            yield Sparkline([], id="incr-spark", classes="trend-spark")
            yield Static("", id="size-note", classes="chart-note")
            yield Static("Retention cost (estimated repository bytes)", classes="section-title")
            yield Static("", id="retention-cost", classes="chart-note")
            yield Static("Failed jobs by hour of day (UTC)", classes="section-title")
            yield Sparkline([], id="fail-spark", classes="trend-spark")
            yield Static("", id="fail-note", classes="chart-note")
            yield Static("", id="fail-pattern", classes="chart-note")

    def reload(self) -> None:
        self.load_trends()

    @work(thread=True, group="trends", exclusive=True, exit_on_error=False, description="trends: compute series")
    def load_trends(self) -> None:
        trends = self.engine.trends(self.now(), days=self.days)
        insights = self.engine.insights(self.now(), days=self.days)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show, trends, insights)

    def show(self, t: Trends, ins: Insights | None = None) -> None:
        """Draw every chart (``ins``: the forecast, retention cost and failure pattern lines)."""
        recent = t.restores.points[-RESTORE_BARS:]
        rows = [(f"{fmt.when(p.at)[:5]} {p.db}", p.duration_s,
                 fmt.duration(p.duration_s) + ("" if p.ok else " FAIL")) for p in recent]
        self.query_one("#restore-chart", BarChart).set_data(rows, t.restores.rto_s,
                                                            f"RTO {fmt.duration(t.restores.rto_s)}")
        forecast = [f"forecast: {f.line}" for f in ins.forecasts] if ins else []
        self.query_one("#restore-forecast", Static).update("\n".join(forecast) or t.restores.forecast)
        durations = [p.duration_s for p in t.backups]
        self.query_one("#backup-spark", Sparkline).data = durations or [0.0]
        self.query_one("#backup-title", Static).update(f"Backup duration ({len(durations)} backups, {self.days}d)")
        self.query_one("#backup-note", Static).update(
            f"last {fmt.duration(durations[-1])} · median {fmt.duration(statistics.median(durations))} · "
            f"max {fmt.duration(max(durations))}" if durations else "no backups in this window")
        full = [float(b.full_stored) for b in t.sizes]
        incr = [float(b.incremental_stored) for b in t.sizes]
        self.query_one("#full-spark", Sparkline).data = full or [0.0]
        self.query_one("#incr-spark", Sparkline).data = incr or [0.0]
        self.query_one("#full-title", Static).update(
            f"Stored per day: full snapshots ({fmt.size(sum(full))} in {self.days}d)")
        self.query_one("#incr-title", Static).update(
            f"Stored per day: incremental ({fmt.size(sum(incr))}; WAL when archiving lands)")
        logical = sum(b.logical_bytes for b in t.sizes)
        self.query_one("#size-note", Static).update(f"backed up {fmt.size(logical)} logical · {t.retention_advice}")
        self.query_one("#fail-spark", Sparkline).data = [float(x) for x in t.failures_by_hour]
        kinds = ", ".join(f"{k} {n}" for k, n in t.failures_by_kind) or "none"
        self.query_one("#fail-note", Static).update(f"failures by kind: {kinds}  (00h … 23h left to right)")
        if ins is not None:
            self.query_one("#retention-cost", Static).update(
                "\n".join(r.advice for r in ins.retention) or "no databases configured")
            f = ins.failures
            targets = ", ".join(f"{k} {n}" for k, n in f.by_target) or "none named"
            classes = ", ".join(f"{k} {n}" for k, n in f.by_class) or "none"
            pattern = f"pattern: {f.pattern}" if f.pattern else "no pattern stands out"
            self.query_one("#fail-pattern", Static).update(f"by target: {targets}\nby class: {classes}\n{pattern}")
        self.set_status(f"last {self.days} days · w changes the window")

    def action_window(self) -> None:
        """Cycle the time window (30, 90, 7 days)."""
        self.days = WINDOWS[(WINDOWS.index(self.days) + 1) % len(WINDOWS)]
        self.load_trends()
