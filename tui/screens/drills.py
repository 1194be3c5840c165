"""7 Drills: drill reports (and older test restores), recovery time against the RTO, and the target rotation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.insights.drill_history import DrillEntry, TargetProof, drill_entries, rotation
from core.insights.overview import default_rto, rto_targets
from core.planner import Incident
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static
from textual.worker import get_current_worker

from tui import format as fmt
from tui.messages import RestoreRequested
from tui.screens.base import ConsoleScreen
from tui.widgets.charts import BarChart
from tui.widgets.filter_bar import FilterBar
from tui.widgets.virtual_table import Column, ListSource, VirtualTable

COLUMNS = [Column("DRILL", 26), Column("VERDICT", 7), Column("DATABASE", 10), Column("KIND", 8),
           Column("TARGET", 9), Column("RECOVERY/RTO", 16), Column("SCHEDULED BY", 18), Column("WHEN (UTC)", 11),
           Column("NOTE", 60)]
EMPTY = ("No drills recorded yet. `backstop drill run --db NAME` runs one, a drill schedule runs them; "
         "n here opens the restore wizard's test restore.")
CHART_BARS = 6


@dataclass(frozen=True)
class DrillView:
    """What the worker read, ready to draw."""

    entries: list[DrillEntry]
    proofs: list[TargetProof]


class DrillsScreen(ConsoleScreen):
    """Drills that ran, newest first, with their recovery times and which target each proved."""

    NUMBER = 7
    SCREEN_TITLE = "Drills"
    AUTO_FOCUS = "#drills"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", id="drills.filter"),
        Binding("n", "new_drill", "New drill", id="drills.new"),
    ]

    def compose_body(self) -> ComposeResult:
        yield FilterBar("filter: drill, database, target, passed/failed, scheduler", id="drills-filter")
        yield VirtualTable(COLUMNS, empty_text=EMPTY, id="drills")
        yield Static("Recovery time of the last drills (│ = RTO)", classes="section-title", id="drill-chart-title")
        yield BarChart(id="drill-chart")
        yield Static("", id="drill-rotation", classes="chart-note")

    def on_mount(self) -> None:
        self.query_one("#drills", VirtualTable).focus()

    def reload(self) -> None:
        self.load_drills()

    @work(thread=True, group="drills", exclusive=True, exit_on_error=False, description="drills: list drill reports")
    def load_drills(self) -> None:
        config = self.engine.config
        reports = self.queries.drill_reports(limit=5000)
        restores = self.queries.drills(limit=5000)
        entries = drill_entries(reports, restores, rto_targets(config), default_rto(config))
        dbs = [d.name for d in config.databases] or sorted({e.db for e in entries})
        proofs = rotation(entries, dbs, [t.name for t in config.targets])
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show, DrillView(entries, proofs))

    def show(self, view: DrillView) -> None:
        """Display the drills (filtered in memory: there are few), the chart and the rotation."""
        words = self.query_one("#drills-filter", FilterBar).words
        cells = []
        keys = []
        passed = 0
        for e in view.entries:
            verdict = ("passed", "good") if e.passed else ("FAILED", "bad")
            over = "" if e.within_rto else " OVER"
            row: list[str | tuple[str, str]] = [
                e.label, verdict, e.db, e.kind, e.target or "-",
                (f"{fmt.duration(e.recovery_s)}/{fmt.duration(e.rto_s)}{over}", "good" if not over else "bad"),
                e.scheduled_by, fmt.when(e.started_at), e.note]
            text = " ".join(c if isinstance(c, str) else c[0] for c in row).lower()
            if all(w in text for w in words):
                cells.append(row)
                keys.append(e.key)
                passed += e.passed
        self.query_one("#drills", VirtualTable).set_source(ListSource(cells, keys))
        recent = list(reversed(view.entries[:CHART_BARS]))
        bars = [(f"{fmt.when(e.started_at)[:5]} {e.db}", e.recovery_s,
                 fmt.duration(e.recovery_s) + ("" if e.passed else " FAIL")) for e in recent]
        rto = min((e.rto_s for e in recent), default=None)
        self.query_one("#drill-chart", BarChart).set_data(bars, rto, f"RTO {fmt.duration(rto)}" if rto else "")
        self.query_one("#drill-rotation", Static).update(_rotation_text(view.proofs))
        self.set_status(f"{len(cells)} drill(s), {passed} passed")

    def action_filter(self) -> None:
        self.query_one("#drills-filter", FilterBar).open()

    @on(FilterBar.Changed, "#drills-filter")
    def _filter_changed(self) -> None:
        self.load_drills()

    @on(FilterBar.Done, "#drills-filter")
    def _filter_done(self) -> None:
        self.query_one("#drills", VirtualTable).focus()

    def action_new_drill(self) -> None:
        """Open the wizard with 'Restore drill' chosen: it restores into <db>_drill_<time>, timed and recorded."""
        self.post_message(RestoreRequested(incident=Incident.DRILL))


def _rotation_text(proofs: list[TargetProof]) -> str:
    """One line per database: each target and when a drill last proved it ("never" in words, not colour)."""
    lines = []
    for db in dict.fromkeys(p.db for p in proofs):
        parts = [f"{p.target} {fmt.when(p.last_passed_at) if p.last_passed_at else 'NEVER'}"
                 for p in proofs if p.db == db]
        lines.append(f"proven: {db}: " + " · ".join(parts))
    return "\n".join(lines) or "no targets configured"
