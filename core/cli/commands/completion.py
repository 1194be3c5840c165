"""`backstop completion bash|zsh`: shell completion generated from the parser (shtab).

Commands, options and choices come from the parser itself. Snapshot ids,
database names and target names come from the config and the catalog: the
arguments marked with ``context.completes(...)`` name a shell function of
the preamble below, which runs the hidden ``backstop __complete KIND`` (with
the ``--config`` and ``--db`` already typed on the line). That command reads
only the config file and the catalog, never a target, and prints nothing at
all when either is missing or broken: a TAB must never print an error.

Install: ``backstop completion bash > ~/.local/share/bash-completion/completions/backstop``,
or for zsh ``backstop completion zsh > "${fpath[1]}/_backstop"``.
"""

from __future__ import annotations

import argparse
from typing import Any

from core.cli.context import add_command
from core.cli.output import EXIT_OK

KINDS = ("snapshots", "databases", "targets")

# The functions named by context.completes(): each prints candidates for the word being completed.
BASH_PREAMBLE = r'''
# Backstop: candidates from the config and the catalog, never an error (`backstop __complete KIND`).
# $1=KIND $2=the word being completed; --config and --db are taken from the line typed so far.
_backstop_complete_query() {
  local kind=$1 cur=$2 word i
  local -a args=()
  for (( i=1; i < ${#COMP_WORDS[@]}; i++ )); do
    (( i == COMP_CWORD || i + 1 == COMP_CWORD )) && continue
    word=${COMP_WORDS[i]}
    case $word in
      --config|--db) args+=("$word" "${COMP_WORDS[i+1]/#\~/$HOME}") ;;
      --config=*|--db=*) args+=("${word/=\~/=$HOME}") ;;
    esac
  done
  compgen -W "$("${COMP_WORDS[0]/#\~/$HOME}" __complete "$kind" "${args[@]}" 2>/dev/null)" -- "$cur"
}
_backstop_complete_snapshots() { _backstop_complete_query snapshots "$1"; }
_backstop_complete_snapshot_ref() { compgen -W latest -- "$1"; _backstop_complete_query snapshots "$1"; }
_backstop_complete_databases() { _backstop_complete_query databases "$1"; }
_backstop_complete_targets() { _backstop_complete_query targets "$1"; }
'''

ZSH_PREAMBLE = r'''
# Backstop: candidates from the config and the catalog, never an error (`backstop __complete KIND`).
# --config and --db are taken from the whole line ($BUFFER: `words` holds only the subcommand's part).
_backstop_complete_query() {
  local kind=$1 i
  local -a line args candidates
  line=(${(z)BUFFER})
  for (( i = 2; i < ${#line}; i++ )); do
    case ${line[i]} in
      --config|--db) args+=(${line[i]} ${(Q)~line[i+1]}) ;;
      --config=*|--db=*) args+=(${(Q)~line[i]}) ;;
    esac
  done
  candidates=(${(f)"$(${~line[1]} __complete $kind $args 2>/dev/null)"})
  print -l -- $candidates
}
_backstop_complete_snapshots() {
  local -a ids; ids=(${(f)"$(_backstop_complete_query snapshots)"})
  compadd -a ids
}
_backstop_complete_snapshot_ref() {
  local -a ids; ids=(latest ${(f)"$(_backstop_complete_query snapshots)"})
  compadd -a ids
}
_backstop_complete_databases() {
  local -a names; names=(${(f)"$(_backstop_complete_query databases)"})
  compadd -a names
}
_backstop_complete_targets() {
  local -a names; names=(${(f)"$(_backstop_complete_query targets)"})
  compadd -a names
}
'''

PREAMBLES = {"bash": BASH_PREAMBLE, "zsh": ZSH_PREAMBLE}


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(args.root_parser, shell=args.shell, preamble=PREAMBLES[args.shell]))
    return EXIT_OK


def candidates(kind: str, config: str | None, db: str | None) -> list[str]:
    """What the shell may offer: snapshot ids (short, unique; newest first), database or target names."""
    from core.config import load_config

    cfg = load_config(config)
    if kind == "databases":
        return [d.name for d in cfg.databases]
    if kind == "targets":
        return [t.name for t in cfg.targets]
    if not cfg.catalog.is_postgres and not cfg.catalog.sqlite_path.is_file():
        return []  # no catalog yet: nothing to offer, and a TAB must not create one
    import asyncio

    from core.engine import Engine

    engine = Engine(cfg)  # reads the catalog only; the targets are never opened
    try:
        ids = [s.id for s in reversed(engine.snapshots(db or None))]
    finally:
        asyncio.run(engine.close())
    n = 8  # short ids as everywhere else, longer where two would share a prefix
    while len({i[:n] for i in ids}) < len(set(ids)):
        n += 4
    return list(dict.fromkeys(i[:n] for i in ids))


def cmd_complete(args: argparse.Namespace) -> int:
    try:
        found = candidates(args.kind, args.config, args.db)
    except Exception:  # noqa: BLE001  (a missing or broken config, an unknown --db, a damaged catalog: nothing to offer
        return EXIT_OK
    for c in found:
        print(c)
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, "completion", cmd_completion, "print the shell completion script for bash or zsh", common,
                    description="print the shell completion script: "
                                "`backstop completion bash > ~/.local/share/bash-completion/completions/backstop`, "
                                "or for zsh `backstop completion zsh > \"${fpath[1]}/_backstop\"`")
    p.add_argument("shell", choices=("bash", "zsh"))
    # Hidden (no help): what the completion scripts ask for.
    p = sub.add_parser("__complete", parents=[common])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--db", metavar="NAME", help="only this database's snapshots")
    p.set_defaults(func=cmd_complete)
