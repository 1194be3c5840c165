"""Everything the commands share for output: tables, JSON, sizes and times, one-line messages, exit codes,
the escaping of stored text, and the progress display.

Data goes to stdout, messages to stderr, each a single line. Nothing heavy
is imported at module level (``rich`` only once a progress bar is drawn):
building the parser and ``--help`` must stay fast.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from core.errors import BackstopError

# Sizes, durations and times are written the same way everywhere (CLI, console, messages).
from core.format import config_duration, duration, size, utc  # noqa: F401  (re-exported for the commands)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_INTERRUPTED = 130


# -- messages ----------------------------------------------------------------------------------------------


def err(msg: str) -> None:
    """One line on stderr, prefixed ``backstop:``."""
    print(f"backstop: {msg}", file=sys.stderr)


def warn(msg: str) -> None:
    """One ``backstop: warning: ...`` line on stderr (above the progress bar when one is shown)."""
    line = f"backstop: warning: {msg}"
    if _live is not None and _live.print_above(line):
        return
    print(line, file=sys.stderr)


def printable(text: str) -> str:
    """Control characters shown escaped: a stored value must never forge or rewrite a line on the terminal."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


# -- data ----------------------------------------------------------------------------------------------------


def print_json(data: Any, indent: int | None = None) -> None:
    """``--json`` output: one JSON document on stdout."""
    print(json.dumps(data, indent=indent))


class Column(NamedTuple):
    """One column of a fixed-width table; the last one usually has no width."""

    title: str
    width: int | None = None
    align: str = "<"
    gap: str = ""  # printed before the column


def table_line(columns: Sequence[Column], values: Sequence[object]) -> str:
    """One line of a table (the header when ``values`` are the titles)."""
    return "".join(c.gap + (format(str(v), f"{c.align}{c.width}") if c.width else str(v))
                   for c, v in zip(columns, values, strict=True))


def print_table(columns: Sequence[Column], rows: Iterable[Sequence[object]]) -> None:
    """A header line and one line per row, on stdout."""
    print(table_line(columns, [c.title for c in columns]))
    for row in rows:
        print(table_line(columns, row))


# -- exit codes ---------------------------------------------------------------------------------------------


class Terminated(Exception):
    """SIGTERM arrived: the command was cancelled and has cleaned up."""


def exit_code_for(exc: BaseException) -> int | None:
    """Print the one line an error deserves and return the exit status; None for an unexpected error.

    0 success, 1 the operation failed, 2 usage or configuration error
    (:class:`BackstopError` carries its own), 143 stopped by SIGTERM, 130 Ctrl-C.
    """
    if isinstance(exc, BackstopError):
        err(str(exc))
        return exc.exit_code
    if isinstance(exc, Terminated):
        err("terminated (SIGTERM): the command was stopped and cleaned up; nothing half-done was left visible")
        return EXIT_TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        err("interrupted; nothing was committed by the interrupted command")
        return EXIT_INTERRUPTED
    if isinstance(exc, sqlite3.Error):
        err(f"the catalog database failed ({exc}); if it was damaged or edited, "
            "`backstop catalog rebuild` rebuilds it from the repository")
        return EXIT_FAILED
    return None


# -- progress -------------------------------------------------------------------------------------------------

_live: ProgressDisplay | None = None  # the display currently drawn, if any


