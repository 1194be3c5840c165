"""The example configs in config/ stay valid."""

from pathlib import Path

import pytest
from core.config import load_config

EXAMPLES = sorted((Path(__file__).parent.parent / "config").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_is_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.targets and cfg.databases
