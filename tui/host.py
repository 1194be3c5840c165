"""What a console screen may ask of the console that shows it (the app implements it).

Screens depend on this protocol, never on ``tui.app``: the app imports the
screens, builds them with itself as their host, and drives them through
``ConsoleScreen``'s methods; a screen asks for actions that involve other
screens by posting a message (``tui.messages``). So app -> screens is the
only direction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from core.engine import Engine


class ConsoleHost(Protocol):
    """The console as its screens see it."""

    engine: Engine  # every action and every catalog read goes through it (reads: engine.queries, in threads)
    clock: Callable[[], float]  # the console's clock (fixed in snapshot tests)
    cursor_blink: bool
    operator: str  # who acts (audited, and asked for codes)

    def goto(self, mode: str) -> None:
        """Show a numbered screen by mode name."""
        ...

    def go_back(self) -> None:
        """Back to the previous numbered screen."""
        ...

    def console_jobs(self) -> Mapping[str, str]:
        """Jobs this console started and that still run: id -> kind."""
        ...
