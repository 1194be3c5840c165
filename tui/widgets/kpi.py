"""A KPI card: title, value, one line of detail and a sparkline of its trend."""

from __future__ import annotations

from core.insights.kpis import Kpi
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Sparkline, Static

# Status words make the state readable without colour (NO_COLOR, screen readers).
STATUS_WORD = {"ok": "OK", "warn": "WATCH", "bad": "ALERT", "none": "NO DATA"}


class KpiCard(Vertical):
    """One of the dashboard's three key figures."""

    def __init__(self, key: str, title: str) -> None:
        super().__init__(id=f"kpi-{key}", classes="kpi")
        self.border_title = title
        self._title = title

    def compose(self) -> ComposeResult:
        yield Static("…", classes="kpi-value")
        yield Static("", classes="kpi-detail")
        yield Sparkline([], classes="kpi-trend")

    def show(self, kpi: Kpi) -> None:
        """Display a computed KPI."""
        self.set_class(kpi.status == "ok", "-ok")
        self.set_class(kpi.status == "warn", "-warn")
        self.set_class(kpi.status == "bad", "-bad")
        self.query_one(".kpi-value", Static).update(Content(f"{kpi.display} · {STATUS_WORD[kpi.status]}"))
        self.query_one(".kpi-detail", Static).update(Content(kpi.detail))
        self.query_one(".kpi-trend", Sparkline).data = list(kpi.trend) or [0.0]
        self.border_subtitle = "14-day trend"
