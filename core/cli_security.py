"""CLI commands for operators, the audit log, keys, forget/prune and restore --force.

Kept apart from ``core.cli`` so that module stays small; it imports nothing
heavy at module level either (``core.cli.build_parser`` pulls this in). The
commands decide nothing themselves: they build an
:class:`~core.security.gate.Identity` from ``--operator``/``--otp`` and call
the engine, whose gate decides.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any

from core.cli import EXIT_FAILED, EXIT_OK, _err, _human
from core.errors import UsageError

def identity(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Who acts (--operator, else $BACKSTOP_OPERATOR, else the OS user) and their code source.

    The code is --otp, else an echo-free prompt when stdin is a terminal
    (asked only if the gate gets that far), else none: the gate then refuses
    with a message saying which code is needed.
    """
    from core.security.gate import Identity, acting_operator

    name = acting_operator(getattr(args, "operator", None))
    code = getattr(args, "otp", None)
    if code is None and sys.stdin.isatty():
        return Identity(name, lambda: getpass.getpass(f"one-time code for operator {name}: ") or None)
    return Identity(name, code)


def _printable(text: str) -> str:
    """Control characters shown escaped: a stored value must never forge or rewrite a line on the terminal."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def parse_since(text: str) -> float:
    """``--since``: a duration back from now (24h, 7d) or an ISO date/time (UTC unless it says)."""
    from core.config import parse_duration

    try:
        return time.time() - parse_duration(text).total_seconds()
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: expected a duration (24h, 7d) or a date/time (2026-01-31T08:00)") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def _duration(text: str) -> float:
    from core.config import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise UsageError(f"--grace: {exc}") from None


# -- operators ----------------------------------------------------------------------


def _print_qr(uri: str) -> None:
    # Only for a person at a terminal: a QR code in a log file is noise.
    if not sys.stdout.isatty():
        return
    try:
        import segno
    except ImportError:
        return
    segno.make(uri, error="m").terminal(out=sys.stdout, compact=True)


async def cmd_operator_add(engine, args) -> int:  # type: ignore[no-untyped-def]
    e = await engine.add_operator(args.name, args.role, identity(args))
    _print_enrolment(e, args.json, f"operator '{e.name}' enrolled with role {e.role}")
    return EXIT_OK


def _print_enrolment(e: Any, as_json: bool, what: str) -> None:
    """The otpauth:// URI (and a QR code on a terminal): shown this once, then only stored sealed."""
    if as_json:
        print(json.dumps({"name": e.name, "role": e.role, "uri": e.uri}))
    else:
        _print_qr(e.uri)
        print(e.uri)
    _err(f"{what}. Scan the QR code or add the URI to an authenticator app "
         f"(or: oathtool --totp -b SECRET, with the secret= value). It is shown only this once.")


async def cmd_operator_recover(engine, args) -> int:  # type: ignore[no-untyped-def]
    if args.passphrase_stdin:
        typed = sys.stdin.buffer.readline().rstrip(b"\r\n")
    elif sys.stdin.isatty():
        typed = getpass.getpass("repository passphrase (proves you may recover operator access): ").encode()
    else:
        raise UsageError("operator recover needs the repository passphrase typed in: run it on a terminal, "
                         "or pipe it in with --passphrase-stdin")
    e = await engine.recover_operator(args.name, typed, identity(args))
    _print_enrolment(e, args.json, f"operator '{e.name}' enrolled as admin by recovery (audited)")
    return EXIT_OK


async def cmd_operator_list(engine, args) -> int:  # type: ignore[no-untyped-def]
    ops = engine.list_operators()
    if args.json:
        print(json.dumps([o.to_json() for o in ops], indent=1))
        return EXIT_OK
    if not ops:
        print("no operators enrolled; enrol the first admin with `backstop operator add NAME --role admin`")
        return EXIT_OK
    now = time.time()
    print(f"{'NAME':<24}{'ROLE':<10}{'ENROLLED (UTC)':<21}{'BY':<16}STATE")
    for o in ops:
        state = f"locked until {_when(o.locked_until)}" if o.locked_until > now else (
            f"{o.failures} failed attempt(s)" if o.failures else "ok")
        print(f"{o.name:<24}{o.role:<10}{_when(o.created_at):<21}{o.created_by:<16}{state}")
    return EXIT_OK


