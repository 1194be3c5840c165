"""4 Verification: checksum results per snapshot and target; start one and watch it run."""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import ClassVar

from core.queries import Queries
from core.records import VerificationRecord
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static
from textual.worker import get_current_worker

from tui import format as fmt
from tui.bridge import JobChanged, JobProgressed
from tui.host import ConsoleHost
from tui.messages import VerifyRequested
from tui.screens.base import ConsoleScreen
from tui.widgets.filter_bar import FilterBar
from tui.widgets.virtual_table import Cell, Column, VirtualTable

COLUMNS = [
    Column("WHEN (UTC)", 11), Column("TARGET", 10), Column("SNAPSHOT", 8), Column("RESULT", 6),
    Column("MISMATCHES / PROBLEMS", 60), Column("CHECK", 10), Column("OBJECTS", 8, "right"), Column("READ", 9, "right"),
]


def verification_cells(v: VerificationRecord) -> list[Cell]:
    """A verification as table cells."""
    what = "read-back" if v.read_data else "structural"
    snap = v.snapshot_id[:8] if v.snapshot_id else "(repo)"
    result: Cell = ("ok", "good") if v.ok else ("FAILED", "bad")
    problems = "; ".join(v.problems) if v.problems else "-"
    return [fmt.when(v.finished_at), v.target, snap, result, problems, what, str(v.objects_checked),
            fmt.size(v.bytes_read)]


class VerificationSource:
    """Verifications addressed by id, newest first (``rows`` reads the catalog: the table calls it in a thread)."""

    READS_IN_THREAD = True

    def __init__(self, queries: Queries, ids: array) -> None:
        self.queries = queries
        self.ids = ids
        self.records: dict[int, VerificationRecord] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def key(self, index: int) -> object:
        return self.ids[index]

    def index_of(self, key: object) -> int | None:
        try:
            return self.ids.index(key)
        except ValueError:
            return None

    def rows(self, start: int, stop: int) -> list[Sequence[Cell]]:
        got = self.queries.verification_rows(self.ids[start:stop])
        if len(self.records) > 4096:
            self.records.clear()
        self.records.update((v.id, v) for v in got)
        return [verification_cells(v) for v in got]


class VerificationScreen(ConsoleScreen):
    """Every verification, newest first; `v` reads the snapshot under the cursor back from each target."""

    NUMBER = 4
    SCREEN_TITLE = "Verification"
    AUTO_FOCUS = "#verifications"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", id="verification.filter"),
        Binding("v", "verify", "Verify snapshot", id="verification.verify"),
    ]

    def __init__(self, host: ConsoleHost) -> None:
        super().__init__(host)
        self.source: VerificationSource | None = None
        self.watching: str | None = None  # job id of the verification this console runs

    def compose_body(self) -> ComposeResult:
        yield FilterBar("filter: target, snapshot id, ok/failed, problem text", id="verification-filter")
        with Vertical(id="verify-live"):
            yield Static("press v to read a snapshot back from every target", id="verify-status")
            yield ProgressBar(total=100, show_eta=False, id="verify-progress")
        yield VirtualTable(COLUMNS, empty_text="No verifications recorded yet.", id="verifications")

    def on_mount(self) -> None:
        self.query_one("#verify-progress", ProgressBar).display = False
        self.query_one("#verifications", VirtualTable).focus()
        # A verification started before this screen first mounted: follow it.
        running = [j for j, kind in self.host.console_jobs().items() if kind == "verify"]
        if running:
            self.watching = running[-1]
            self.watch_job("the snapshot")

    def reload(self) -> None:
        self.load_verifications()

    @work(thread=True, group="verifications", exclusive=True, exit_on_error=False,
          description="verification: list results")
    def load_verifications(self) -> None:
        words = self.query_one("#verification-filter", FilterBar).words
        ids = self.queries.verification_rowids(words)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show, ids)

    def show(self, ids: array) -> None:
        """Display a new listing."""
        self.source = VerificationSource(self.queries, ids)
        self.query_one("#verifications", VirtualTable).set_source(self.source)
        self.set_status(f"{len(ids)} result(s)")

    def selected_snapshot(self) -> str | None:
        """The snapshot of the row under the cursor, if the row is about one."""
        table = self.query_one("#verifications", VirtualTable)
        key = table.current_key
        if key is None or self.source is None:
            return None
        rec = self.source.records.get(int(key))  # type: ignore[call-overload]
        return rec.snapshot_id if rec else None

    def action_verify(self) -> None:
        sid = self.selected_snapshot()
        if sid is None:
            self.notify("Put the cursor on a result about a snapshot, or start from the catalog (3, then v).",
                        severity="warning")
            return
        self.post_message(VerifyRequested(sid))

    def watch_job(self, description: str) -> None:
        """Called by the app when it starts a verification: show its progress here."""
        self.query_one("#verify-status", Static).update(f"starting {description} …")
        bar = self.query_one("#verify-progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)

    def job_changed(self, msg: JobChanged) -> None:
        if msg.kind != "verify":
            return
        status = self.query_one("#verify-status", Static)
        if msg.event == "started":
            self.watching = msg.job_id
            status.update(f"running: {msg.text}")
        elif msg.job_id == self.watching:
            if msg.event == "phase":
                status.update(f"running: {msg.text}")
            elif msg.event == "warning":
                status.update(f"PROBLEM: {msg.text}")
            elif msg.event == "finished":
                self.query_one("#verify-progress", ProgressBar).display = False
                status.update(f"verification finished: {msg.text}")
                self.watching = None
                self.load_verifications()

    def job_progress(self, msg: JobProgressed) -> None:
        if msg.job_id == self.watching:
            bar = self.query_one("#verify-progress", ProgressBar)
            bar.update(total=msg.total or None, progress=msg.done)

    def action_filter(self) -> None:
        self.query_one("#verification-filter", FilterBar).open()

    @on(FilterBar.Changed, "#verification-filter")
    def _filter_changed(self) -> None:
        self.load_verifications()

    @on(FilterBar.Done, "#verification-filter")
    def _filter_done(self) -> None:
        self.query_one("#verifications", VirtualTable).focus()