class ProgressDisplay:
    """Job progress on stderr while a command runs: subscribe it to the engine's event bus.

    On a terminal: a rich progress bar per running job (phase, bar, bytes
    done/total, rate, time left), cleared when the job ends. Warnings are
    printed above it as one ``backstop: warning: ...`` line each. When
    stderr is not a terminal, nothing but the warnings is printed.
    """

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __call__(self, ev: Any) -> None:
        from core.events import JobFinished, JobWarning, PhaseChanged, Progress

        if isinstance(ev, JobWarning):
            warn(ev.message)
            return
        if not self.enabled:
            return
        if isinstance(ev, PhaseChanged):
            self._update(ev.job_id, description=ev.phase, completed=0, total=None, rate=0.0)
        elif isinstance(ev, Progress):
            self._update(ev.job_id, description=ev.phase, completed=ev.bytes_done, total=ev.bytes_total or None,
                         rate=ev.rate)
        elif isinstance(ev, JobFinished):
            task = self._tasks.pop(ev.job_id, None)
            if task is not None and self._progress is not None:
                self._progress.remove_task(task)
            if not self._tasks:
                self.stop()  # before the command prints its result on stdout

    def _update(self, job_id: str, **fields: Any) -> None:
        global _live
        if self._progress is None:
            self._progress = _new_progress()
            self._progress.start()
            self._tasks.clear()
            _live = self
        task = self._tasks.get(job_id)
        if task is None:
            task = self._tasks[job_id] = self._progress.add_task(fields["description"], total=None, rate=0.0)
        self._progress.update(task, **fields)

    def print_above(self, line: str) -> bool:
        """Print a line above the bars; False when nothing is drawn."""
        if self._progress is None:
            return False
        from rich.text import Text

        self._progress.console.print(Text(line), soft_wrap=True)
        return True

    def stop(self) -> None:
        """Clear the bars (they reappear with the next progress event)."""
        global _live
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if _live is self:
            _live = None


@contextmanager
def progress_paused() -> Iterator[None]:
    """Clear the progress display while the terminal is needed for something else (a prompt)."""
    if _live is not None:
        _live.stop()
    yield


def _new_progress() -> Any:
    """A rich Progress on stderr: phase, bar, bytes done/total, rate and time left (engine's smoothed rate)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
    from rich.text import Text

    class _Column(ProgressColumn):
        def __init__(self, render: Any) -> None:
            super().__init__()
            self._render_text = render

        def render(self, task: Any) -> Text:
            return Text(self._render_text(task))

    def done(task: Any) -> str:
        return size(task.completed) + (f"/{size(task.total)}" if task.total else "")

    def rate(task: Any) -> str:
        r = task.fields.get("rate") or 0.0
        return f"{size(r)}/s" if r > 0 else ""

    def eta(task: Any) -> str:
        r = task.fields.get("rate") or 0.0
        if not task.total or r <= 0:
            return ""
        return f"ETA {duration(max(0.0, task.total - task.completed) / r)}"

    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), _Column(done), _Column(rate),
                    _Column(eta), console=Console(file=sys.stderr), transient=True,
                    # stdout carries data: never through rich. Stray stderr lines go above the bars.
                    redirect_stdout=False, redirect_stderr=True)


# -- reports shared by commands and the demo ------------------------------------------------------


SNAPSHOT_COLUMNS = (Column("ID", 10), Column("DATABASE", 16), Column("KIND", 9), Column("STATUS", 11),
                    Column("FINISHED (UTC)", 27), Column("SIZE", 11, ">"), Column("NEW", 11, ">"),
                    Column("TARGETS", gap="  "), Column("WAL", gap="  "))


def snapshot_rows(rows: Iterable[Any]) -> Iterator[list[object]]:
    """Rows of the `backstop snapshots` table (SnapshotRecords); a physical snapshot's WAL range last."""
    for r in rows:
        wal = f"{r.start_lsn}-{r.stop_lsn} tli {r.timeline}" if getattr(r, "start_lsn", None) else ""
        yield [r.short_id, r.db, r.kind, getattr(r, "status", "restorable"), r.finished_at, size(r.size_bytes),
               size(r.stored_bytes), ",".join(r.targets), wal]


def check_lines(res: Any) -> Iterator[str]:
    """The `backstop check` report (a CheckResult), line by line: per target, then the catalog."""
    for r in res.reports:
        if r.unreachable is not None:
            yield f"target {r.target}: UNREACHABLE (not checked): {r.unreachable}"
            continue
        state = "ok" if r.ok else f"{len(r.problems)} problem(s)"
        yield (f"target {r.target}: {state}; {r.objects_checked} objects, {size(r.bytes_read)} read, "
               f"{len(r.snapshots)} snapshot(s)")
        yield from (f"  DAMAGED {p}" for p in r.problems)
        yield from (f"  note: {n}" for n in r.notes)
    yield from (f"catalog: {p}" for p in res.catalog_problems)
    yield from (f"note: {n}" for n in res.notes)
