"""8 Audit: the audit log, when the catalog has one (operators, MFA and audit live in core.security)."""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import ClassVar

from core.errors import BackstopError
from core.queries import Queries
from core.records import AuditTable
from core.security.gate import Identity
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static
from textual.worker import get_current_worker

from tui import format as fmt
from tui.host import ConsoleHost
from tui.screens.base import ConsoleScreen
from tui.widgets.filter_bar import FilterBar
from tui.widgets.virtual_table import Cell, Column, VirtualTable

NOT_YET = "No audit entries yet: enrolling operators and destructive actions are recorded here."
HIDDEN = {"prev", "mac"}  # chain fields: long hashes, checked by V rather than read by people
WIDTH = {"seq": 6, "id": 6, "ts": 19, "operator": 12, "host": 12, "action": 18, "subject": 22, "outcome": 9}


class TableSource:
    """Audit entries by row key, in the columns the catalog stores them with (``rows`` reads the catalog:
    the table calls it in a thread)."""

    READS_IN_THREAD = True

    def __init__(self, queries: Queries, table: AuditTable, rowids: array) -> None:
        self.queries, self.table, self.rowids = queries, table, rowids

    def __len__(self) -> int:
        return len(self.rowids)

    def key(self, index: int) -> object:
        return self.rowids[index]

    def index_of(self, key: object) -> int | None:
        try:
            return self.rowids.index(key)
        except ValueError:
            return None

    def rows(self, start: int, stop: int) -> list[Sequence[Cell]]:
        shown = [i for i, c in enumerate(self.table.columns) if c not in HIDDEN]
        out: list[Sequence[Cell]] = []
        for r in self.queries.audit_rows(self.rowids[start:stop]):
            cells: list[Cell] = []
            for i in shown:
                v, col = r[i], self.table.columns[i]
                if col == "ts" and isinstance(v, (int, float)):
                    cells.append(fmt.when_full(v)[:19])
                elif col == "outcome":
                    text = str(v)
                    cells.append((text, "bad" if text in ("refused", "failed", "wrong", "locked") else
                                  ("good" if text in ("allowed", "succeeded", "ok") else "dim")))
                else:
                    cells.append("" if v is None else str(v))
            out.append(cells)
        return out


class AuditScreen(ConsoleScreen):
    """The audit log, newest first, filterable."""

    NUMBER = 8
    SCREEN_TITLE = "Audit"
    AUTO_FOCUS = "#audit"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", id="audit.filter"),
        Binding("V", "verify_chain", "Verify chain", id="audit.verify"),
    ]

    def __init__(self, host: ConsoleHost) -> None:
        super().__init__(host)
        self.table: AuditTable | None = None

    def compose_body(self) -> ComposeResult:
        yield FilterBar("filter: operator, action, target, outcome", id="audit-filter")
        yield Static("chain not checked yet: V verifies it with the repository key", id="audit-status",
                     classes="chart-note")
        yield VirtualTable([Column("AUDIT", 60)], empty_text=NOT_YET, id="audit")

    def on_mount(self) -> None:
        self.query_one("#audit", VirtualTable).focus()

    def reload(self) -> None:
        self.load_audit()

    @work(thread=True, group="audit", exclusive=True, exit_on_error=False, description="audit: read the audit log")
    def load_audit(self) -> None:
        queries = self.queries
        table = queries.audit_table()
        words = self.query_one("#audit-filter", FilterBar).words
        rowids = queries.audit_rowids(words) if table else array("q")
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show, table, rowids)

    def show(self, table: AuditTable | None, rowids: array) -> None:
        """Display the log (columns come from the table itself)."""
        grid = self.query_one("#audit", VirtualTable)
        if table is None:
            self.set_status("no audit log")
            return
        if table != self.table:
            self.table = table
            grid.columns = [Column(("TIME (UTC)" if c == "ts" else c.upper()), WIDTH.get(c, 40))
                            for c in table.columns if c not in HIDDEN]
        grid.set_source(TableSource(self.queries, table, rowids))
        self.set_status(f"{len(rowids)} entr{'y' if len(rowids) == 1 else 'ies'} in {table.name}")

    def action_verify_chain(self) -> None:
        self.query_one("#audit-status", Static).update("verifying the chain …")
        self.verify_chain()

    @work(group="audit-verify", exclusive=True, exit_on_error=False,
          description="audit: verify the keyed hash chain")
    async def verify_chain(self) -> None:
        try:
            report = await self.engine.check_audit(Identity(self.host.operator))
        except BackstopError as exc:
            text = f"chain not verified: {exc}"
        else:
            text = (f"audit chain verified: {report.entries} entries intact, repository copies agree"
                    if report.ok else f"AUDIT CHAIN PROBLEM: {'; '.join(report.problems)}")
        self.query_one("#audit-status", Static).update(text)

    def action_filter(self) -> None:
        self.query_one("#audit-filter", FilterBar).open()

    @on(FilterBar.Changed, "#audit-filter")
    def _filter_changed(self) -> None:
        self.load_audit()

    @on(FilterBar.Done, "#audit-filter")
    def _filter_done(self) -> None:
        self.query_one("#audit", VirtualTable).focus()
