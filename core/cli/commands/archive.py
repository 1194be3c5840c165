"""`backstop archive`: packs only old snapshots use go to a colder storage class; `archive thaw` before a restore."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, completes, engine_command
from core.cli.output import EXIT_FAILED, EXIT_OK, err, print_json, size, warn
from core.errors import UsageError

if TYPE_CHECKING:
    from core.engine import Engine
    from core.ops.archive import ArchiveReport


async def cmd_archive(engine: Engine, args: argparse.Namespace) -> int:
    if args.action == "thaw":
        return await _thaw(engine, args)
    for opt in ("snapshot", "tier", "target", "days"):
        if getattr(args, opt) is not None:
            raise UsageError(f"--{opt} goes with `backstop archive thaw`")
    rep = await engine.archive(dry_run=args.dry_run)
    if args.json:
        print_json(rep.to_json())
    else:
        _print(rep)
    if not rep.ok:
        warn("some targets were not archived completely; see above, then run `backstop archive` again")
        return EXIT_FAILED
    return EXIT_OK


def _print(rep: ArchiveReport) -> None:
    verb = "would move" if rep.dry_run else "moved"
    for t in rep.targets:
        if t.skipped is not None:
            print(f"target {t.target}: SKIPPED: {t.skipped}")
            continue
        parts = [f"{t.old_packs} pack(s) used only by snapshots older than {t.after_days} day(s)"]
        if t.copied:
            parts.append(f"{'would copy' if rep.dry_run else 'copied'} {t.copied} it lacked ({size(t.copied_bytes)})")
        if t.storage_class:
            parts.append(f"{verb} {t.moved} to {t.storage_class} ({size(t.moved_bytes)}), "
                         f"{t.already} there already ({size(t.already_bytes)})")
        if t.returned:
            parts.append(f"{verb} {t.returned} a recent snapshot uses back to STANDARD ({size(t.returned_bytes)})")
        print(f"target {t.target}: " + "; ".join(parts))
        if t.frozen_recent:
            warn(f"target {t.target}: {t.frozen_recent} pack(s) a recent snapshot uses are in a class that must be "
                 "thawed; a restore of it reads them from another target or asks for `backstop archive thaw`")
        for p in t.problems:
            print(f"  PROBLEM {p}")
    for n in rep.notes:
        err(f"note: {n}")
    if rep.dry_run:
        err("dry run: nothing was changed")


async def _thaw(engine: Engine, args: argparse.Namespace) -> int:
    if args.snapshot is None:
        raise UsageError("archive thaw needs --snapshot ID (the snapshot you want to restore)")
    if args.dry_run:
        raise UsageError("--dry-run goes with `backstop archive`, not with thaw")
    rep = await engine.thaw(args.snapshot, args.tier or "Standard", args.target, args.days or 7)
    if args.json:
        print_json(rep.to_json())
    elif rep.note:
        print(rep.note)
    else:
        print(f"target {rep.target}: thaw asked for {rep.objects} object(s) ({size(rep.bytes)}): {rep.started} "
              f"started, {rep.running} already under way, {rep.ready} ready; expected {rep.expected}; readable for "
              f"{rep.days} day(s) once done, then run the restore")
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, "archive", engine_command(cmd_archive),
                    "move packs only old snapshots use to each target's storage_class (archive_after_days); "
                    "`archive thaw --snapshot ID` makes archived packs readable before a restore", common)
    p.add_argument("action", nargs="?", choices=["thaw"], help="thaw: ask S3 (restore_object) for readable copies")
    p.add_argument("--dry-run", action="store_true", help="only report what would change")
    completes(p.add_argument("--snapshot", metavar="ID", help="thaw: the snapshot to restore"), "snapshots")
    p.add_argument("--tier", choices=["Expedited", "Standard", "Bulk"],
                   help="thaw: retrieval tier (GLACIER: Expedited 1-5 min, Standard 3-5 h, Bulk 5-12 h; "
                        "DEEP_ARCHIVE: Standard 12 h, Bulk 48 h); default Standard")
    completes(p.add_argument("--target", metavar="NAME", help="thaw: on this target (default: the best one "
                                                               "holding archived copies)"), "targets")
    p.add_argument("--days", type=int, metavar="N", help="thaw: keep the readable copies N days (default 7)")
