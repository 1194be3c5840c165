"""`backstop init`, `check`, `repair` (copies, index) and `unlock`: the repository itself."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, completes, engine_command, identity
from core.cli.output import EXIT_FAILED, EXIT_OK, check_lines, err, print_json, printable, size

if TYPE_CHECKING:
    from core.engine import Engine


async def cmd_init(engine: Engine, args: argparse.Namespace) -> int:
    res = await engine.init()
    if args.json:
        print_json({"repo_id": res.repo_id, "created_on": res.created_on, "existing_on": res.existing_on,
                    "repaired_on": res.repaired_on})
    else:
        for t in res.created_on:
            print(f"created repository {res.repo_id[:8]} on target {t}")
        for t in res.existing_on:
            if t in res.repaired_on:
                print(f"target {t} repaired: {res.repaired_on[t]}")
            else:
                print(f"target {t} already holds repository {res.repo_id[:8]} (its config and keys open with this "
                      "passphrase)")
    return EXIT_OK


async def cmd_check(engine: Engine, args: argparse.Namespace) -> int:
    res = await engine.check(read_data=args.read_data, target=args.target)
    if args.json:
        print_json({"ok": res.ok, "read_data": res.read_data, "targets": [
            {"target": r.target, "ok": r.ok, "reachable": r.unreachable is None, "objects_checked": r.objects_checked,
             "bytes_read": r.bytes_read, "problems": r.problems, "notes": r.notes,
             "affected_snapshots": sorted(r.affected)} for r in res.reports],
            "catalog_problems": res.catalog_problems, "notes": res.notes}, indent=1)
    else:
        for line in check_lines(res):
            print(line)
    return EXIT_OK if res.ok else EXIT_FAILED


async def cmd_repair(engine: Engine, args: argparse.Namespace) -> int:
    rep = await engine.repair(target=args.target, dry_run=args.dry_run)
    if args.json:
        print_json(rep.to_json(), indent=1)
        return EXIT_OK if rep.ok else EXIT_FAILED
    would = "would " if rep.dry_run else ""
    print(f"read {rep.objects_read} object copies ({size(rep.bytes_read)})")
    for t in rep.targets:
        if t.skipped is not None:
            print(printable(f"target {t.target}: SKIPPED: {t.skipped}"))
            continue
        n = len(t.rewritten) + len(t.copied)
        print(f"target {t.target}: " + (f"{would}rewrite {len(t.rewritten)} damaged and {would}copy {len(t.copied)} "
                                        f"missing object(s), {size(t.bytes)}" if n else "nothing to repair"))
        for line in t.rewritten:
            print(printable(f"  {would}rewrite {line}"))
        for line in t.copied[:20]:
            print(printable(f"  {would}copy {line}"))
        if len(t.copied) > 20:
            print(f"  … and {len(t.copied) - 20} more")
        for line in t.failed:
            print(printable(f"  FAILED {line}"))
    for lost in rep.lost:
        where = "; ".join(f"{k}: {v}" for k, v in lost.copies.items())
        snaps = ", ".join(lost.snapshots) or "none"
        print(printable(f"NO INTACT COPY {lost.name} ({where}); snapshots affected: {snaps}; {lost.advice}"))
    for note in rep.notes:
        print(printable(f"note: {note}"))
    if rep.lost:
        err("nothing was deleted; the objects above have no copy that verifies on any target")
    return EXIT_OK if rep.ok else EXIT_FAILED


async def cmd_repair_index(engine: Engine, args: argparse.Namespace) -> int:
    rep = await engine.repair_index(dry_run=args.dry_run)
    if args.json:
        print_json(rep.to_json(), indent=1)
        return EXIT_OK
    verb = "would" if args.dry_run else "did"
    print(f"{rep.index_objects} index object(s), {len(rep.damaged_index)} damaged on every target; "
          f"{rep.packs_read} pack header(s) read, {rep.packs_indexed} pack(s) with {rep.chunks_indexed} chunk(s) "
          f"{'to index' if args.dry_run else 'indexed'}")
    for name in rep.damaged_index:
        print(f"  {verb} delete {name[:22]}… (no intact copy on any target)")
    for line in rep.copies_rewritten:
        print(f"  {verb} rewrite {line} from an intact copy")
    if rep.new_index:
        print(f"  new index object {rep.new_index[:22]}…")
    for pid in rep.quarantined:
        print(f"  pack {pid[:16]} quarantined (missing on a target or its header unreadable)")
    return EXIT_OK


async def cmd_unlock(engine: Engine, args: argparse.Namespace) -> int:
    if not args.lock and not args.all:
        locks = await engine.list_locks()
        if args.json:
            print_json(locks, indent=1)
        elif not locks:
            print("the repository holds no locks")
        for lk in locks if not args.json else []:
            state = "stale" if lk["stale"] else "held"
            print(printable(f"{str(lk['name'])[6:14]}  {lk['kind']:<9} {state:<6} pid {lk['pid']} on {lk['host']} "
                            f"since {lk['created']}: {lk['purpose']}"))
        if locks and not args.json:
            err("remove one with `backstop unlock ID` (operator with a one-time code) once its process is gone")
        return EXIT_OK
    removed = await engine.unlock(["all"] if args.all else args.lock, identity(args))
    if args.json:
        print_json({"removed": removed})
    else:
        for name in removed:
            print(f"removed lock {name[6:14]}")
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    add_command(sub, "init", engine_command(cmd_init), "create the repository on every target (idempotent)", common)

    p = add_command(sub, "check", engine_command(cmd_check),
                    "verify the repository; --read-data fetches and decrypts every chunk", common)
    p.add_argument("--read-data", action="store_true", help="read, decrypt and hash every stored chunk")
    completes(p.add_argument("--target", metavar="NAME", help="check only this target"), "targets")

    p = add_command(sub, "repair", engine_command(cmd_repair),
                    "rewrite damaged or missing copies from a copy that verifies on another target", common,
                    description="read every object on every target and rewrite each damaged or missing copy "
                                "from another target's copy that verifies, then read back what was written; "
                                "`repair index` rebuilds the index from the pack headers")
    p.add_argument("--dry-run", action="store_true", help="only report what would be done")
    completes(p.add_argument("--target", metavar="NAME", help="repair only this target"), "targets")
    rep = p.add_subparsers(dest="repair_command", metavar="COMMAND")
    rep.required = False
    p = add_command(rep, "index", engine_command(cmd_repair_index),
                    "rebuild the index from the pack headers where index objects are damaged or missing", common)
    p.add_argument("--dry-run", action="store_true", help="only report what would be done")

    p = add_command(sub, "unlock", engine_command(cmd_unlock),
                    "list the repository's locks, or remove one left by a dead process", common,
                    description="list the repository's locks (no arguments), or remove some (operator with a "
                                "one-time code); a lock of a dead process on this host is removed automatically")
    p.add_argument("lock", nargs="*", metavar="ID", help="lock id (or prefix) from the listing")
    p.add_argument("--all", action="store_true", help="remove every lock")
