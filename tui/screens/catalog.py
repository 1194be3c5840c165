"""3 Catalog: databases and their snapshots, virtualised (fast with 100,000 snapshots)."""

from __future__ import annotations

import time
from array import array
from collections.abc import Sequence
from typing import ClassVar

from core.engine import WalCoverage
from core.errors import BackstopError
from core.queries import Queries
from core.records import DatabaseSummary, SnapshotRow
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from tui import format as fmt
from tui.host import ConsoleHost
from tui.messages import RestoreRequested, VerifyRequested
from tui.screens.base import ConsoleScreen
from tui.widgets.filter_bar import FilterBar
from tui.widgets.virtual_table import Cell, Column, VirtualTable

COLUMNS = [
    Column("ID", 8), Column("FINISHED (UTC)", 16), Column("DATABASE", 10), Column("TARGETS (VERIFIED?)", 24),
    Column("SIZE", 9, "right"), Column("NEW", 9, "right"), Column("DEDUP", 6, "right"), Column("TOOK", 7, "right"),
    Column("KIND", 7), Column("POINT / WAL RANGE", 25),
]


def target_cell(row: SnapshotRow) -> Cell:
    """Each target with the state of its copy; words, so it reads without colour."""
    parts = []
    worst = "good"
    for t in row.targets:
        c = row.check(t)
        if c is None:
            parts.append(f"{t}:unverified")
            worst = "warn" if worst == "good" else worst
        elif not c.ok:
            parts.append(f"{t}:FAILED")
            worst = "bad"
        else:
            parts.append(f"{t}:ok")
    return (" ".join(parts), worst)


def kind_cell(r: SnapshotRow) -> Cell:
    """Logical, or physical with its status: "waiting" (its own WAL not archived yet) reads as a warning."""
    if r.kind != "physical":
        return r.kind
    return ("phys", "good") if r.status == "restorable" else ("waiting", "warn")


def point_cell(r: SnapshotRow) -> str:
    """Logical snapshots restore one moment; physical ones their LSN range (then any moment the WAL reaches)."""
    if r.kind == "physical":
        return f"tl{r.timeline or '?'} {r.start_lsn or '?'}-{r.stop_lsn or '?'}"
    return "@ " + fmt.iso_short(r.started_at)[5:] if r.kind == "logical" else "-"


def snapshot_cells(r: SnapshotRow) -> list[Cell]:
    """A snapshot as table cells."""
    took = fmt.iso_epoch(r.finished_at) - fmt.iso_epoch(r.started_at)
    dedup = f"{r.size_bytes / r.stored_bytes:.1f}x" if r.stored_bytes else "all"
    return [r.id[:8], fmt.iso_short(r.finished_at), r.db, target_cell(r), fmt.size(r.size_bytes),
            fmt.size(r.stored_bytes), dedup, fmt.duration(took), kind_cell(r), point_cell(r)]


def coverage_text(cov: WalCoverage) -> str:
    """The WAL archive per timeline, one line each: range, when archived, gaps (words, no colour needed)."""
    if not cov.timelines:
        lines = ["WAL archive: nothing archived (physical snapshots stay waiting; see `backstop wal status`)"]
    else:
        lines = []
        for t in cov.timelines:
            holes = (f" · {len(t.gaps)} GAP(S): " + ", ".join(f"{a}..{b[-8:]}" for a, b in t.gaps[:2])
                     + (" …" if len(t.gaps) > 2 else "")) if t.gaps else " · no gaps"
            lines.append(f"WAL tl{t.timeline}: {t.first} → {t.last[-8:]} ({t.segments} seg, "
                         f"{fmt.when(t.first_at.timestamp())} → {fmt.when(t.last_at.timestamp())}){holes}")
    if cov.unreachable:
        lines.append(f"WAL not listed on: {', '.join(cov.unreachable)}")
    return "\n".join(lines)


