"""A drill report as an auditor reads it: Markdown, one self-contained HTML file (with a chart), JSON.

Everything a report says comes from the :class:`DrillReport` and its MAC;
the HTML adds the database's restore-time history as an SVG chart drawn by
matplotlib (imported only when a chart is drawn: the CLI stays fast). The
HTML needs nothing from outside the file: inline CSS, inline SVG, no
scripts, fonts or images.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.drills.model import DrillReport
from core.format import duration, size, utc
from core.records import RestoreRecord

Entry = tuple[DrillReport, str | None, str | None]  # report, MAC, sealed object name


def to_json(entry: Entry) -> dict[str, Any]:
    """The JSON form: the report's own fields plus ``mac`` and ``sealed``."""
    report, mac, sealed = entry
    return {**report.to_json(), "mac": mac, "sealed": sealed}


# -- the facts, shared by both formats -------------------------------------------------------------------------


def _when(ts: float) -> str:
    return utc(ts, "%Y-%m-%d %H:%M:%S UTC")


def _share(part: float, total: float) -> str:
    if not total:
        return "-"
    pct = 100 * part / total
    return "<1%" if 0 < pct < 1 else f"{pct:.0f}%"


def _rto_line(r: DrillReport) -> str:
    within = "within" if r.recovery_s <= r.rto_s else "OVER"
    return f"{duration(r.recovery_s)} ({r.recovery_s:.1f} s) against an RTO of {duration(r.rto_s)}: {within} the RTO " \
           f"({_share(r.recovery_s, r.rto_s)} of it)"


def _snapshot_line(r: DrillReport) -> str:
    age = r.snapshot_age_s
    if age is None:
        return "none chosen (the drill failed before it chose one)"
    return f"{r.snapshot_id} (finished {r.snapshot_finished_at}; {duration(age)} old at drill time)"


def _facts(r: DrillReport) -> list[tuple[str, str]]:
    """(label, value) rows of the report's header table."""
    return [
        ("Verdict", r.verdict.upper()),
        ("Database", f"{r.db} ({r.kind} drill)"),
        ("Target tested", r.target),
        ("Snapshot", _snapshot_line(r)),
        ("Point in time reached", r.point_reached or "-"),
        ("Recovery time", _rto_line(r)),
        ("Started", _when(r.started_at)),
        ("Finished", f"{_when(r.finished_at)} ({duration(r.finished_at - r.started_at)} in all)"),
        ("Scheduled by", r.scheduled_by),
        ("Host", r.host or "-"),
        ("Backstop version", r.backstop_version or "-"),
        ("Scratch space", f"{r.scratch or '-'} ({'removed' if r.scratch_removed else 'NOT removed'})"),
    ]


def _sources(r: DrillReport) -> list[list[str]]:
    total = sum(float(s.get("bytes") or 0) for s in r.sources)
    return [[str(s.get("target", "?")), size(float(s.get("bytes") or 0)), _share(float(s.get("bytes") or 0), total),
             str(s.get("objects", "")), str(s.get("failed") or "")] for s in r.sources]


def _steps(r: DrillReport) -> list[list[str]]:
    total = sum(s.seconds for s in r.steps)
    return [[s.name, f"{s.seconds:.1f} s", _share(s.seconds, total)] for s in r.steps]


def _mac_line(mac: str | None, sealed: str | None) -> str:
    if not mac:
        return "not sealed (no MAC): this report cannot be verified"
    return f"HMAC-SHA256 {mac} (sealed as {sealed}; `backstop drill verify` checks it)"


