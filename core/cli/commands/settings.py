"""`backstop settings diff|approve|show`: schedules, retention and encryption edits wait for an approval."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, add_group, engine_command, identity
from core.cli.output import EXIT_OK, err, print_json, printable, warn

if TYPE_CHECKING:
    from core.engine import Engine
    from core.settings.effective import EffectiveSettings
    from core.settings.sections import SectionChange


def _dump(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, list):
        return [_dump(v) for v in value]
    dump = getattr(value, "model_dump", None)
    return dump(mode="json", exclude_none=True) if dump is not None else value


async def _current(engine: Engine) -> EffectiveSettings:
    from core.errors import UsageError

    eff = await engine.apply_settings(verify=True)
    if eff is None:
        raise UsageError("no config file to compare with: pass --config PATH")
    for note in eff.notes:
        warn(note)
    return eff


def _approved_line(eff: EffectiveSettings) -> str:
    from core.format import utc

    rec = eff.record
    if rec is None:
        return "no settings approved yet"
    when = utc(rec.approved_at, "%Y-%m-%d %H:%M UTC") if rec.approved_at else "unknown time"
    return f"settings version {rec.version}, approved by {rec.approved_by or 'unknown'} at {when}"


def _print_change(c: SectionChange, removals: dict[str, list[str]]) -> None:
    role = c.action.required_role
    print(printable(f"{c.section}: changed (approving needs role {role}{' or admin' if role == 'operator' else ''})"))
    for line in c.lines:
        print(printable(f"  {line}"))
    if c.database is not None and c.database in removals:
        ids = removals[c.database]
        print(f"  the new rules would remove {len(ids)} snapshot(s) now"
              + (f": {', '.join(i[:8] for i in ids)}" if ids else ""))


async def cmd_diff(engine: Engine, args: argparse.Namespace) -> int:
    eff = await _current(engine)
    removals = engine.settings_removals(eff.pending)
    if args.json:
        doc: dict[str, Any] = eff.to_json()
        doc["would_remove"] = removals
        print_json(doc)
        return EXIT_OK
    if not eff.enforced:
        print("no pending change: no operator is enrolled, so the config's settings apply as written")
        return EXIT_OK
    if not eff.pending:
        print(f"no pending change ({_approved_line(eff)})")
        return EXIT_OK
    print(f"in force: {_approved_line(eff)}; the config file differs:")
    for c in eff.pending:
        _print_change(c, removals)
    err("until `backstop settings approve` (with a fresh one-time code), the approved settings stay in force")
    return EXIT_OK


async def cmd_approve(engine: Engine, args: argparse.Namespace) -> int:
    import sys

    pending = engine.settings.pending if engine.settings else []
    if pending and args.otp is None and sys.stdin.isatty():
        # Whoever types the code sees what it approves (the audit entry records the same diff).
        for c in pending:
            for line in c.lines:
                err(printable(f"approving {line}"))
    approval = await engine.approve_settings(identity(args))
    for w in approval.warnings:
        warn(w)
    if args.json:
        print_json({"approved": [c.to_json() for c in approval.changes], "version": approval.version,
                    "enforced": approval.enforced})
    elif not approval.enforced:
        print("no pending change: no operator is enrolled, so the config's settings apply as written")
    elif not approval.changes:
        print(f"no pending change (settings version {approval.version} is in force)")
    else:
        print(printable(f"approved {', '.join(c.section for c in approval.changes)}: "
                        f"settings version {approval.version} is in force"))
    return EXIT_OK


async def cmd_show(engine: Engine, args: argparse.Namespace) -> int:
    cfg = engine.config  # the config the engine uses: the file with the approved sections
    doc = {
        "schedules": _dump(getattr(cfg, "schedules", None)),
        "encryption": _dump(cfg.encryption),
        "retention": {d.name: _dump(getattr(d, "retention", None)) for d in cfg.databases},
        "pending": [c.section for c in engine.settings.pending] if engine.settings else [],
    }
    if args.json:
        print_json(doc)
        return EXIT_OK
    import json

    for key in ("schedules", "encryption", "retention"):
        print(printable(f"{key}: {json.dumps(doc[key], sort_keys=True)}"))
    if doc["pending"]:
        print(printable(f"pending approval: {', '.join(doc['pending'])}"))  # type: ignore[arg-type]
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    s = add_group(sub, "settings", "schedules, retention and encryption: what is in force, edits awaiting approval",
                  common)
    p = add_command(s, "diff", engine_command(cmd_diff),
                    "show how the config file's schedules/retention/encryption differ from the approved ones", common)
    p.set_defaults(settings_command=True)
    p = add_command(s, "approve", engine_command(cmd_approve),
                    "put the config file's schedules/retention/encryption in force (role and one-time code)", common)
    p.set_defaults(settings_command=True)
    p = add_command(s, "show", engine_command(cmd_show),
                    "the schedules, retention and encryption settings in force", common)
