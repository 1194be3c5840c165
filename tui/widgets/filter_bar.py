"""The `/` filter: an input that narrows the list below it as the operator types."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Input


class FilterBar(Input):
    """Hidden until `/`; enter keeps the filter, escape clears it. Both return to the list."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "clear_filter", "Clear filter", id="filter.clear"),
        Binding("enter", "keep_filter", "Keep filter", id="filter.keep"),
    ]

    class Done(Message):
        """The operator left the filter (kept or cleared)."""

        def __init__(self, bar: FilterBar) -> None:
            super().__init__()
            self.bar = bar

        @property
        def control(self) -> FilterBar:
            return self.bar

    def __init__(self, placeholder: str = "filter: words that must all appear", *, id: str | None = None) -> None:
        super().__init__(placeholder=placeholder, id=id, classes="filter-bar")
        self.display = False

    @property
    def words(self) -> tuple[str, ...]:
        """The filter as lower-case words."""
        return tuple(self.value.lower().split())

    def open(self) -> None:
        """Show and focus the bar."""
        self.display = True
        self.focus()

    def action_clear_filter(self) -> None:
        self.value = ""
        self.display = False
        self.post_message(self.Done(self))

    def action_keep_filter(self) -> None:
        self.display = bool(self.value)
        self.post_message(self.Done(self))
