"""A virtual table: renders only the visible rows of a list of any length.

Textual's DataTable builds every row up front (about 21 s for 100,000 rows
here); this widget asks its ``RowSource`` for blocks of rows as they scroll
into view and keeps a few blocks cached. The scrollbar reflects the whole
list, and the cursor can jump to the end of 100,000 rows instantly.

A source whose rows come from I/O (the catalog) says so with
``READS_IN_THREAD = True``: its blocks are then read in a worker thread,
never on the event loop, and their lines stay blank until they arrive.
Such a source's ``key`` must not block either (None while unknown); the
table announces the cursor's row again once its block is in.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.worker import get_current_worker

Cell = str | tuple[str, str]  # plain text, or (text, tone) with tone in good/warn/bad/dim


class RowSource(Protocol):
    """What the table displays: a length, stable keys and rows by position.

    Optional: ``READS_IN_THREAD = True`` when ``rows`` blocks on I/O.
    """

    def __len__(self) -> int: ...
    def key(self, index: int) -> object: ...
    def index_of(self, key: object) -> int | None: ...
    def rows(self, start: int, stop: int) -> list[Sequence[Cell]]: ...


class EmptySource:
    """No rows."""

    def __len__(self) -> int:
        return 0

    def key(self, index: int) -> object:
        raise IndexError(index)

    def index_of(self, key: object) -> int | None:
        return None

    def rows(self, start: int, stop: int) -> list[Sequence[Cell]]:
        return []


class ListSource:
    """Rows already in memory (small lists)."""

    def __init__(self, rows: Sequence[Sequence[Cell]], keys: Sequence[object]) -> None:
        self._rows = list(rows)
        self._keys = list(keys)
        self._pos = {k: i for i, k in enumerate(self._keys)}

    def __len__(self) -> int:
        return len(self._rows)

    def key(self, index: int) -> object:
        return self._keys[index]

    def index_of(self, key: object) -> int | None:
        return self._pos.get(key)

    def rows(self, start: int, stop: int) -> list[Sequence[Cell]]:
        return self._rows[start:stop]


@dataclass(frozen=True)
class Column:
    """A column: label, width in cells, alignment."""

    label: str
    width: int
    align: Literal["left", "right"] = "left"


_TONES = ("good", "warn", "bad", "dim")
BLOCK = 64
MAX_BLOCKS = 48


class VirtualTable(ScrollView, can_focus=True):
    """A keyboard-driven table over a ``RowSource`` of any size."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False, id="table.up"),
        Binding("down", "cursor(1)", "Down", show=False, id="table.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="table.page_up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="table.page_down"),
        Binding("home", "first", "First row", show=False, id="table.first"),
        Binding("end", "last", "Last row", show=False, id="table.last"),
        Binding("left", "pan(-8)", "Scroll left", show=False, id="table.left"),
        Binding("right", "pan(8)", "Scroll right", show=False, id="table.right"),
        Binding("enter", "select", "Open", show=False, id="table.select"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "virtual-table--header", "virtual-table--cursor", "virtual-table--empty",
        *(f"virtual-table--{t}" for t in _TONES),
    }

    DEFAULT_CSS = """
    VirtualTable { height: 1fr; }
    """

    cursor: reactive[int] = reactive(0, always_update=True, repaint=False)

    class Highlighted(Message):
        """The cursor moved to a row."""

        def __init__(self, table: VirtualTable, index: int, key: object) -> None:
            super().__init__()
            self.table = table
            self.index = index
            self.key = key

        @property
        def control(self) -> VirtualTable:
            return self.table

    class Selected(Highlighted):
        """Enter was pressed on a row."""

    def __init__(self, columns: Sequence[Column], *, empty_text: str = "Nothing to show.",
                 name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.columns = list(columns)
        self.empty_text = empty_text
        self.source: RowSource = EmptySource()
        self._cache: OrderedDict[int, list[Sequence[Cell]]] = OrderedDict()
        self._loading: set[int] = set()  # blocks being read in a thread
        self.fetches = 0  # blocks fetched (the benchmark reads it)
        self.first_row_rendered_at: float | None = None
        self.last_row_rendered_at: float | None = None

    # -- data -------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self.source)

    def set_source(self, source: RowSource, keep_key: bool = True) -> None:
        """Show another source; the cursor stays on the same key when it is still there."""
        old_key = self.current_key if keep_key else None
        self.source = source
        self._cache.clear()
        self._loading.clear()
        width = sum(c.width + 1 for c in self.columns)
        self.virtual_size = Size(width, len(source) + 1)
        index = source.index_of(old_key) if old_key is not None else None
        self.cursor = min(index if index is not None else self.cursor, max(0, len(source) - 1))
        self._scroll_cursor_into_view()
        self.refresh()

    @property
    def current_key(self) -> object | None:
        """The key of the row under the cursor (None when empty)."""
        if not len(self.source):
            return None
        return self.source.key(min(self.cursor, len(self.source) - 1))

    def _row(self, index: int) -> Sequence[Cell] | None:
        block = index // BLOCK
        rows = self._cache.get(block)
        if rows is None:
            start = block * BLOCK
            stop = min(len(self.source), start + BLOCK)
            if getattr(self.source, "READS_IN_THREAD", False):
                if block not in self._loading:
                    self._loading.add(block)
                    self._read_block(self.source, block, start, stop)
                return None
            rows = self.source.rows(start, stop)
            self._store(block, rows)
        else:
            self._cache.move_to_end(block)
        off = index % BLOCK
        return rows[off] if off < len(rows) else None

    def _store(self, block: int, rows: list[Sequence[Cell]]) -> None:
        self.fetches += 1
        self._cache[block] = rows
        if len(self._cache) > MAX_BLOCKS:
            self._cache.popitem(last=False)

    def _read_block(self, source: RowSource, block: int, start: int, stop: int) -> None:
        """Read one block of an I/O source in a worker thread; it is shown when it arrives."""

        def read() -> None:
            rows = source.rows(start, stop)
            if not get_current_worker().is_cancelled:
                self.app.call_from_thread(self._block_read, source, block, rows)

        self.run_worker(read, thread=True, group=f"rows-{id(self)}", exit_on_error=False,
                        description=f"table {self.id or ''}: read rows {start}-{stop}")

    def _block_read(self, source: RowSource, block: int, rows: list[Sequence[Cell]]) -> None:
        if source is not self.source:
            return  # another listing replaced it meanwhile
        self._loading.discard(block)
        self._store(block, rows)
        self.refresh()
        n = len(source)
        if n and block * BLOCK <= self.cursor < (block + 1) * BLOCK:
            # Keys and records of these rows are known now: tell the screen about the row under the cursor.
            index = min(self.cursor, n - 1)
            self.post_message(self.Highlighted(self, index, source.key(index)))

    # -- rendering -----------------------------------------------------------------

    def _cells_to_segments(self, cells: Sequence[Cell], base: Style, header: bool = False) -> list[Segment]:
        segs: list[Segment] = []
        for col, cell in zip(self.columns, cells, strict=False):
            text, tone = (cell, None) if isinstance(cell, str) else cell
            text = text if len(text) <= col.width else text[: max(0, col.width - 1)] + "…"
            text = text.rjust(col.width) if col.align == "right" and not header else text.ljust(col.width)
            style = base
            if tone in _TONES:
                style = base + self.get_component_rich_style(f"virtual-table--{tone}", partial=True)
            segs.append(Segment(text, style))
            segs.append(Segment(" ", base))
        return segs

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        base = self.rich_style
        if y == 0:
            header = self.get_component_rich_style("virtual-table--header")
            segs = self._cells_to_segments([c.label for c in self.columns], header, header=True)
            return Strip(segs).crop_extend(scroll_x, scroll_x + width, header)
        index = scroll_y + y - 1
        if not len(self.source):
            if y == 1:
                empty = self.get_component_rich_style("virtual-table--empty")
                return Strip([Segment(self.empty_text, empty)]).crop_extend(0, width, base)
            return Strip.blank(width, base)
        if index >= len(self.source):
            return Strip.blank(width, base)
        cells = self._row(index)
        if cells is None:
            return Strip.blank(width, base)
        if index == len(self.source) - 1:
            self.last_row_rendered_at = time.monotonic()  # the benchmark waits for this
        if self.first_row_rendered_at is None:
            self.first_row_rendered_at = time.monotonic()
        style = base
        if index == self.cursor:
            style = base + self.get_component_rich_style("virtual-table--cursor", partial=True)
        return Strip(self._cells_to_segments(cells, style)).crop_extend(scroll_x, scroll_x + width, style)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self.refresh()

    # -- cursor ----------------------------------------------------------------------

    @property
    def _visible_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _scroll_cursor_into_view(self) -> None:
        top = int(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + self._visible_rows:
            self.scroll_to(y=self.cursor - self._visible_rows + 1, animate=False, immediate=True)

    def move_to(self, index: int) -> None:
        """Put the cursor on ``index`` (clamped) and tell the screen."""
        n = len(self.source)
        if not n:
            return
        self.cursor = max(0, min(n - 1, index))
        self._scroll_cursor_into_view()
        self.refresh()
        self.post_message(self.Highlighted(self, self.cursor, self.source.key(self.cursor)))

    def action_cursor(self, delta: int) -> None:
        self.move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor + direction * self._visible_rows)

    def action_first(self) -> None:
        self.move_to(0)

    def action_last(self) -> None:
        self.move_to(len(self.source) - 1)

    def action_pan(self, delta: int) -> None:
        self.scroll_to(x=self.scroll_x + delta, animate=False)

    def action_select(self) -> None:
        if len(self.source):
            self.post_message(self.Selected(self, self.cursor, self.source.key(self.cursor)))

    async def _on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            self.move_to(int(self.scroll_y) + event.y - 1)
