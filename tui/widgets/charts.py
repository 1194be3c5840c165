"""Text charts that read without colour: horizontal bars with an optional target line."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from textual.widget import Widget


class BarChart(Widget):
    """Labelled horizontal bars; a `│` marks the target (e.g. the RTO) on every row."""

    DEFAULT_CSS = """
    BarChart { height: auto; }
    """
    COMPONENT_CLASSES = {"bar-chart--bar", "bar-chart--over", "bar-chart--target", "bar-chart--label"}

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.rows: list[tuple[str, float, str]] = []  # label, value, value text
        self.target: float | None = None
        self.target_label = ""

    def set_data(self, rows: Sequence[tuple[str, float, str]], target: float | None = None,
                 target_label: str = "") -> None:
        """Replace the bars (label, value, shown value) and the target line."""
        self.rows = list(rows)
        self.target = target
        self.target_label = target_label
        self.styles.height = max(1, len(self.rows) + (1 if target is not None else 0))
        self.refresh(layout=True)

    def render(self) -> _Bars:
        return _Bars(self)


class _Bars:
    def __init__(self, chart: BarChart) -> None:
        self.chart = chart

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        c = self.chart
        width = options.max_width
        if not c.rows:
            yield Segment("no data yet\n")
            return
        label_w = min(18, max(len(r[0]) for r in c.rows))
        value_w = max(len(r[2]) for r in c.rows)
        bar_w = max(4, width - label_w - value_w - 3)
        top = max([r[1] for r in c.rows] + ([c.target * 1.1] if c.target else []))
        top = top or 1.0
        mark = int(round(c.target / top * (bar_w - 1))) if c.target else None
        bar_style: Style = c.get_component_rich_style("bar-chart--bar")
        over_style: Style = c.get_component_rich_style("bar-chart--over")
        target_style: Style = c.get_component_rich_style("bar-chart--target")
        label_style: Style = c.get_component_rich_style("bar-chart--label")
        for label, value, text in c.rows:
            n = int(round(value / top * bar_w))
            over = c.target is not None and value > c.target
            yield Segment(label[:label_w].ljust(label_w) + " ", label_style)
            for i in range(bar_w):
                if i == mark:
                    yield Segment("│", target_style)
                elif i < n:
                    # Bars over the target are drawn with another glyph, not only another colour.
                    yield Segment("▓" if over else "█", over_style if over else bar_style)
                else:
                    yield Segment(" ")
            yield Segment(" " + text.rjust(value_w) + "\n")
        if c.target is not None and mark is not None:
            yield Segment(" " * (label_w + 1 + mark) + "└ " + c.target_label + "\n", target_style)
