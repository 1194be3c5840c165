"""The CLI's entry paths: `wal-push`/`wal-fetch` start without importing anything heavy, `--help` stays light,
and the CLI package has no import circles (nor does anything else in core import it).

PostgreSQL runs `backstop wal-push %p` once per 16 MiB WAL segment, so its start-up cost is paid constantly.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.backstop import BACKSTOP

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("boto3", "botocore", "psycopg", "textual", "pydantic", "yaml", "rich", "zstandard", "shtab", "cryptography",
         "segno", "tui")


def _imported(*args: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `python -X importtime -m core.cli ARGS` and return it with the names of every module it imported."""
    # Without coverage's subprocess measurement: it imports sqlite3 and more into the child itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "core.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL, env=env)
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    names.discard("imported package")
    return proc, names


def _launched(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the `backstop` script itself with ARGS; (the process, every module it imported).

    Without site (-S) and with this checkout on PYTHONPATH: an editable install's finder, which site runs,
    imports pathlib and re on its own, and a regular install has no such finder.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-S", "-P", "-X", "importtime", str(ROOT / "core" / "cli" / "backstop"),
                           *args], capture_output=True, text=True, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL,
                          env=env)
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return proc, names


# The fast path's own modules: the CLI entry, the client and spool of core/wal, the WAL name functions.
FAST_PATH = {"core", "core.cli", "core.cli.wal", "core.wal", "core.wal.client", "core.wal.spool", "core.postgres",
             "core.postgres.wal"}


@pytest.mark.parametrize("args", [("wal-push", "--help"), ("wal-fetch", "--help"),
                                  ("--config", "/nonexistent.yaml", "wal-push", "pg_wal/000000010000000000000001"),
                                  ("wal-fetch", "000000010000000000000001", "/tmp/x")])
def test_wal_commands_import_nothing_heavy(args: tuple[str, ...]) -> None:
    proc, names = _imported(*args)
    assert "core.cli.wal" in names, proc.stderr[-2000:]
    loaded_heavy = sorted(n for n in names if n.split(".")[0] in HEAVY)
    assert loaded_heavy == [], loaded_heavy
    # Not even the rest of the CLI or of core: only the package, the WAL entry and its standard-library client.
    ours = {n for n in names if n.split(".")[0] == "core"}
    assert ours <= FAST_PATH, sorted(ours - FAST_PATH)
    for module in ("asyncio", "sqlite3", "json", "logging", "dataclasses", "core.config", "core.engine"):
        assert module not in names, module


def test_an_already_pushed_segment_is_acknowledged_on_the_fast_path(tmp_path: Path) -> None:
    """What PostgreSQL mostly meets: the resident pusher got there first. Standard library only, and quick."""
    import hashlib

    from core.wal.spool import Spool, config_tag

    config = tmp_path / "backstop.yaml"
    config.write_text("encryption: {passphrase_env: NOT_NEEDED}\ntargets: [{name: a, type: local, path: /nowhere}]\n")
    wal = tmp_path / "pgdata" / "pg_wal"
    wal.mkdir(parents=True)
    data = b"\x10\xd1" + bytes(16 * 1024 * 1024 - 2)
    name = "000000010000000000000007"
    (wal / name).write_bytes(data)
    spool = Spool(tmp_path / "wal-spool", config_tag(config)).ensure()  # a record made with this very config
    spool.write_record(name, len(data), hashlib.sha256(data).hexdigest())
    lock = spool.take_lock(spool.pusher_lock)  # stands for a running pusher: the call must not start one
    try:
        proc, names = _imported("--config", str(config), "wal-push", f"pg_wal/{name}", cwd=tmp_path / "pgdata")
        assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr[-2000:]
        assert {n for n in names if n.split(".")[0] == "core"} <= FAST_PATH
        # PostgreSQL's exact call shape skips argparse too (building a parser imports shutil and locale).
        # Nor `socket` (its enums cost a fifth of the call): the call connects with the C module _socket.
        for module in ("asyncio", "json", "dataclasses", "yaml", "pydantic", "zstandard", "cryptography", "boto3",
                       "argparse", "shutil", "socket"):
            assert module not in names, module
        # Nor `re` or `pathlib` (with what they import, half of the call's CPU): paths are strings. Seen through
        # the `backstop` script itself: this checkout's editable install imports both before any of ours runs.
        proc, names = _launched("--config", str(config), "wal-push", f"pg_wal/{name}", cwd=tmp_path / "pgdata")
        assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr[-2000:]
        for module in ("re", "pathlib", "contextlib", "fnmatch", "functools", "socket", "argparse"):
            assert module not in names, module
        assert {"core.wal.client", "_socket"} <= names  # it asked for a pusher (the stand-in has no socket)
        assert [how for _, _, how in spool.latencies()] == ["spool", "spool"]
        # Startup cost: a loose bound for a busy machine; `wal status` reports the real percentiles.
        runs = []
        for _ in range(3):
            t0 = time.monotonic()
            out = subprocess.run([*BACKSTOP, "--config", str(config), "wal-push", f"pg_wal/{name}"],
                                 cwd=tmp_path / "pgdata", capture_output=True, timeout=60)
            runs.append(time.monotonic() - t0)
            assert out.returncode == 0
        assert min(runs) < 1.0, runs
        # Another file under a pushed name is not taken from the record.
        (wal / name).write_bytes(b"\x10\xd1" + bytes(16 * 1024 * 1024 - 3) + b"x")
        assert not spool.matches(name, wal / name)
    finally:
        os.close(lock or -1)