# -- Markdown ------------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def markdown(entry: Entry, heading: str = "#") -> str:
    """The report as Markdown: facts, sources, checks, steps, the error if any, and the MAC."""
    r, mac, sealed = entry
    out = [f"{heading} Restore drill {r.id}: **{r.verdict.upper()}**", ""]
    out += _md_table(["", ""], [[f"**{k}**", v] for k, v in _facts(r)])
    if r.error:
        out += ["", f"**Error:** {_md_cell(r.error)}"]
    out += ["", f"{heading}# Read from", ""]
    out += _md_table(["Target", "Bytes", "Share", "Objects", "Failure"], _sources(r)) if r.sources else \
        ["(no data read)"]
    out += ["", f"{heading}# Checks", ""]
    out += _md_table(["Check", "Result", "Detail"], [[c.name, "pass" if c.ok else "FAIL", c.detail]
                                                    for c in r.checks]) if r.checks else ["(no checks ran)"]
    out += ["", f"{heading}# Steps", ""]
    out += _md_table(["Step", "Time", "Share"], _steps(r)) if r.steps else ["(no steps recorded)"]
    out += ["", f"**MAC:** {_mac_line(mac, sealed)}", ""]
    return "\n".join(out)


# -- HTML ------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:62em;
color:#1d1d1f;line-height:1.4;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;width:100%}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f2f2f2}
.verdict{font-size:1.6em;font-weight:bold;padding:.4em .8em;border-radius:.3em;display:inline-block;margin:.3em 0}
.passed{background:#e3f5e1;color:#15561b;border:2px solid #2e7d32}.failed{background:#fde8e8;color:#8a1111;
border:2px solid #c62828}td.fail{color:#b71c1c;font-weight:bold}td.pass{color:#1b5e20}
.mac{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;word-break:break-all}
.chart svg{width:100%;height:auto}.drill{page-break-before:always;margin-top:2.5em}
@media print{.drill{margin-top:0}}
"""


def _h(text: object) -> str:
    return html.escape(str(text))


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: Sequence[str | None] = ()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_h(c)}</th>" for c in head) + "</tr>"]
    for i, row in enumerate(rows):
        c = cls[i] if i < len(cls) else None
        out.append("<tr>" + "".join(f"<td{f' class={c!r}' if c and j == 1 else ''}>{_h(v)}</td>"
                                    for j, v in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _html_body(entry: Entry, chart: str | None, level: int = 1) -> str:
    r, mac, sealed = entry
    h1, h2 = f"h{level}", f"h{level + 1}"
    parts = [f"<{h1}>Restore drill {_h(r.id)}</{h1}>",
             f"<div class='verdict {'passed' if r.passed else 'failed'}'>{_h(r.verdict.upper())}</div>",
             "<table>" + "".join(f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in _facts(r)[1:]) + "</table>"]
    if r.error:
        parts.append(f"<p><strong>Error:</strong> {_h(r.error)}</p>")
    parts.append(f"<{h2}>Read from</{h2}>")
    parts.append(_html_table(["Target", "Bytes", "Share", "Objects", "Failure"], _sources(r)) if r.sources
                 else "<p>(no data read)</p>")
    parts.append(f"<{h2}>Checks</{h2}>")
    parts.append(_html_table(["Check", "Result", "Detail"],
                             [[c.name, "pass" if c.ok else "FAIL", c.detail] for c in r.checks],
                             ["pass" if c.ok else "fail" for c in r.checks]) if r.checks
                 else "<p>(no checks ran)</p>")
    parts.append(f"<{h2}>Steps</{h2}>")
    parts.append(_html_table(["Step", "Time", "Share"], _steps(r)) if r.steps else "<p>(no steps recorded)</p>")
    if chart:
        parts.append(f"<{h2}>Recovery time of {_h(r.db)} over time</{h2}><div class='chart'>{chart}</div>")
    parts.append(f"<{h2}>Seal</{h2}><p class='mac'>MAC: {_h(_mac_line(mac, sealed))}</p>")
    return "\n".join(parts)


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_h(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def html_report(entry: Entry, history: Sequence[DrillReport] = (), restores: Sequence[RestoreRecord] = ()) -> str:
    """The report as one self-contained HTML file, with the database's recovery-time history as an inline SVG."""
    r = entry[0]
    past = [d for d in history if d.db == r.db and d.started_at <= r.started_at]
    if not any(d.id == r.id for d in past):
        past.append(r)
    chart = chart_svg(r.db, past, [x for x in restores if x.started_at <= r.finished_at], r.rto_s, highlight=r.id)
    return _page(f"Restore drill {r.id}: {r.verdict}", _html_body(entry, chart))


# -- the chart -------------------------------------------------------------------------------------------------

_XML_PROLOGUE = re.compile(r"^.*?(?=<svg)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def chart_svg(db: str, drills: Sequence[DrillReport], restores: Sequence[RestoreRecord], rto_s: float,
              highlight: str | None = None) -> str:
    """Recovery time of each drill (and measured restore) of ``db`` over time, the RTO as a line; inline SVG."""
    from matplotlib import rcParams
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
    from matplotlib.figure import Figure

    rcParams["svg.hashsalt"] = "backstop"  # stable element ids: the same report renders the same bytes
    fig = Figure(figsize=(8, 3), dpi=100)
    ax = fig.add_subplot()

    def t(ts: float) -> float:
        return float(date2num(datetime.fromtimestamp(ts, UTC)))

    scale, unit = (60.0, "min") if max([rto_s, *(d.recovery_s for d in drills)], default=0) >= 120 else (1.0, "s")
    ordered = sorted(drills, key=lambda d: d.started_at)
    if ordered:
        ax.plot([t(d.started_at) for d in ordered], [d.recovery_s / scale for d in ordered], color="#607d8b",
                linewidth=1, zorder=1)
    ok = [d for d in ordered if d.passed]
    bad = [d for d in ordered if not d.passed]
    if ok:
        ax.scatter([t(d.started_at) for d in ok], [d.recovery_s / scale for d in ok], color="#2e7d32", zorder=3,
                   label="drill passed")
    if bad:
        ax.scatter([t(d.started_at) for d in bad], [d.recovery_s / scale for d in bad], color="#c62828", marker="x",
                   zorder=3, label="drill failed")
    measured = [x for x in restores if x.db == db and x.ok and not x.is_drill]
    if measured:
        ax.scatter([t(x.started_at) for x in measured], [x.duration_s / scale for x in measured], color="#90a4ae",
                   s=12, zorder=2, label="restore")
    mine = next((d for d in ordered if d.id == highlight), None)
    if mine is not None:
        ax.scatter([t(mine.started_at)], [mine.recovery_s / scale], s=160, facecolors="none", edgecolors="#1565c0",
                   linewidths=2, zorder=4, label="this drill")
    if rto_s > 0:
        ax.axhline(rto_s / scale, color="#c62828", linestyle="--", linewidth=1.2, label=f"RTO {duration(rto_s)}")
    ax.set_ylim(bottom=0)
    ax.set_ylabel(f"recovery time ({unit})")
    ax.set_title(f"{db}: recovery time per drill (UTC)", fontsize=10)
    ax.xaxis_date(UTC)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    # The XML prologue names an external DTD and the metadata links to licence URLs: neither belongs inline.
    return _METADATA.sub("", _XML_PROLOGUE.sub("", buf.getvalue(), count=1))


# -- a quarter -------------------------------------------------------------------------------------------------


@dataclass
class QuarterSummary:
    """What a quarter's drills prove, for the summary at the top of the document."""

    quarter: str
    drills: int
    passed: int
    proven: dict[str, bool] = field(default_factory=dict)  # target -> a passing drill read it
    worst: DrillReport | None = None  # the drill whose recovery time came closest to (or went over) its RTO

    def to_json(self) -> dict[str, Any]:
        w = self.worst
        return {"quarter": self.quarter, "drills": self.drills, "passed": self.passed, "proven": self.proven,
                "worst": None if w is None else {"id": w.id, "db": w.db, "recovery_s": w.recovery_s, "rto_s": w.rto_s}}


def _proved(r: DrillReport, target: str) -> bool:
    """A passing drill proves the target it was meant to prove when that target served its data."""
    if not r.passed or r.target != target:
        return False
    served = [s for s in r.sources if s.get("target") == target]
    return not r.sources or any(float(s.get("bytes") or 0) > 0 for s in served)


def summarise(quarter: str, reports: Sequence[DrillReport], targets: Sequence[str]) -> QuarterSummary:
    """Pass count, which targets a passing drill proved, and the worst recovery time against its RTO."""
    names = list(dict.fromkeys([*targets, *(r.target for r in reports)]))
    worst = max(reports, key=lambda r: r.recovery_s / r.rto_s if r.rto_s else float("inf"), default=None)
    return QuarterSummary(quarter, len(reports), sum(r.passed for r in reports),
                          {t: any(_proved(r, t) for r in reports) for t in names}, worst)


def _summary_rows(reports: Sequence[DrillReport]) -> list[list[str]]:
    return [[r.id, r.db, r.kind, r.target, utc(r.started_at, "%Y-%m-%d %H:%M"), duration(r.recovery_s),
             duration(r.rto_s), r.verdict.upper()] for r in reports]


_SUMMARY_HEAD = ["Drill", "Database", "Kind", "Target", "Started (UTC)", "Recovery", "RTO", "Verdict"]


def _worst_line(s: QuarterSummary) -> str:
    w = s.worst
    if w is None:
        return "no drills"
    return f"{w.id} ({w.db}): {_rto_line(w)}"


def quarter_markdown(s: QuarterSummary, entries: Sequence[Entry]) -> str:
    """A quarter's drills in one Markdown document: the summary, then each report."""
    reports = [e[0] for e in entries]
    out = [f"# Restore drills, {s.quarter}", "",
           f"**{s.passed} of {s.drills} drill(s) passed.**", "",
           f"Worst recovery time against the RTO: {_worst_line(s)}", "", "## Targets", ""]
    out += _md_table(["Target", "Proven this quarter"], [[t, "yes" if ok else "NO"] for t, ok in s.proven.items()])
    out += ["", "## Drills", ""]
    out += _md_table(_SUMMARY_HEAD, _summary_rows(reports)) if reports else ["(no drills in this quarter)"]
    for e in entries:
        out += ["", markdown(e, heading="##")]
    return "\n".join(out)


def quarter_html(s: QuarterSummary, entries: Sequence[Entry], history: Sequence[DrillReport],
                 restores: Sequence[RestoreRecord] = ()) -> str:
    """A quarter's drills in one self-contained HTML file, with one recovery-time chart per database."""
    reports = [e[0] for e in entries]
    parts = [f"<h1>Restore drills, {_h(s.quarter)}</h1>",
             f"<div class='verdict {'passed' if s.passed == s.drills and s.drills else 'failed'}'>"
             f"{s.passed} of {s.drills} drill(s) passed</div>",
             f"<p>Worst recovery time against the RTO: {_h(_worst_line(s))}</p>",
             "<h2>Targets</h2>",
             _html_table(["Target", "Proven this quarter"], [[t, "yes" if ok else "NO"] for t, ok in s.proven.items()],
                         ["pass" if ok else "fail" for ok in s.proven.values()]),
             "<h2>Drills</h2>",
             _html_table(_SUMMARY_HEAD, _summary_rows(reports)) if reports else "<p>(no drills in this quarter)</p>"]
    for db in sorted({r.db for r in reports}):
        mine = [r for r in reports if r.db == db]
        rto = max(r.rto_s for r in mine)
        drills = {d.id: d for d in [*history, *mine] if d.db == db}
        parts.append(f"<h2>Recovery time of {_h(db)}</h2><div class='chart'>"
                     f"{chart_svg(db, list(drills.values()), restores, rto)}</div>")
    for e in entries:
        parts.append(f"<section class='drill'>{_html_body(e, None, level=2)}</section>")
    return _page(f"Restore drills, {s.quarter}", "\n".join(parts))
