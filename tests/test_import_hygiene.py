"""Layering: core never imports Textual (DESIGN.md section 1); the TUI is loaded only by `backstop tui`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_core_module_imports_textual() -> None:
    offenders = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "textual" or n.startswith(("textual.", "tui")) for n in names):
                # The CLI's `tui` command imports the console lazily, inside the function: allowed.
                if path.relative_to(ROOT).parts[:2] == ("core", "cli") and any(n.startswith("tui") for n in names):
                    continue
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {names}")
    assert not offenders, "core must not import textual:\n" + "\n".join(offenders)


def test_importing_the_engine_and_cli_loads_no_textual() -> None:
    code = ("import sys, core.cli, core.engine, core.planner, core.insights.overview, core.catalog.reader; "
            "bad = [m for m in sys.modules if m == 'textual' or m.startswith(('textual.', 'tui'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tui_imports_nothing_below_core_engine_for_actions() -> None:
    """The console talks to the engine (and reads core's types); it never drives storage or PostgreSQL itself."""
    forbidden = ("core.storage", "core.repository", "core.postgres", "core.catalog.store", "sqlite3", "psycopg",
                 "boto3")
    offenders = []
    for path in sorted((ROOT / "tui").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            offenders += [f"{path.relative_to(ROOT)}: {m}" for m in mods if m.startswith(forbidden)]
    assert not offenders, offenders


def test_tcss_has_no_literal_colours() -> None:
    import re

    for path in (ROOT / "tui").rglob("*.tcss"):
        text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
        assert not re.search(r"#[0-9a-fA-F]{3,8}\b|\brgba?\(|\bhsl\(", text), f"{path}: use theme variables"
