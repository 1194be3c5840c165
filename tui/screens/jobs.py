"""2 Jobs: running and recent jobs from every process, and the event log of the one under the cursor."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from core.records import JobRecord
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Log, ProgressBar, Static
from textual.worker import get_current_worker

from tui import format as fmt
from tui.bridge import JobChanged, JobProgressed
from tui.host import ConsoleHost
from tui.screens.base import ConsoleScreen
from tui.widgets.filter_bar import FilterBar

STATE_WORD = {"running": "RUN", "succeeded": "OK", "failed": "FAIL", "abandoned": "GONE"}
COLUMNS = (("st", "ST", 4), ("kind", "KIND", 8), ("db", "DB", 12), ("phase", "PHASE", 12),
           ("progress", "PROGRESS", 15), ("done", "DONE", 9), ("rate", "RATE", 11), ("eta", "ETA", 7),
           ("started", "STARTED (UTC)", 11))


def job_cells(j: JobRecord, now: float) -> tuple[str, ...]:
    """A job as table cells (text only: the progress bar is characters, not a widget per row)."""
    running = j.state == "running"
    progress = fmt.bar(j.bytes_done, j.bytes_total, 10) if running else (
        fmt.duration((j.finished_at or now) - j.started_at))
    return (STATE_WORD.get(j.state, j.state.upper()), j.kind, j.db or "-", (j.phase or "-") if running else j.state,
            progress, fmt.size(j.bytes_done), f"{fmt.size(j.rate)}/s" if running else "-",
            fmt.eta(j.bytes_done, j.bytes_total, j.rate) if running else "-", fmt.when(j.started_at))


def event_line(ts: float, kind: str, payload: dict[str, object]) -> str:
    """One job event as a log line."""
    t = fmt.when_full(ts)[11:19]
    if kind == "JobStarted":
        return f"{t} started: {payload.get('description', '')}"
    if kind == "PhaseChanged":
        return f"{t} phase {payload.get('phase')}"
    if kind == "Progress":
        total = payload.get("bytes_total")
        tot = f"/{fmt.size(total)}" if isinstance(total, (int, float)) else ""
        return (f"{t} {payload.get('phase')}: {fmt.size(payload.get('bytes_done'))}{tot}"  # type: ignore[arg-type]
                f" at {fmt.size(payload.get('rate'))}/s")  # type: ignore[arg-type]
    if kind == "JobWarning":
        return f"{t} WARNING {payload.get('message')}"
    if kind == "JobFinished":
        err = payload.get("error")
        return f"{t} finished: {payload.get('outcome')}" + (f": {err}" if err else "")
    return f"{t} {kind} {payload}"


class JobsScreen(ConsoleScreen):
    """Live list of jobs with a detail pane."""

    NUMBER = 2
    SCREEN_TITLE = "Jobs"
    AUTO_FOCUS = "#jobs-table"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", id="jobs.filter"),
    ]

    def __init__(self, host: ConsoleHost) -> None:
        super().__init__(host)
        self.jobs: dict[str, JobRecord] = {}
        self.order: list[str] = []
        self.selected: str | None = None
        self.last_event_id = 0

    def compose_body(self) -> ComposeResult:
        yield FilterBar(id="jobs-filter")
        table: DataTable[str] = DataTable(id="jobs-table", cursor_type="row", zebra_stripes=False)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table
        with Vertical(id="job-detail"):
            yield Static("no job selected", id="job-title")
            yield ProgressBar(total=100, show_eta=False, id="job-progress")
            yield Log(id="job-log", max_lines=2000)

    def reload(self) -> None:
        self.load_jobs()

    @work(thread=True, group="jobs", exclusive=True, exit_on_error=False, description="jobs: read the job list")
    def load_jobs(self) -> None:
        words = self.query_one("#jobs-filter", FilterBar).words
        jobs = self.queries.jobs(limit=200, words=words)
        selected = self.selected
        events = []
        if selected:
            events = self.queries.job_events(selected, self.last_event_id)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show_jobs, jobs, selected, events)

    def show_jobs(self, jobs: list[JobRecord], selected: str | None, events: list) -> None:
        """Update the table by row key (a rebuild only when rows come or go)."""
        table = self.query_one("#jobs-table", DataTable)
        now = self.now()
        order = [j.id for j in jobs]
        with self.app.batch_update():
            if order != self.order:
                cursor_key = self.order[table.cursor_row] if self.order and table.cursor_row < len(self.order) else None
                table.clear()
                for j in jobs:
                    table.add_row(*job_cells(j, now), key=j.id)
                self.order = order
                if cursor_key in order:
                    table.move_cursor(row=order.index(cursor_key), animate=False)
            else:
                for j in jobs:
                    old = self.jobs.get(j.id)
                    if old != j:
                        for (key, _, _), value in zip(COLUMNS, job_cells(j, now), strict=True):
                            table.update_cell(j.id, key, value)
        self.jobs = {j.id: j for j in jobs}
        running = sum(1 for j in jobs if j.state == "running")
        self.set_status(f"{running} running, {len(jobs)} shown")
        if self.selected is None and jobs:
            self.select(jobs[0].id)
        elif selected == self.selected:
            self._append_events(events)
            self._show_detail()

    @on(DataTable.RowHighlighted, "#jobs-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value and event.row_key.value != self.selected:
            self.select(event.row_key.value)

    def select(self, job_id: str) -> None:
        """Show a job's detail and its event log from the start."""
        self.selected = job_id
        self.last_event_id = 0
        self.query_one("#job-log", Log).clear()
        self._show_detail()
        self.load_events()

    @work(thread=True, group="job-events", exclusive=True, exit_on_error=False,
          description="jobs: read the selected job's event log")
    def load_events(self) -> None:
        job_id = self.selected
        if job_id is None:
            return
        events = self.queries.job_events(job_id, self.last_event_id)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._events_loaded, job_id, events)

    def _events_loaded(self, job_id: str, events: list) -> None:
        if job_id == self.selected:
            self._append_events(events)

    def _append_events(self, events: list) -> None:
        events = [e for e in events if e[0] > self.last_event_id]
        if not events:
            return
        self.last_event_id = events[-1][0]
        self.query_one("#job-log", Log).write_lines([event_line(ts, kind, payload) for _, ts, kind, payload in events])

    def _show_detail(self) -> None:
        j = self.jobs.get(self.selected or "")
        title = self.query_one("#job-title", Static)
        bar = self.query_one("#job-progress", ProgressBar)
        if j is None:
            title.update("no job selected")
            bar.display = False
            return
        where = f" on {j.host} pid {j.pid}" if j.host else ""
        err = f"\nerror: {j.error}" if j.error else ""
        title.update(f"{j.id}  {STATE_WORD.get(j.state, j.state)}  {j.description}{where}{err}")
        bar.display = j.state == "running"
        if j.state == "running":
            bar.update(total=j.bytes_total or None, progress=j.bytes_done)

    def job_progress(self, msg: JobProgressed) -> None:
        j = self.jobs.get(msg.job_id)
        if j is None:
            return
        j = replace(j, phase=msg.phase, bytes_done=msg.done, bytes_total=msg.total, rate=msg.rate)
        self.jobs[j.id] = j
        table = self.query_one("#jobs-table", DataTable)
        with self.app.batch_update():
            for (key, _, _), value in zip(COLUMNS, job_cells(j, self.now()), strict=True):
                table.update_cell(j.id, key, value)
            if j.id == self.selected:
                self._show_detail()

    def job_changed(self, msg: JobChanged) -> None:
        self.load_jobs()

    def action_filter(self) -> None:
        self.query_one("#jobs-filter", FilterBar).open()

    @on(FilterBar.Changed, "#jobs-filter")
    def _filter_changed(self) -> None:
        self.load_jobs()

    @on(FilterBar.Done, "#jobs-filter")
    def _filter_done(self) -> None:
        self.query_one("#jobs-table", DataTable).focus()
        self.load_jobs()
