"""Repository locks: conflicts, refreshing while held, stale locks of crashed holders."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from core.config import LocalTargetConfig, RepositoryConfig
from core.errors import LockConflict
from core.repository import repo as repo_mod
from core.repository.repo import Repository
from core.storage.local import LocalStorage


async def _repo(tmp_path) -> Repository:  # type: ignore[no-untyped-def]
    st = LocalStorage(LocalTargetConfig(name="l", type="local", path=tmp_path / "r"))
    await st.prepare()
    repo, _ = await Repository.init([st], b"pass", RepositoryConfig())
    return repo


async def test_exclusive_conflicts_and_shared_coexist(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = await _repo(tmp_path)
    async with repo.lock("shared", "backup a"):
        async with repo.lock("shared", "backup b"):
            assert len(await repo.locks()) == 2
        with pytest.raises(LockConflict, match="backup a"):
            async with repo.lock("exclusive", "prune"):
                pass
    assert await repo.locks() == []
    async with repo.lock("exclusive", "prune"):
        with pytest.raises(LockConflict, match="prune"):
            async with repo.lock("shared", "backup c"):
                pass


async def test_held_lock_is_refreshed_and_crashed_one_goes_stale(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    repo = await _repo(tmp_path)
    monkeypatch.setattr(repo_mod, "LOCK_REFRESH_SECONDS", 0.05)
    async with repo.lock("shared", "long backup"):
        await asyncio.sleep(0.3)
        (lk,) = await repo.locks()
        assert "refreshed" in lk and not lk["stale"]
    # A lock left by a crashed process, last refreshed two hours ago, blocks nothing.
    old = (datetime.now(UTC) - timedelta(hours=2)).isoformat(timespec="seconds")
    await repo.put_all("locks/" + "0" * 32, json.dumps({"kind": "exclusive", "purpose": "crashed prune", "host": "h",
                                                        "pid": 1, "created": old, "refreshed": old}).encode())
    (lk,) = await repo.locks()
    assert lk["stale"]
    async with repo.lock("exclusive", "prune"):
        pass
