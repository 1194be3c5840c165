"""`backstop sync` reads back what it wrote: a target that stores something else fails the sync, uninitialised."""

from __future__ import annotations

from pathlib import Path

import pytest
from core.engine import Engine
from core.errors import IntegrityError
from core.storage.factory import make_storages

from tests.doubles.faulty_storage import CallKind, Fault, FaultyStorage
from tests.fixtures.backstop import local_target, write_setup


@pytest.mark.parametrize("kind", ["put", "get"], ids=["stored-short", "read-back-short"])
async def test_sync_refuses_a_copy_that_does_not_read_back(tmp_path: Path, kind: CallKind) -> None:
    fault = Fault(kind, "truncate", prefix="keys/")  # the key object is the first thing sync writes to a new target
    home, away = local_target(tmp_path / "home", "home"), local_target(tmp_path / "away", "away") | {
        "role": "secondary"}
    write_setup(tmp_path / "home-only", [home], []).cli("init", check=True)
    both = write_setup(tmp_path / "both", [home, away], [])
    (tmp_path / "away").mkdir()

    stores = make_storages(both.config.targets)
    faulty = FaultyStorage(stores[1], faults=[fault])
    async with Engine(both.config, storages=[stores[0], faulty]) as engine:
        with pytest.raises(IntegrityError, match="target 'away': read-back of keys/.* does not match what was written"):
            await engine.sync("away")
    assert fault.fired is not None
    # The sync stopped at the key: nothing copied after it (the audit chain comes later), and no config that
    # would make `away` look initialised.
    assert list((tmp_path / "home").glob("audit/*/*"))
    assert not list((tmp_path / "away").glob("audit/*/*"))
    assert not (tmp_path / "away" / "config").exists()

