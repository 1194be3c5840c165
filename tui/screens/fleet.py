"""0 Fleet: the agents with their last heartbeat, and the fleet's job queue newest first (PostgreSQL catalog)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from core.errors import ConfigError
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static
from textual.worker import get_current_worker

from tui import format as fmt
from tui.host import ConsoleHost
from tui.screens.base import ConsoleScreen
from tui.widgets.filter_bar import FilterBar
from tui.widgets.virtual_table import Cell, Column, ListSource, VirtualTable

if TYPE_CHECKING:  # the queue's module brings psycopg: the console needs only its row types
    from core.fleet.queue import AgentRow, FleetJob

STALE_AFTER_S = 90.0  # an agent beats every few seconds; this long without one means it is gone or cut off
JOB_LIMIT = 500
TICK_S = 5.0  # ages are redrawn from memory this often: a silent agent turns stale without any catalog change
AGENT_COLUMNS = [Column("NAME", 14), Column("HOST", 16), Column("VERSION", 8), Column("LAST HEARTBEAT", 17),
                 Column("DATABASES", 40)]
JOB_COLUMNS = [Column("ID", 5, "right"), Column("AGENT", 10), Column("KIND", 7), Column("TARGET", 10),
               Column("STATE", 9), Column("TRY", 3, "right"), Column("PROGRESS", 10), Column("AGE", 8),
               Column("REASON/ERROR", 60)]
STATE_TONE = {"queued": "dim", "running": "warn", "succeeded": "good", "failed": "bad", "cancelled": "dim"}


@dataclass(frozen=True)
class FleetView:
    """What the worker read: the agents and jobs, or why there is no fleet to show."""

    agents: list[AgentRow]
    jobs: list[FleetJob]
    unavailable: str | None = None


def heartbeat_cell(agent: AgentRow, now: float) -> Cell:
    """'3s ago', '2m 10s ago STALE' or 'never' (the state in words, not only colour)."""
    if agent.heartbeat_at is None:
        return ("never", "warn")
    age = now - agent.heartbeat_at.timestamp()
    if age > STALE_AFTER_S:
        return (f"{fmt.duration(age)} ago STALE", "bad")
    return (f"{fmt.duration(age)} ago", "good")


def progress_text(job: FleetJob) -> str:
    """Percent done when the agent reported a total, else its phase."""
    p = job.progress or {}
    phase = str(p.get("phase") or "")
    done, total = p.get("bytes_done"), p.get("bytes_total")
    if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
        pct = f"{min(100.0, 100.0 * done / total):.0f}%"
        return f"{pct} {phase}".strip()
    return phase or "-"


def job_row(job: FleetJob, now: float) -> list[Cell]:
    """A fleet job as table cells."""
    note = job.error or job.reason or ""
    return [str(job.id), job.agent, job.kind, job.target, (job.state, STATE_TONE.get(job.state, "")),
            str(job.attempt), progress_text(job) if job.state == "running" else "-",
            fmt.ago(job.created_at, now), (note, "bad") if job.error else note]


def agent_row(agent: AgentRow, now: float) -> list[Cell]:
    """An agent as table cells."""
    return [agent.name, agent.host or "-", agent.version or "-", heartbeat_cell(agent, now),
            ", ".join(agent.databases) or "-"]


def _matches(cells: list[Cell], words: tuple[str, ...]) -> bool:
    text = " ".join(c if isinstance(c, str) else c[0] for c in cells).lower()
    return all(w in text for w in words)


class FleetScreen(ConsoleScreen):
    """The fleet: who is alive, and what each agent was asked to do."""

    NUMBER = 0
    SCREEN_TITLE = "Fleet"
    AUTO_FOCUS = "#fleet-jobs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", id="fleet.filter"),
        Binding("a", "switch_table", "Agents/jobs", id="fleet.switch"),
    ]

    def __init__(self, host: ConsoleHost) -> None:
        super().__init__(host)
        self.fleet: FleetView | None = None

    def compose_body(self) -> ComposeResult:
        yield FilterBar("filter: agent, host, kind, target, state, error", id="fleet-filter")
        yield Static("", id="fleet-unavailable", markup=False)
        yield VirtualTable(AGENT_COLUMNS, empty_text="No agents registered.", id="fleet-agents")
        yield VirtualTable(JOB_COLUMNS, empty_text="No fleet jobs yet.", id="fleet-jobs")
        # The job under the cursor in full (its error does not fit a column); errors are text, never markup.
        yield Static("", id="fleet-detail", markup=False)

    def on_mount(self) -> None:
        self.query_one("#fleet-unavailable", Static).display = False
        self.set_interval(TICK_S, self._tick)

    def reload(self) -> None:
        self.load_fleet()

    @work(thread=True, group="fleet", exclusive=True, exit_on_error=False, description="fleet: read agents and jobs")
    def load_fleet(self) -> None:
        try:
            view = FleetView(self.engine.agents(), self.engine.fleet_jobs(JOB_LIMIT))
        except ConfigError as err:  # an SQLite catalog: there is no fleet, and the screen says how to get one
            view = FleetView([], [], str(err))
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show, view)

    def show(self, view: FleetView) -> None:
        """Draw what was read (the filter applies in memory: the lists are short)."""
        self.fleet = view
        notice = self.query_one("#fleet-unavailable", Static)
        agents_t = self.query_one("#fleet-agents", VirtualTable)
        jobs_t = self.query_one("#fleet-jobs", VirtualTable)
        notice.display = view.unavailable is not None
        detail = self.query_one("#fleet-detail", Static)
        agents_t.display = jobs_t.display = detail.display = view.unavailable is None
        if view.unavailable is not None:
            notice.update(view.unavailable)
            self.set_status("needs a PostgreSQL catalog")
            return
        now = self.now()
        words = self.query_one("#fleet-filter", FilterBar).words
        agents = [(a.name, agent_row(a, now)) for a in view.agents]
        agents = [(k, r) for k, r in agents if _matches(r, words)]
        jobs = [(j.id, job_row(j, now)) for j in view.jobs]
        jobs = [(k, r) for k, r in jobs if _matches(r, words)]
        agents_t.empty_text = "No agent matches the filter." if words else "No agents registered."
        jobs_t.empty_text = "No job matches the filter." if words else "No fleet jobs yet."
        agents_t.set_source(ListSource([r for _, r in agents], [k for k, _ in agents]))
        jobs_t.set_source(ListSource([r for _, r in jobs], [k for k, _ in jobs]))
        self._show_detail()
        stale = sum(1 for a in view.agents if heartbeat_cell(a, now)[1] != "good")
        running = sum(1 for j in view.jobs if j.state == "running")
        queued = sum(1 for j in view.jobs if j.state == "queued")
        self.set_status(f"{len(view.agents)} agent(s), {stale} silent · {running} running, {queued} queued")

    def _show_detail(self) -> None:
        key = self.query_one("#fleet-jobs", VirtualTable).current_key
        job = next((j for j in self.fleet.jobs if j.id == key), None) if self.fleet else None
        text = ""
        if job is not None:
            when = job.finished_at or job.heartbeat_at or job.created_at
            text = (f"job {job.id}: {job.kind} of {job.target} on {job.agent}, {job.state} (attempt {job.attempt})"
                    f" {fmt.when(when)} UTC")
            if job.error:
                text += f"\nerror: {job.error}"
            if job.reason:
                text += f"\nasked because: {job.reason}"
        self.query_one("#fleet-detail", Static).update(text)

    @on(VirtualTable.Highlighted, "#fleet-jobs")
    def _job_highlighted(self) -> None:
        self._show_detail()

    def _tick(self) -> None:
        if self.fleet is not None and self.fleet.unavailable is None and self.is_current:
            self.show(self.fleet)

    def action_filter(self) -> None:
        self.query_one("#fleet-filter", FilterBar).open()

    def action_switch_table(self) -> None:
        agents = self.query_one("#fleet-agents", VirtualTable)
        (self.query_one("#fleet-jobs", VirtualTable) if agents.has_focus else agents).focus()

    @on(FilterBar.Changed, "#fleet-filter")
    def _filter_changed(self) -> None:
        if self.fleet is not None:
            self.show(self.fleet)

    @on(FilterBar.Done, "#fleet-filter")
    def _filter_done(self) -> None:
        self.query_one("#fleet-jobs", VirtualTable).focus()
