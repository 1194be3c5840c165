"""`backstop key list|rotate|reencrypt|retire`: the data keys and the KEK that wraps them."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, add_group, engine_command, identity
from core.cli.output import EXIT_OK, Column, print_json, print_table, size

if TYPE_CHECKING:
    from core.engine import Engine

KEY_COLUMNS = (Column("VERSION", 9), Column("CREATED (UTC)", 27), Column("WRAPPED (UTC)", 27), Column("KEK", 10),
               Column("STATE", 9), Column("IN USE BY"))


async def cmd_key_list(engine: Engine, args: argparse.Namespace) -> int:
    rows = await engine.key_list(usage=not args.no_usage)
    if args.json:
        print_json([{**r.status.to_json(), "usage": r.usage.to_json() if r.usage else None} for r in rows], indent=1)
        return EXIT_OK
    print_table(KEY_COLUMNS, ([r.status.version, r.status.dek_created, r.status.wrapped_at, r.status.kek_id,
                               "current" if r.status.current else "old", r.usage.describe() if r.usage else "-"]
                              for r in rows))
    return EXIT_OK


async def cmd_key_rotate(engine: Engine, args: argparse.Namespace) -> int:
    kek, dek = args.kek, args.dek
    if not kek and not dek:
        kek = dek = True  # neither named: rotate both (no data is re-uploaded either way)
    res = await engine.rotate_keys(identity(args), kek=kek, dek=dek, if_due=args.if_due)
    if args.json:
        print_json({"rotated": res.rotated, "reason": res.reason, "kek_id": res.kek_id, "dek_version": res.dek_version})
    elif not res.rotated:
        print(res.reason)
    else:
        done = []
        if res.kek_id:
            done.append(f"every data key re-wrapped under a new KEK ({res.kek_id})")
        if res.dek_version:
            done.append(f"new data key {res.dek_version} seals new data from now on")
        print("; ".join(done))
    return EXIT_OK


def _print_reencrypt(report: Any) -> None:
    print(f"re-encrypted data key(s) {report.versions}: {report.packs_rewritten} pack(s) rewritten, "
          f"{report.chunks_resealed} chunk(s) re-sealed ({size(report.bytes_written)} written), "
          f"{report.chunks_dropped} unneeded chunk(s) dropped, {report.records} audit/operator record(s) re-sealed, "
          f"{len(report.snapshots)} snapshot id(s) changed")
    for old, new in report.snapshots.items():
        print(f"  snapshot {old[:8]} is now {new[:8]}")


async def cmd_key_reencrypt(engine: Engine, args: argparse.Namespace) -> int:
    report = await engine.reencrypt_keys(identity(args), set(args.version) if args.version else None)
    if args.json:
        print_json(report.to_json(), indent=1)
    else:
        _print_reencrypt(report)
    return EXIT_OK


async def cmd_key_retire(engine: Engine, args: argparse.Namespace) -> int:
    report = await engine.retire_key(args.version, identity(args), reencrypt=args.reencrypt)
    if args.json:
        print_json({"retired": args.version, "reencrypt": report.to_json() if report else None})
        return EXIT_OK
    if report:
        _print_reencrypt(report)
    print(f"data key {args.version} retired: its key object is deleted from every target")
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = add_group(sub, "key", "data keys: list, rotate, re-encrypt, retire", common)
    p = add_command(keys, "list", engine_command(cmd_key_list), "list data key versions and what each still protects",
                    common)
    p.add_argument("--no-usage", action="store_true", help="skip counting what each key protects (faster)")
    p = add_command(keys, "rotate", engine_command(cmd_key_rotate),
                    "rotate the KEK (re-wrap keys) and/or add a new data key; no data is uploaded again", common)
    p.add_argument("--kek", action="store_true", help="only re-wrap the data keys under a new KEK")
    p.add_argument("--dek", action="store_true", help="only add a new data key for new data")
    p.add_argument("--if-due", action="store_true",
                   help="rotate only when encryption.rotate_every says so (no code needed: the policy approves)")
    p = add_command(keys, "reencrypt", engine_command(cmd_key_reencrypt),
                    "move everything sealed with old data keys to the current one", common)
    p.add_argument("--version", type=int, action="append", metavar="N", help="only this old version (repeatable)")
    p = add_command(keys, "retire", engine_command(cmd_key_retire),
                    "delete an old data key; refused while anything still needs it", common)
    p.add_argument("version", type=int, metavar="VERSION")
    p.add_argument("--reencrypt", action="store_true", help="re-encrypt what still needs the key first")
