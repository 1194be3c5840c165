"""Shell completion: the generated bash script, sourced in a real bash, completes names from the config and catalog."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from core.catalog.models import SnapshotRecord
from core.catalog.store import Catalog

from tests.fixtures.backstop import BACKSTOP

ROOT = Path(__file__).resolve().parent.parent
WARRANTY_ID = "3fa2c1d0" + "a" * 56
LEDGER_ID = "77bb0011" + "b" * 56


def _snapshot(sid: str, db: str) -> SnapshotRecord:
    return SnapshotRecord(id=sid, db=db, kind="full", started_at="2026-01-31T08:00:00+00:00",
                          finished_at="2026-01-31T08:01:00+00:00", size_bytes=1 << 20, stored_bytes=1 << 19,
                          targets=["local1"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A config with two databases and two targets, a catalog with one snapshot of each, and `backstop` on PATH."""
    base = tmp_path_factory.mktemp("completion")
    cfg = base / "backstop.yaml"
    cfg.write_text(
        "encryption: {passphrase_env: BACKSTOP_TEST_UNSET}\n"
        f"catalog: {{url: 'sqlite:///{base / 'catalog.db'}'}}\n"
        f"targets:\n  - {{name: local1, type: local, path: {base / 'r1'}}}\n"
        f"  - {{name: offsite, type: local, path: {base / 'r2'}}}\n"
        "databases:\n  - {name: warranty, dsn: 'postgresql://backup@127.0.0.1:1/warranty'}\n"
        "  - {name: ledger, dsn: 'postgresql://backup@127.0.0.1:1/ledger'}\n")
    catalog = Catalog(base / "catalog.db")
    catalog.add_snapshot(_snapshot(WARRANTY_ID, "warranty"))
    catalog.add_snapshot(_snapshot(LEDGER_ID, "ledger"))
    catalog.close()
    bin_dir = base / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "backstop"  # what `pip install` puts on PATH, for this checkout
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m core.cli \"$@\"\n")
    wrapper.chmod(0o755)
    scripts = {}
    for shell in ("bash", "zsh"):
        out = subprocess.run([*BACKSTOP, "completion", shell], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0 and out.stderr == "", out.stderr
        scripts[shell] = base / f"backstop.{shell}"
        scripts[shell].write_text(out.stdout)
    return {"config": cfg, "bin": bin_dir, "bash": scripts["bash"], "zsh": scripts["zsh"], "base": base}


def _env(world: dict[str, Path], config: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BACKSTOP_CONFIG"}
    env["PATH"] = f"{world['bin']}{os.pathsep}{env.get('PATH', '')}"
    if config is not None:
        env["BACKSTOP_CONFIG"] = str(config)
    return env


def _complete_bash(world: dict[str, Path], words: list[str], config: Path | None = None) -> list[str]:
    """COMPREPLY after bash calls the completion function for ``words`` (the last one being typed)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    script = (f"source '{world['bash']}'\n"
              f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
              f"COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}\n"
              "_shtab_backstop backstop \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                         timeout=60, env=_env(world, config))
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line]


def test_bash_completes_database_names_from_the_config(world: dict[str, Path]) -> None:
    assert sorted(_complete_bash(world, ["backstop", "restore", "--db", ""], world["config"])) == ["ledger", "warranty"]
    assert _complete_bash(world, ["backstop", "restore", "--db", "war"], world["config"]) == ["warranty"]


def test_bash_completes_snapshot_ids_of_the_database_on_the_line(world: dict[str, Path]) -> None:
    words = ["backstop", "restore", "--db", "warranty", "--snapshot", ""]
    assert sorted(_complete_bash(world, words, world["config"])) == [WARRANTY_ID[:8], "latest"]
    # --config on the line instead of $BACKSTOP_CONFIG
    words = ["backstop", "--config", str(world["config"]), "restore", "--db", "ledger", "--snapshot", "7"]
    assert _complete_bash(world, words) == [LEDGER_ID[:8]]
    assert sorted(_complete_bash(world, ["backstop", "forget", ""], world["config"])) == sorted(
        [WARRANTY_ID[:8], LEDGER_ID[:8]])


def test_bash_completes_targets_commands_and_options(world: dict[str, Path]) -> None:
    targets = _complete_bash(world, ["backstop", "check", "--target", ""], world["config"])
    assert sorted(targets) == ["local1", "offsite"]
    assert _complete_bash(world, ["backstop", "rest"]) == ["restore"]
    assert "--snapshot" in _complete_bash(world, ["backstop", "restore", "--"])
    assert "__complete" not in _complete_bash(world, ["backstop", "_"])  # hidden


def test_a_broken_or_missing_config_completes_nothing_and_prints_nothing(world: dict[str, Path]) -> None:
    broken = world["base"] / "broken.yaml"
    broken.write_text("targets: [\n")
    for config in (broken, world["base"] / "missing.yaml", None):
        words = ["backstop", "restore", "--db", "warranty", "--snapshot", ""]
        assert _complete_bash(world, words, config) == ["latest"]
        assert _complete_bash(world, ["backstop", "restore", "--db", ""], config) == []
        for kind in ("snapshots", "databases", "targets"):
            out = subprocess.run(["backstop", "__complete", kind], capture_output=True, text=True, timeout=60,
                                 env=_env(world, config))
            assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    # An unknown --db: nothing either.
    out = subprocess.run(["backstop", "__complete", "snapshots", "--db", "nope"], capture_output=True, text=True,
                         timeout=60, env=_env(world, world["config"]))
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_complete_does_not_create_a_catalog(world: dict[str, Path]) -> None:
    cfg = world["base"] / "fresh.yaml"
    cfg.write_text(world["config"].read_text().replace("catalog.db", "fresh/catalog.db"))
    out = subprocess.run(["backstop", "__complete", "snapshots"], capture_output=True, text=True, timeout=60,
                         env=_env(world, cfg))
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    assert not (world["base"] / "fresh").exists()


def test_zsh_script(world: dict[str, Path]) -> None:
    text = world["zsh"].read_text()
    for fn in ("_backstop_complete_snapshots", "_backstop_complete_snapshot_ref", "_backstop_complete_databases",
               "_backstop_complete_targets", "__complete"):
        assert fn in text
    assert ":NAME:_backstop_complete_databases" in text
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed (apt-get install zsh): only the script's text was checked")
    out = subprocess.run([zsh, "-n", str(world["zsh"])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # The completer functions themselves, in a real zsh: compadd (a completion-widget builtin) is stubbed to
    # print what it was given, $BUFFER is the line typed so far.
    script = (f"compdef() {{ : }}; eval \"$(<'{world['zsh']}')\"\n"
              "compadd() { [[ $1 == -a ]] && print -l -- ${(P)2} }\n"
              f"BUFFER='backstop --config {world['config']} restore --db warranty --snapshot '\n"
              "_backstop_complete_snapshot_ref\n"
              f"BUFFER='backstop --config {world['config']} check --target '\n"
              "_backstop_complete_targets\n")
    out = subprocess.run([zsh, "-f", "-c", script], capture_output=True, text=True, timeout=60,
                         env=_env(world, None))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["latest", WARRANTY_ID[:8], "local1", "offsite"]
