"""What every console screen shares: title line, footer, refresh on catalog change."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Static

from tui.bridge import JobChanged, JobProgressed
from tui.host import ConsoleHost

if TYPE_CHECKING:
    from core.engine import Engine
    from core.queries import Queries


class ConsoleScreen(Screen[None]):
    """A numbered screen of the console.

    The console builds it with itself as ``host``. Catalog reads go through
    ``self.queries`` and always run in a worker thread (``@work(thread=True)``
    or ``asyncio.to_thread``), never on the event loop.
    """

    NUMBER = 0
    SCREEN_TITLE = ""

    def __init__(self, host: ConsoleHost) -> None:
        super().__init__()
        self.host = host
        self.stale = True  # the catalog changed while this screen was not shown

    @property
    def engine(self) -> Engine:
        return self.host.engine

    @property
    def queries(self) -> Queries:
        """The engine's read-only catalog queries (blocking: call them from a thread)."""
        return self.host.engine.queries

    def now(self) -> float:
        """The console's clock (fixed in snapshot tests)."""
        return self.host.clock()

    def title_bar(self) -> Static:
        """The one-line title: screen number and name, and a status on the right."""
        return Static(f" {self.NUMBER} {self.SCREEN_TITLE}", id="screen-title", classes="screen-title")

    def footer(self) -> Footer:
        return Footer(compact=True)

    def set_status(self, text: str) -> None:
        """Text at the right of the title line."""
        self.query_one("#screen-title", Static).update(f" {self.NUMBER} {self.SCREEN_TITLE}  ·  {text}")

    def compose(self) -> ComposeResult:
        yield self.title_bar()
        yield from self.compose_body()
        yield self.footer()

    def compose_body(self) -> ComposeResult:
        """The screen's own widgets (between title and footer)."""
        return iter(())

    def on_screen_resume(self) -> None:
        if self.stale:
            self.stale = False
            self.reload()

    def catalog_changed(self) -> None:
        """The catalog changed while this screen is shown: re-read what it displays."""
        self.reload()

    def reload(self) -> None:
        """Re-read the screen's data (in a worker)."""

    def job_progress(self, msg: JobProgressed) -> None:
        """Newest progress of a job this console runs (coalesced)."""

    def job_changed(self, msg: JobChanged) -> None:
        """A job this console runs started, warned, changed phase or finished."""
