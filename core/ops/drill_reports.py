"""`backstop drill report` and `drill verify`: a drill's report rendered, a quarter gathered, a seal checked."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime

from core.context import EngineContext
from core.drills import report as render
from core.drills import seal
from core.drills.model import DrillReport
from core.errors import NotFound, UsageError
from core.repository.repo import DRILL_PREFIX

FORMATS = ("md", "html", "json")
_QUARTER = re.compile(r"(\d{4})[Qq]([1-4])")
_ALL = 1_000_000  # every drill: a few a quarter per database


def quarter_bounds(text: str) -> tuple[str, float, float]:
    """``2026Q4`` -> (label, start, end) in Unix time, UTC, end exclusive; UsageError when malformed."""
    m = _QUARTER.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"--quarter takes a year and a quarter 1-4 such as 2026Q4, not {text!r}")
    year, q = int(m.group(1)), int(m.group(2))
    start = datetime(year, 3 * q - 2, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC) if q == 4 else datetime(year, 3 * q + 1, 1, tzinfo=UTC)
    return f"{year}Q{q}", start.timestamp(), end.timestamp()


def _match(ref: str, ids: list[str]) -> str | None:
    """The one id ``ref`` names (exactly or as a unique prefix); None when none; UsageError when several."""
    if ref in ids:
        return ref
    hits = sorted(i for i in ids if i.startswith(ref))
    if len(hits) > 1:
        shown = ", ".join(hits[:4]) + (", ..." if len(hits) > 4 else "")
        raise UsageError(f"drill id {ref!r} matches {len(hits)} reports ({shown}); give more of it")
    return hits[0] if hits else None


def resolve(ctx: EngineContext, ref: str) -> str:
    """A drill id from an id or a unique prefix of one, as the catalog lists them."""
    found = _match(ref, [r.id for r in ctx.catalog.drills(limit=_ALL)]) if ref else None
    if found is None:
        raise NotFound(f"no drill report {ref!r} in the catalog; `backstop drill list` shows them (after a lost "
                       "catalog, `backstop catalog rebuild` brings them back from the repository)")
    return found


async def _resolve_anywhere(ctx: EngineContext, ref: str) -> str:
    """Like :func:`resolve`, but also among the sealed copies in the repository (a lost catalog)."""
    try:
        return resolve(ctx, ref)
    except NotFound:
        pass
    repo = await ctx.open_repository(require_all=False)
    ids = {n[len(DRILL_PREFIX):] for n in await repo.names_anywhere(DRILL_PREFIX)}
    found = _match(ref, sorted(ids)) if ref else None
    if found is None:
        raise NotFound(f"no drill report {ref!r} in the catalog or the repository; `backstop drill list` shows them")
    return found


def _entry(ctx: EngineContext, drill_id: str) -> render.Entry:
    row = ctx.catalog.drill(drill_id)
    if row is None:
        raise NotFound(f"no drill report {drill_id!r} in the catalog; `backstop catalog rebuild` brings reports back "
                       "from the repository")
    return row


async def report_document(ctx: EngineContext, ref: str | None = None, quarter: str | None = None,
                          db: str | None = None, fmt: str = "md") -> str:
    """One drill's report (``ref``) or a quarter's drills (of ``db``), as Markdown, HTML or JSON text."""
    if fmt not in FORMATS:
        raise UsageError(f"--format takes one of {', '.join(FORMATS)}, not {fmt!r}")
    if (ref is None) == (quarter is None):
        raise UsageError("drill report takes either a drill ID or --quarter YEARQN (such as 2026Q4)")
    if quarter is None:
        if db is not None:
            raise UsageError("--db goes with --quarter (a drill ID names its database already)")
        assert ref is not None
        return await _one(ctx, _entry(ctx, resolve(ctx, ref)), fmt)
    label, start, end = quarter_bounds(quarter)
    if db is not None:
        ctx.config.database(db)  # a ConfigError naming the configured databases
    reports = sorted(ctx.catalog.drills(db=db, since=start, until=end, limit=_ALL), key=lambda r: r.started_at)
    entries = [_entry(ctx, r.id) for r in reports]
    summary = render.summarise(label, reports, [t.name for t in ctx.config.targets])
    if fmt == "json":
        return json.dumps({**summary.to_json(), "db": db, "reports": [render.to_json(e) for e in entries]}, indent=1)
    if fmt == "md":
        return render.quarter_markdown(summary, entries)
    history: list[DrillReport] = []
    restores = []
    for name in sorted({r.db for r in reports}):
        history += ctx.catalog.drills(db=name, until=end, limit=_ALL)
        restores += ctx.catalog.restores(name)
    return await asyncio.to_thread(render.quarter_html, summary, entries, history, restores)


async def _one(ctx: EngineContext, entry: render.Entry, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(render.to_json(entry), indent=1)
    if fmt == "md":
        return render.markdown(entry)
    db = entry[0].db
    history = ctx.catalog.drills(db=db, limit=_ALL)
    return await asyncio.to_thread(render.html_report, entry, history, ctx.catalog.restores(db))


async def verify(ctx: EngineContext, ref: str) -> seal.DrillVerification:
    """Check a report's MAC and its sealed copies (by id or unique prefix; also when the catalog lost it)."""
    return await seal.verify(ctx, await _resolve_anywhere(ctx, ref))


async def publish(ctx: EngineContext, report: DrillReport) -> tuple[str, str]:
    """Record, MAC and seal a finished drill's report into the repository; (mac, object name)."""
    return await seal.publish(ctx, report)
