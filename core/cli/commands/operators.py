"""`backstop operator add|list|role|remove|recover`.

The commands decide nothing themselves: they name who acts (with the
one-time code source) and call the engine, whose gate decides.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import TYPE_CHECKING, Any

from core.cli.context import add_command, add_group, engine_command, identity
from core.cli.output import EXIT_OK, Column, err, print_json, print_table, utc
from core.errors import UsageError

if TYPE_CHECKING:
    from core.engine import Engine

ROLES = ("viewer", "operator", "admin")
OPERATOR_COLUMNS = (Column("NAME", 24), Column("ROLE", 10), Column("ENROLLED (UTC)", 21), Column("BY", 16),
                    Column("STATE"))


def _print_qr(uri: str) -> None:
    # Only for a person at a terminal: a QR code in a log file is noise.
    if not sys.stdout.isatty():
        return
    try:
        import segno
    except ImportError:
        return
    segno.make(uri, error="m").terminal(out=sys.stdout, compact=True)


def _print_enrolment(e: Any, as_json: bool, what: str) -> None:
    """The otpauth:// URI (and a QR code on a terminal): shown this once, then only stored sealed."""
    if as_json:
        print_json({"name": e.name, "role": e.role, "uri": e.uri})
    else:
        _print_qr(e.uri)
        print(e.uri)
    err(f"{what}. Scan the QR code or add the URI to an authenticator app "
        f"(or: oathtool --totp -b SECRET, with the secret= value). It is shown only this once.")


async def cmd_operator_add(engine: Engine, args: argparse.Namespace) -> int:
    e = await engine.add_operator(args.name, args.role, identity(args))
    _print_enrolment(e, args.json, f"operator '{e.name}' enrolled with role {e.role}")
    return EXIT_OK


async def cmd_operator_recover(engine: Engine, args: argparse.Namespace) -> int:
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


async def cmd_operator_list(engine: Engine, args: argparse.Namespace) -> int:
    ops = engine.list_operators()
    if args.json:
        print_json([o.to_json() for o in ops], indent=1)
        return EXIT_OK
    if not ops:
        print("no operators enrolled; enrol the first admin with `backstop operator add NAME --role admin`")
        return EXIT_OK
    now = time.time()

    def state(o: Any) -> str:
        if o.locked_until > now:
            return f"locked until {utc(o.locked_until)}"
        return f"{o.failures} failed attempt(s)" if o.failures else "ok"

    print_table(OPERATOR_COLUMNS, ([o.name, o.role, utc(o.created_at), o.created_by, state(o)] for o in ops))
    return EXIT_OK


async def cmd_operator_role(engine: Engine, args: argparse.Namespace) -> int:
    op = await engine.set_operator_role(args.name, args.role, identity(args))
    err(f"operator '{op.name}' now has role {op.role}")
    return EXIT_OK


async def cmd_operator_remove(engine: Engine, args: argparse.Namespace) -> int:
    await engine.remove_operator(args.name, identity(args))
    err(f"operator '{args.name}' removed")
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    ops = add_group(sub, "operator", "enrol, list, change and remove operators (changes need an admin and a code)",
                    common)
    p = add_command(ops, "add", engine_command(cmd_operator_add),
                    "enrol an operator; prints the otpauth:// URI (and a QR code on a terminal)", common)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", required=True, choices=ROLES)
    add_command(ops, "list", engine_command(cmd_operator_list), "list operators and their roles", common)
    p = add_command(ops, "role", engine_command(cmd_operator_role), "change an operator's role", common)
    p.add_argument("name", metavar="NAME")
    p.add_argument("role", choices=ROLES)
    p = add_command(ops, "remove", engine_command(cmd_operator_remove), "remove an operator", common)
    p.add_argument("name", metavar="NAME")
    p = add_command(ops, "recover", engine_command(cmd_operator_recover),
                    "enrol an admin when every operator record is lost (needs the repository passphrase typed in; "
                    "audited)", common)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--passphrase-stdin", action="store_true", help="read the passphrase from the first line of stdin")