class SnapshotSource:
    """Snapshots by position in the newest-first listing, read a block at a time.

    It starts with only the count, fetching pages by position (the first and
    the last page are equally cheap); the full list of rowids arrives from a
    background worker and then serves every page and key lookup directly.
    ``rows`` reads the catalog, so the table calls it from a worker thread
    (``READS_IN_THREAD``); keys and records of rows not read yet are None.
    """

    PAGE = 64
    READS_IN_THREAD = True

    def __init__(self, queries: Queries, total: int, db: str | None, words: tuple[str, ...]) -> None:
        self.queries = queries
        self.total = total
        self.db = db
        self.words = words
        self.rowids: array | None = None
        self._pages: dict[int, list[int]] = {}
        self._rows: dict[int, SnapshotRow] = {}

    def attach(self, rowids: array) -> bool:
        """Use the full listing from now on (False when it no longer matches the count shown)."""
        if len(rowids) != self.total:
            return False
        self.rowids = rowids
        self._pages.clear()
        return True

    def __len__(self) -> int:
        return self.total

    def _ids(self, start: int, stop: int) -> list[int]:
        if self.rowids is not None:
            return list(self.rowids[start:stop])
        out: list[int] = []
        for page in range(start // self.PAGE, (max(start, stop - 1)) // self.PAGE + 1):
            ids = self._pages.get(page)
            if ids is None:
                lo = page * self.PAGE
                ids = self.queries.snapshot_page(lo, min(self.total, lo + self.PAGE), self.total, self.db, self.words)
                self._pages[page] = ids
            out.extend(ids)
        first = (start // self.PAGE) * self.PAGE
        return out[start - first: stop - first]

    def key(self, index: int) -> object:
        """The rowid at a position, if known yet (never reads the catalog)."""
        if self.rowids is not None:
            return self.rowids[index] if 0 <= index < len(self.rowids) else None
        page = self._pages.get(index // self.PAGE)
        off = index % self.PAGE
        return page[off] if page is not None and off < len(page) else None

    def index_of(self, key: object) -> int | None:
        if self.rowids is not None:
            try:
                return self.rowids.index(key)
            except ValueError:
                return None
        for page, ids in self._pages.items():
            if key in ids:
                return page * self.PAGE + ids.index(key)
        return None

    def rows(self, start: int, stop: int) -> list[Sequence[Cell]]:
        got = self.queries.snapshot_rows(self._ids(start, stop))
        if len(self._rows) > 4096:
            self._rows.clear()
        self._rows.update((r.rowid, r) for r in got)
        return [snapshot_cells(r) for r in got]

    def row(self, rowid: int) -> SnapshotRow | None:
        """The full record of a row already read (for the detail line); None until its block is read."""
        return self._rows.get(rowid)


class CatalogScreen(ConsoleScreen):
    """Databases on the left, their snapshots on the right."""

    NUMBER = 3
    SCREEN_TITLE = "Catalog"
    AUTO_FOCUS = "#snapshots"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", id="catalog.filter"),
        Binding("v", "verify", "Verify", id="catalog.verify"),
        Binding("r", "restore", "Restore…", id="catalog.restore"),
    ]

    def __init__(self, host: ConsoleHost) -> None:
        super().__init__(host)
        self.db: str | None = None
        self.source: SnapshotSource | None = None
        self.loaded_at: float | None = None  # monotonic, for the benchmark

    def compose_body(self) -> ComposeResult:
        yield FilterBar("filter: id prefix, database, kind, date (2026-11), target", id="catalog-filter")
        with Horizontal(id="catalog-main"):
            yield OptionList(id="databases")
            yield VirtualTable(COLUMNS, empty_text="No snapshots match.", id="snapshots")
        yield Static("", id="snapshot-detail")
        yield Static("WAL archive: reading …", id="wal-coverage")

    def on_mount(self) -> None:
        self.query_one("#snapshots", VirtualTable).focus()

    def reload(self) -> None:
        self.load_catalog()
        self.load_coverage()

    @work(group="catalog-wal", exclusive=True, exit_on_error=False,
          description="catalog: list the WAL archive per timeline on the targets")
    async def load_coverage(self) -> None:
        """The WAL archive's coverage (a listing of every target: async, off the catalog)."""
        label = self.query_one("#wal-coverage", Static)
        try:
            cov = await self.engine.wal_coverage()
        except BackstopError as exc:
            # The first clause only (the rest names paths and credentials): `backstop wal status` says all.
            label.update(f"WAL archive: cannot list it ({str(exc).split(':')[0]}); see `backstop wal status`")
            return
        if not get_current_worker().is_cancelled:
            label.update(coverage_text(cov))

    @work(thread=True, group="catalog", exclusive=True, exit_on_error=False,
          description="catalog: count the snapshots and list the databases")
    def load_catalog(self) -> None:
        queries = self.queries
        words = self.query_one("#catalog-filter", FilterBar).words
        total = queries.snapshot_total(self.db, words)
        dbs = queries.databases()
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show, dbs, SnapshotSource(queries, total, self.db, words))

    @work(thread=True, group="catalog-ids", exclusive=True, exit_on_error=False,
          description="catalog: list every snapshot id for scrolling")
    def load_ids(self, source: SnapshotSource) -> None:
        rowids = self.queries.snapshot_rowids(source.db, source.words)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._ids_loaded, source, rowids)

    def _ids_loaded(self, source: SnapshotSource, rowids: array) -> None:
        if source is self.source and not source.attach(rowids):
            self.load_catalog()  # the catalog changed in between: list again

    def show(self, dbs: list[DatabaseSummary], source: SnapshotSource) -> None:
        """Display the database list and a new snapshot listing (its ids follow in the background)."""
        options = self.query_one("#databases", OptionList)
        total = sum(d.snapshots for d in dbs)
        wanted = [Option(f"All ({total})", id="*")] + [Option(f"{d.db} ({d.snapshots})", id=d.db) for d in dbs]
        if [o.prompt for o in options.options] != [o.prompt for o in wanted]:
            highlighted = self.db or "*"
            options.clear_options()
            options.add_options(wanted)
            ids = [o.id for o in wanted]
            options.highlighted = ids.index(highlighted) if highlighted in ids else 0
        self.source = source
        self.query_one("#snapshots", VirtualTable).set_source(source)
        words = source.words
        shown = f"{len(source)} snapshot(s)" + (f" matching '{' '.join(words)}'" if words else "")
        self.set_status(shown + (f" of {self.db}" if self.db else ""))
        self._show_detail()
        self.loaded_at = time.monotonic()
        # After the first paint: the full id list only speeds up later scrolling.
        self.set_timer(0.5, lambda: self.load_ids(source) if source is self.source else None)

    @on(OptionList.OptionHighlighted, "#databases")
    def _db_chosen(self, event: OptionList.OptionHighlighted) -> None:
        db = None if event.option.id in (None, "*") else event.option.id
        if db != self.db:
            self.db = db
            self.load_catalog()

    @on(VirtualTable.Highlighted, "#snapshots")
    def _row_moved(self) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        detail = self.query_one("#snapshot-detail", Static)
        row = self.current_row()
        if row is None:
            detail.update("")
            return
        checks = "; ".join(
            f"{c.target} {'ok' if c.ok else 'FAILED'} {'read-back' if c.read_data else 'structural'} "
            f"{fmt.when(c.at)}" for c in row.checks) or "never verified"
        physical = (f" {row.status} · timeline {row.timeline} · LSN {row.start_lsn} → {row.stop_lsn}"
                    if row.kind == "physical" else "")
        detail.update(f"{row.id}\n{row.db} {row.kind}{physical} {fmt.iso_short(row.started_at)} → "
                      f"{fmt.iso_short(row.finished_at)} UTC · checks: {checks}")

    def current_row(self) -> SnapshotRow | None:
        """The snapshot under the cursor."""
        table = self.query_one("#snapshots", VirtualTable)
        key = table.current_key
        if key is None or self.source is None:
            return None
        return self.source.row(int(key))  # type: ignore[call-overload]

    def action_filter(self) -> None:
        self.query_one("#catalog-filter", FilterBar).open()

    @on(FilterBar.Changed, "#catalog-filter")
    def _filter_changed(self) -> None:
        self.load_catalog()

    @on(FilterBar.Done, "#catalog-filter")
    def _filter_done(self) -> None:
        self.query_one("#snapshots", VirtualTable).focus()

    def action_verify(self) -> None:
        row = self.current_row()
        if row is not None:
            self.post_message(VerifyRequested(row.id))

    def action_restore(self) -> None:
        row = self.current_row()
        if row is not None:
            self.post_message(RestoreRequested(row.db, row.id))
