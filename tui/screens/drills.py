"""7 Drills: test restores and their measured times (the drill scheduler comes later)."""

from __future__ import annotations

from typing import ClassVar

from core.planner import Incident
from core.records import RestoreRecord
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static
from textual.worker import get_current_worker

from tui import format as fmt
from tui.messages import RestoreRequested
from tui.screens.base import ConsoleScreen
from tui.widgets.filter_bar import FilterBar
from tui.widgets.virtual_table import Column, ListSource, VirtualTable

COLUMNS = [Column("WHEN (UTC)", 11), Column("DATABASE", 10), Column("SNAPSHOT", 8), Column("INTO", 28),
           Column("TOOK", 8, "right"), Column("RESULT", 6), Column("NOTE", 60)]
EMPTY = ("No drills recorded yet. Run one from the restore wizard (6, 'Restore drill'): "
         "it restores into a scratch database, times it and records it here.")


class DrillsScreen(ConsoleScreen):
    """Restore drills that ran, newest first."""

    NUMBER = 7
    SCREEN_TITLE = "Drills"
    AUTO_FOCUS = "#drills"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", id="drills.filter"),
        Binding("n", "new_drill", "New drill", id="drills.new"),
    ]

    def compose_body(self) -> ComposeResult:
        yield FilterBar("filter: database, snapshot, ok/failed", id="drills-filter")
        yield Static("Scheduled quarterly drills arrive with the scheduler; drills run from the wizard are "
                     "listed here with their measured times.", id="drills-note", classes="chart-note")
        yield VirtualTable(COLUMNS, empty_text=EMPTY, id="drills")

    def on_mount(self) -> None:
        self.query_one("#drills", VirtualTable).focus()

    def reload(self) -> None:
        self.load_drills()

    @work(thread=True, group="drills", exclusive=True, exit_on_error=False, description="drills: list drill restores")
    def load_drills(self) -> None:
        rows = self.queries.drills(limit=5000)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show, rows)

    def show(self, rows: list[RestoreRecord]) -> None:
        """Display the drills (filtered in memory: there are few)."""
        words = self.query_one("#drills-filter", FilterBar).words
        cells = []
        keys = []
        for r in reversed(rows):
            result = ("ok", "good") if r.ok else ("FAILED", "bad")
            row: list[str | tuple[str, str]] = [
                fmt.when(r.started_at), r.db, r.snapshot_id[:8], r.into, fmt.duration(r.duration_s), result,
                (r.error or ", ".join(r.tables) or "whole database")]
            text = " ".join(c if isinstance(c, str) else c[0] for c in row).lower()
            if all(w in text for w in words):
                cells.append(row)
                keys.append(r.id)
        self.query_one("#drills", VirtualTable).set_source(ListSource(cells, keys))
        self.set_status(f"{len(cells)} drill(s)")

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
