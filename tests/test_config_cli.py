"""Configuration errors and CLI conventions (exit codes, one-line messages)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.backstop import BACKSTOP


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BACKSTOP, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    "body, expected",
    [
        ("targets: []\nencryption: {passphrase_env: X}\n", "targets: "),
        ("encryption: {passphrase_env: X}\ntargets:\n  - {name: a, type: s3}\n",
         "targets.0.bucket: required key is missing"),
        ("encryption: {passphrase_env: X}\ntargets:\n  - {name: a, type: ftp, path: /x}\n", "targets.0"),
        ("encryption: {passphrase_env: X}\ntargets:\n  - {name: a, type: local, path: /x, colour: red}\n",
         "targets.0.colour: unknown key"),
        ("encryption: {}\ntargets:\n  - {name: a, type: local, path: /x}\n", "encryption: "),
        ("encryption: {passphrase_env: X}\ntargets:\n  - {name: a, type: local, path: /x}\n"
         "databases:\n  - {name: w, dsn: x}\n  - {name: w, dsn: y}\n", "duplicate name 'w'"),
        ("encryption: {passphrase_env: X}\ntargets: [\n", "not valid YAML at line"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, body: str, expected: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(body)
    out = _run("--config", str(cfg), "snapshots")
    assert out.returncode == 2
    assert str(cfg) in out.stderr and expected in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1


def test_missing_config(tmp_path: Path) -> None:
    out = _run("--config", str(tmp_path / "nope.yaml"), "snapshots")
    assert out.returncode == 2 and "cannot read the file" in out.stderr
    env = {k: v for k, v in __import__("os").environ.items() if k != "BACKSTOP_CONFIG"}
    out = _run("snapshots", env=env)
    assert out.returncode == 2 and "BACKSTOP_CONFIG" in out.stderr


def test_config_from_environment_and_missing_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("encryption: {passphrase_env: BK_TEST_PASS}\n"
                   f"targets:\n  - {{name: a, type: local, path: {tmp_path / 'r'}}}\n"
                   f"catalog: {{url: 'sqlite:///{tmp_path / 'cat.db'}'}}\n")
    import os
    env = {**os.environ, "BACKSTOP_CONFIG": str(cfg)}
    env.pop("BK_TEST_PASS", None)
    out = _run("init", env=env)
    assert out.returncode == 2 and "BK_TEST_PASS is not set" in out.stderr
    out = _run("init", env={**env, "BK_TEST_PASS": "s3cret-passphrase"})
    assert out.returncode == 0, out.stderr
    assert "s3cret-passphrase" not in out.stdout + out.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert _run("backup").returncode == 2  # --db missing
    assert _run("no-such-command").returncode == 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"encryption: {{passphrase_env: X}}\ntargets:\n  - {{name: a, type: local, path: {tmp_path}}}\n"
                   f"catalog: {{url: 'sqlite:///{tmp_path / 'cat.db'}'}}\n")
    out = _run("--config", str(cfg), "backup", "--db", "unknown")
    assert out.returncode == 2 and "no database named 'unknown'" in out.stderr


def test_cli_start_does_not_import_heavy_modules() -> None:
    code = ("import sys; from core import cli; cli.build_parser()\n"
            "heavy = [m for m in ('boto3', 'textual', 'psycopg', 'zstandard') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