async def cmd_operator_role(engine, args) -> int:  # type: ignore[no-untyped-def]
    op = await engine.set_operator_role(args.name, args.role, identity(args))
    _err(f"operator '{op.name}' now has role {op.role}")
    return EXIT_OK


async def cmd_operator_remove(engine, args) -> int:  # type: ignore[no-untyped-def]
    await engine.remove_operator(args.name, identity(args))
    _err(f"operator '{args.name}' removed")
    return EXIT_OK


# -- audit ---------------------------------------------------------------------------


async def cmd_audit_list(engine, args) -> int:  # type: ignore[no-untyped-def]
    since = parse_since(args.since) if args.since else None
    rows = engine.audit_entries(since=since, limit=args.limit)
    if args.json:
        print(json.dumps([e.to_json() for e in rows], indent=1))
        return EXIT_OK
    if not rows:
        print("no audit entries" + (" in that period" if since else ""))
        return EXIT_OK
    for e in rows:
        detail = e.details
        extra = " ".join(f"{k}={v}" for k, v in detail.items() if k in ("reason", "error", "previous_kept_as")
                         and v is not None)
        line = (f"#{e.seq:<5} {_when(e.ts)}  {e.operator:<16} {e.host:<16} {e.action:<20} {e.outcome:<10} {e.subject}"
                + (f"  ({extra})" if extra else ""))
        print(_printable(line))
    return EXIT_OK


async def cmd_audit_verify(engine, args) -> int:  # type: ignore[no-untyped-def]
    res = await engine.check_audit(identity(args))
    if args.json:
        print(json.dumps({"ok": res.ok, "entries": res.entries, "problems": res.problems, "notes": res.notes,
                          "copies": res.copies}, indent=1))
    else:
        copies = ", ".join(f"{t} {n}/{res.entries}" for t, n in res.copies.items()) or "none reachable"
        if res.ok:
            print(f"audit log intact: {res.entries} entries, keyed hash chain verified; copies: {copies}")
        for p in res.problems:
            print(f"TAMPERED: {p}")
        for n in res.notes:
            print(f"  note: {n}")
    return EXIT_OK if res.ok else EXIT_FAILED


# -- keys -------------------------------------------------------------------------------


async def cmd_key_list(engine, args) -> int:  # type: ignore[no-untyped-def]
    rows = await engine.key_list(usage=not args.no_usage)
    if args.json:
        print(json.dumps([{**r.status.to_json(), "usage": r.usage.to_json() if r.usage else None} for r in rows],
                         indent=1))
        return EXIT_OK
    print(f"{'VERSION':<9}{'CREATED (UTC)':<27}{'WRAPPED (UTC)':<27}{'KEK':<10}{'STATE':<9}IN USE BY")
    for r in rows:
        s = r.status
        print(f"{s.version:<9}{s.dek_created:<27}{s.wrapped_at:<27}{s.kek_id:<10}{'current' if s.current else 'old':<9}"
              f"{r.usage.describe() if r.usage else '-'}")
    return EXIT_OK


async def cmd_key_rotate(engine, args) -> int:  # type: ignore[no-untyped-def]
    kek, dek = args.kek, args.dek
    if not kek and not dek:
        kek = dek = True  # neither named: rotate both (no data is re-uploaded either way)
    res = await engine.rotate_keys(identity(args), kek=kek, dek=dek, if_due=args.if_due)
    if args.json:
        print(json.dumps({"rotated": res.rotated, "reason": res.reason, "kek_id": res.kek_id,
                          "dek_version": res.dek_version}))
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
          f"{report.chunks_resealed} chunk(s) re-sealed ({_human(report.bytes_written)} written), "
          f"{report.chunks_dropped} unneeded chunk(s) dropped, {report.records} audit/operator record(s) re-sealed, "
          f"{len(report.snapshots)} snapshot id(s) changed")
    for old, new in report.snapshots.items():
        print(f"  snapshot {old[:8]} is now {new[:8]}")