def test_wal_command_failures_are_one_line() -> None:
    for args, what, code in ((("wal-push", "pg_wal/000000010000000000000001"), "wal-push", 2),
                             (("--config", "/nonexistent.yaml", "wal-fetch", "000000010000000000000001", "/tmp/x"),
                              "wal-fetch", 2),
                             (("--config", "/nonexistent.yaml", "wal-push", "pg_wal/RECOVERYXLOG"), "wal-push", 2)):
        env = {k: v for k, v in os.environ.items() if k != "BACKSTOP_CONFIG"}
        out = subprocess.run([*BACKSTOP, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        assert out.returncode == code, out
        assert out.stdout == ""
        assert out.stderr.startswith(f"backstop: {what}: ")
        assert out.stderr.count("\n") == 1
    usage = subprocess.run([*BACKSTOP, "wal-fetch", "only-one-argument"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "DEST_PATH" in usage.stderr


def test_main_help_lists_the_wal_commands_and_stays_light() -> None:
    proc, names = _imported("--help")
    assert proc.returncode == 0
    assert "wal-push" in proc.stdout and "wal-fetch" in proc.stdout and "completion" in proc.stdout
    assert "__complete" not in proc.stdout
    loaded_heavy = sorted(n for n in names if n.split(".")[0] in HEAVY)
    assert loaded_heavy == [], loaded_heavy


def test_the_argv_scan_finds_the_command() -> None:
    from core.cli import command_name

    assert command_name(["wal-push", "x"]) == "wal-push"
    assert command_name(["--config", "wal-push", "backup"]) == "backup"  # a config file named wal-push
    assert command_name(["--conf", "c.yaml", "--json", "wal-fetch", "a", "b"]) == "wal-fetch"
    assert command_name(["--config=c.yaml", "--otp", "123456", "prune"]) == "prune"
    assert command_name(["--json"]) is None


# -- layering ------------------------------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions (lazy imports count too)."""
    found: set[str] = set()
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..y import z
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_nothing_outside_the_cli_imports_it() -> None:
    offenders = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        if (ROOT / "core" / "cli") in path.parents:
            continue
        # The demo prints through the CLI's output module (never its handlers).
        allowed = {"core.cli.output"} if path == ROOT / "core" / "sandbox" / "demo.py" else set()
        bad = sorted(m for m in _imports(path) if (m == "core.cli" or m.startswith("core.cli."))
                     and not any(m == a or m.startswith(a + ".") for a in allowed))
        offenders += [f"{path.relative_to(ROOT)}: {m}" for m in bad]
    assert not offenders, offenders


def test_command_modules_share_only_output_and_context() -> None:
    """Cycles anywhere (the dispatch table's edges included) are tests/test_import_graph.py's business."""
    files = {_module_name(p): p for p in (ROOT / "core" / "cli" / "commands").rglob("*.py")}
    for name, path in files.items():
        shared = ("core.cli.output", "core.cli.context")
        deps = {m for m in _imports(path) if m.startswith("core.cli")
                and not any(m == s or m.startswith(s + ".") for s in shared)}
        assert not deps, (name, deps)


def test_only_postgres_exact_call_shape_skips_the_parser() -> None:
    from core.cli.wal import _plain_call

    assert _plain_call(["--config", "/c.yaml", "wal-push", "pg_wal/X"]) == ("/c.yaml", "wal-push", ["pg_wal/X"])
    assert _plain_call(["--config=/c.yaml", "wal-fetch", "X", "pg_wal/RECOVERYXLOG"]) == (
        "/c.yaml", "wal-fetch", ["X", "pg_wal/RECOVERYXLOG"])
    assert _plain_call(["wal-push", "pg_wal/X"]) == (None, "wal-push", ["pg_wal/X"])
    # Everything else goes through argparse: help, abbreviations, a missing or extra operand, an empty config.
    for argv in (["wal-push", "--help"], ["--conf", "/c.yaml", "wal-push", "X"], ["wal-push"],
                 ["wal-push", "X", "Y"], ["wal-fetch", "X"], ["--config=", "wal-push", "X"], ["--config"],
                 ["wal-push", "-X"], ["status"]):
        assert _plain_call(argv) is None, argv
