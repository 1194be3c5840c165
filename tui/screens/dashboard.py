"""1 Dashboard: the three KPIs with their trends, running jobs, alerts."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import replace
from typing import ClassVar

from core.engine import RecoveryPointAge
from core.errors import BackstopError
from core.insights.alerts import Alert, recovery_point_alert
from core.insights.overview import Dashboard
from core.records import JobRecord
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import ProgressBar, Static
from textual.worker import get_current_worker

from tui import format as fmt
from tui.bridge import JobChanged, JobProgressed
from tui.host import ConsoleHost
from tui.screens.base import ConsoleScreen
from tui.screens.modals import DefinitionsScreen
from tui.widgets.kpi import KpiCard
from tui.widgets.virtual_table import Column, ListSource, VirtualTable

LEVEL_WORD = {"critical": "CRIT", "warning": "WARN", "info": "INFO"}
LEVEL_TONE = {"critical": "bad", "warning": "warn", "info": "dim"}
LEVEL_ORDER = {"critical": 0, "warning": 1, "info": 2}
FULL_RELOAD_EVERY_S = 5.0  # KPIs and alerts; running jobs refresh on every catalog change
# WAL pushes do not write the catalog, so the recovery-point age is re-read on a timer too.
RECOVERY_POINT_EVERY_S = 30.0


def job_line(j: JobRecord, width: int = 12) -> str:
    """One running job as a line of text with a text progress bar."""
    what = f"{j.kind} {j.db or ''}".strip()
    return (f"{fmt.clip(what, 20):<20} {fmt.clip(j.phase or 'starting', 12):<12} "
            f"{fmt.bar(j.bytes_done, j.bytes_total, width)} {fmt.size(j.bytes_done):>9} "
            f"{fmt.size(j.rate)}/s  eta {fmt.eta(j.bytes_done, j.bytes_total, j.rate)}")


class DashboardScreen(ConsoleScreen):
    """KPIs, running jobs and alerts at a glance."""

    NUMBER = 1
    SCREEN_TITLE = "Dashboard"
    AUTO_FOCUS = "#alerts"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "definitions", "KPI definitions", id="dashboard.definitions"),
    ]

    def __init__(self, host: ConsoleHost, first: Future[Dashboard] | None = None) -> None:
        """``first``: a dashboard already being computed (the CLI starts it before Textual loads)."""
        super().__init__(host)
        self.first = first
        self.data: Dashboard | None = None
        self.running: list[JobRecord] = []
        self._last_full = -1e9
        self.painted_at: float | None = None  # monotonic time of the first full paint (benchmark)
        self.recovery: RecoveryPointAge | None = None
        self.recovery_alert: Alert | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="kpis"):
            yield KpiCard("completion", "Backup Completion")
            yield KpiCard("integrity", "Integrity Checks")
            yield KpiCard("recovery", "Recovery Time")
        yield Static("Recovery point: reading the WAL archive …", id="recovery-point")
        yield Static("Running jobs", classes="section-title", id="running-title")
        with Vertical(id="running"):
            yield ProgressBar(total=100, show_eta=False, id="focused-progress")
            yield Static("no jobs running", id="running-lines")
        yield Static("Alerts", classes="section-title", id="alerts-title")
        yield VirtualTable([Column("LEVEL", 5), Column("ALERT", 200)], empty_text="No alerts: all clear.",
                           id="alerts")

    def on_mount(self) -> None:
        self.set_interval(RECOVERY_POINT_EVERY_S, self.load_recovery_point)

    def reload(self) -> None:
        self._last_full = time.monotonic()
        self.load_dashboard()
        self.load_recovery_point()

    @work(group="dashboard-recovery-point", exclusive=True, exit_on_error=False,
          description="dashboard: the recovery-point age from the WAL archive's listing")
    async def load_recovery_point(self) -> None:
        """How old the newest recoverable moment is (lists the targets: async, apart from the catalog reads)."""
        try:
            point = await self.engine.recovery_point(self.now())
        except BackstopError as exc:
            self.query_one("#recovery-point", Static).update(f"Recovery point: unknown ({exc})")
            return
        if not get_current_worker().is_cancelled:
            self.show_recovery_point(point)

    def show_recovery_point(self, point: RecoveryPointAge) -> None:
        """The age line, and the alert when it is past the configured limit."""
        self.recovery = point
        limit = self.engine.config.alerts.recovery_point_age.total_seconds()
        self.recovery_alert = recovery_point_alert(point.age_s, limit, point.detail, self.now())
        age = "none" if point.age_s is None else f"{fmt.duration(point.age_s)} old"
        # One line at 80 columns; the word ALERT says it without colour (NO_COLOR).
        state = f", ALERT > {limit / 60:g} min" if self.recovery_alert else f" (limit {limit / 60:g} min)"
        self.query_one("#recovery-point", Static).update(f"Recovery point: {age}{state} · {point.detail}")
        self.query_one("#recovery-point", Static).set_class(self.recovery_alert is not None, "alerting")
        self._show_alerts()

    def catalog_changed(self) -> None:
        if time.monotonic() - self._last_full >= FULL_RELOAD_EVERY_S:
            self.reload()
        else:
            self.load_running()

    @work(thread=True, group="dashboard", exclusive=True, exit_on_error=False,
          description="dashboard: read KPIs, alerts and running jobs from the catalog")
    def load_dashboard(self) -> None:
        first, self.first = self.first, None
        data = first.result() if first is not None else self.engine.dashboard(self.now())
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show, data)

    @work(thread=True, group="dashboard-running", exclusive=True, exit_on_error=False,
          description="dashboard: read running jobs from the catalog")
    def load_running(self) -> None:
        jobs = self.queries.running_jobs()
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show_running, jobs)

    def show(self, data: Dashboard) -> None:
        """Display a freshly computed dashboard."""
        self.data = data
        for kpi in data.kpis:
            self.query_one(f"#kpi-{kpi.key}", KpiCard).show(kpi)
        self._show_alerts()
        self.set_status(f"as of {fmt.when_full(data.now)}")
        self.show_running(list(data.running))
        if self.painted_at is None:
            self.painted_at = time.monotonic()

    def alerts(self) -> list[Alert]:
        """The catalog's alerts and the recovery-point one, most urgent first."""
        alerts = list(self.data.alerts) if self.data is not None else []
        if self.recovery_alert is not None:
            alerts.insert(0, self.recovery_alert)  # critical: it leads (sorted stably by level below)
        return sorted(alerts, key=lambda a: LEVEL_ORDER[a.level])

    def _show_alerts(self) -> None:
        alerts = self.alerts()
        rows = [((LEVEL_WORD[a.level], LEVEL_TONE[a.level]), a.message) for a in alerts]
        self.query_one("#alerts", VirtualTable).set_source(
            ListSource(rows, [f"{a.kind}:{i}" for i, a in enumerate(alerts)]))
        self.query_one("#alerts-title", Static).update(f"Alerts ({len(alerts)})")

    def show_running(self, jobs: list[JobRecord]) -> None:
        """Text lines for every running job; the real progress bar follows the first one."""
        self.running = jobs
        lines = self.query_one("#running-lines", Static)
        bar = self.query_one("#focused-progress", ProgressBar)
        self.query_one("#running-title", Static).update(f"Running jobs ({len(jobs)})")
        if not jobs:
            lines.update("no jobs running")
            bar.display = False
            return
        bar.display = True
        first = jobs[0]
        bar.update(total=first.bytes_total or None, progress=first.bytes_done)
        lines.update("\n".join(job_line(j) for j in jobs[:4])
                     + (f"\n… and {len(jobs) - 4} more (screen 2)" if len(jobs) > 4 else ""))

    def job_progress(self, msg: JobProgressed) -> None:
        # Fast path for this console's own jobs: patch the row without a catalog read.
        for i, j in enumerate(self.running):
            if j.id == msg.job_id:
                self.running[i] = replace(j, phase=msg.phase, bytes_done=msg.done, bytes_total=msg.total,
                                          rate=msg.rate)
                self.show_running(self.running)
                return

    def job_changed(self, msg: JobChanged) -> None:
        if msg.event in ("started", "finished"):
            self.load_running()

    def action_definitions(self) -> None:
        """Show what each KPI means (one key away, as operators ask at 3 a.m.)."""
        if self.data is not None:
            self.app.push_screen(DefinitionsScreen(self.data.kpis))