async def cmd_key_reencrypt(engine, args) -> int:  # type: ignore[no-untyped-def]
    report = await engine.reencrypt_keys(identity(args), set(args.version) if args.version else None)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        _print_reencrypt(report)
    return EXIT_OK


async def cmd_key_retire(engine, args) -> int:  # type: ignore[no-untyped-def]
    report = await engine.retire_key(args.version, identity(args), reencrypt=args.reencrypt)
    if args.json:
        print(json.dumps({"retired": args.version, "reencrypt": report.to_json() if report else None}))
        return EXIT_OK
    if report:
        _print_reencrypt(report)
    print(f"data key {args.version} retired: its key object is deleted from every target")
    return EXIT_OK


# -- forget, prune, restore --force --------------------------------------------------------


async def cmd_forget(engine, args) -> int:  # type: ignore[no-untyped-def]
    removed = await engine.forget_snapshots(args.snapshot, identity(args))
    if args.json:
        print(json.dumps({"forgotten": removed}))
    else:
        for sid in removed:
            print(f"forgot snapshot {sid[:8]}")
        _err("their data stays in the repository until `backstop prune` removes what no snapshot needs")
    return EXIT_OK


async def cmd_prune(engine, args) -> int:  # type: ignore[no-untyped-def]
    grace = _duration(args.grace) if args.grace is not None else None
    rep = await engine.prune_repository(identity(args), grace_s=grace, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(rep.to_json()))
        return EXIT_OK
    verb = "would delete" if rep.dry_run else "deleted"
    print(f"{verb} {len(rep.packs_deleted)} of {rep.packs_total} pack(s) ({_human(rep.bytes_freed)} per target); "
          f"{rep.snapshots} snapshot(s) kept; {rep.packs_too_young} unneeded pack(s) younger than the grace period kept")
    for line in rep.leftovers:
        print(_printable(f"  removed leftover: {line}"))
    return EXIT_OK


async def restore_force(engine, args) -> int:  # type: ignore[no-untyped-def]
    """`restore --force`: replace an existing database, keeping the old one aside."""
    if args.table:
        raise UsageError("--force replaces a whole database; to bring back tables, restore them into a new "
                         "database (without --force) and copy the rows over")
    res = await engine.restore_over(args.db, args.into, args.snapshot, identity(args))
    r = res.restore
    if args.json:
        print(json.dumps({"snapshot": r.snapshot_id, "db": r.db, "into": r.into, "replaced": res.replaced_by_restore,
                          "previous_kept_as": res.aside, "bytes": r.bytes, "duration_s": round(r.duration_s, 3),
                          "warnings": r.warnings}))
    else:
        print(f"restored snapshot {r.snapshot_id[:8]} of {r.db} into {r.into} in {r.duration_s:.1f} s "
              f"({_human(r.bytes)})")
        if res.aside:
            _err(f"the previous database {r.into} is kept as {res.aside}; drop it when you no longer need it")
    return EXIT_OK


async def cmd_unlock(engine, args) -> int:  # type: ignore[no-untyped-def]
    if not args.lock and not args.all:
        locks = await engine.list_locks()
        if args.json:
            print(json.dumps(locks, indent=1))
        elif not locks:
            print("the repository holds no locks")
        for lk in locks if not args.json else []:
            state = "stale" if lk["stale"] else "held"
            print(_printable(f"{str(lk['name'])[6:14]}  {lk['kind']:<9} {state:<6} pid {lk['pid']} on {lk['host']} "
                             f"since {lk['created']}: {lk['purpose']}"))
        if locks and not args.json:
            _err("remove one with `backstop unlock ID` (operator with a one-time code) once its process is gone")
        return EXIT_OK
    removed = await engine.unlock(["all"] if args.all else args.lock, identity(args))
    if args.json:
        print(json.dumps({"removed": removed}))
    else:
        for name in removed:
            print(f"removed lock {name[6:14]}")
    return EXIT_OK


async def cmd_repair_index(engine, args) -> int:  # type: ignore[no-untyped-def]
    rep = await engine.repair_index(dry_run=args.dry_run)
    if args.json:
        print(json.dumps(rep.to_json(), indent=1))
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


# -- parser ------------------------------------------------------------------------------------


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the operator, audit, key, forget and prune commands to the `backstop` parser."""

    def group(name: str, help: str) -> Any:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        s = p.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        s.required = True
        return s

    def add(s: Any, name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        p = s.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=fn)
        return p

    ops = group("operator", "enrol, list, change and remove operators (changes need an admin and a code)")
    p = add(ops, "add", cmd_operator_add, "enrol an operator; prints the otpauth:// URI (and a QR code on a terminal)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    add(ops, "list", cmd_operator_list, "list operators and their roles")
    p = add(ops, "role", cmd_operator_role, "change an operator's role")
    p.add_argument("name", metavar="NAME")
    p.add_argument("role", choices=("viewer", "operator", "admin"))
    p = add(ops, "remove", cmd_operator_remove, "remove an operator")
    p.add_argument("name", metavar="NAME")
    p = add(ops, "recover", cmd_operator_recover,
            "enrol an admin when every operator record is lost (needs the repository passphrase typed in; audited)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--passphrase-stdin", action="store_true", help="read the passphrase from the first line of stdin")

    aud = group("audit", "the tamper-evident audit log")
    p = add(aud, "list", cmd_audit_list, "list audit entries, oldest first")
    p.add_argument("--since", metavar="WHEN", help="a duration back from now (24h, 7d) or a date/time (UTC)")
    p.add_argument("--limit", type=int, metavar="N", help="only the newest N entries")
    add(aud, "verify", cmd_audit_verify,
        "check the keyed hash chain and the repository copies; exit 1 naming the first bad entry")

    keys = group("key", "data keys: list, rotate, re-encrypt, retire")
    p = add(keys, "list", cmd_key_list, "list data key versions and what each still protects")
    p.add_argument("--no-usage", action="store_true", help="skip counting what each key protects (faster)")
    p = add(keys, "rotate", cmd_key_rotate,
            "rotate the KEK (re-wrap keys) and/or add a new data key; no data is uploaded again")
    p.add_argument("--kek", action="store_true", help="only re-wrap the data keys under a new KEK")
    p.add_argument("--dek", action="store_true", help="only add a new data key for new data")
    p.add_argument("--if-due", action="store_true",
                   help="rotate only when encryption.rotate_every says so (no code needed: the policy approves)")
    p = add(keys, "reencrypt", cmd_key_reencrypt, "move everything sealed with old data keys to the current one")
    p.add_argument("--version", type=int, action="append", metavar="N", help="only this old version (repeatable)")
    p = add(keys, "retire", cmd_key_retire, "delete an old data key; refused while anything still needs it")
    p.add_argument("version", type=int, metavar="VERSION")
    p.add_argument("--reencrypt", action="store_true", help="re-encrypt what still needs the key first")

    p = sub.add_parser("forget", help="delete snapshots from every target and the catalog",
                       description="delete snapshots from every target and the catalog", parents=[common])
    p.set_defaults(func=cmd_forget)
    p.add_argument("snapshot", nargs="+", metavar="SNAPSHOT", help="snapshot id or unique prefix")
    p = sub.add_parser("prune", help="delete packs no snapshot needs (older than the grace period)",
                       description="delete packs no snapshot needs (older than the grace period)", parents=[common])
    p.set_defaults(func=cmd_prune)
    p.add_argument("--grace", metavar="DURATION", help="keep unneeded packs younger than this (default 24h)")
    p.add_argument("--dry-run", action="store_true", help="only report what would be deleted (needs no code)")

    p = sub.add_parser("unlock", help="list the repository's locks, or remove one left by a dead process",
                       description="list the repository's locks (no arguments), or remove some (operator with a "
                                   "one-time code); a lock of a dead process on this host is removed automatically",
                       parents=[common])
    p.set_defaults(func=cmd_unlock)
    p.add_argument("lock", nargs="*", metavar="ID", help="lock id (or prefix) from the listing")
    p.add_argument("--all", action="store_true", help="remove every lock")

    rep = group("repair", "repair the repository")
    p = add(rep, "index", cmd_repair_index,
            "rebuild the index from the pack headers where index objects are damaged or missing")
    p.add_argument("--dry-run", action="store_true", help="only report what would be done")
