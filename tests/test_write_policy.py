"""The write policy (targets_policy) and `backstop sync`, against two real S3 servers (two regions) and a local target.

A region down during a backup: with ``all`` the backup fails and leaves no snapshot anywhere; with a quorum it
succeeds, `snapshots` names the missing copy, and once the region is back `sync` completes it and
`check --read-data` is clean.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from core.config import parse_config
from core.engine import Engine
from core.errors import BackstopError, ConfigError

from tests.fixtures.backstop import Setup, local_target, s3_target_dict, write_setup
from tests.fixtures.s3 import new_bucket


def _keys(server: Any, bucket: str, prefix: str = "") -> list[str]:
    client = server.client()
    return [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]


def _alert_kinds(setup: Setup) -> list[str]:
    """The kinds of the dashboard's alerts, as the console would show them."""
    engine = Engine(setup.config)
    try:
        return [a.kind for a in engine.dashboard().alerts]
    finally:
        asyncio.run(engine.close())


def _setups(base: Path, targets: list[dict[str, Any]], dsn: str) -> tuple[Setup, Setup]:
    """Two configs over the same targets and catalog: policy ``all`` and a quorum of two including ``east``."""
    catalog = {"url": f"sqlite:///{base / 'catalog.db'}"}
    dbs = [{"name": "warranty", "dsn": dsn}]
    every = write_setup(base / "all", targets, dbs, catalog=catalog)
    quorum = write_setup(base / "quorum", targets, dbs, catalog=catalog,
                         targets_policy={"quorum": 2, "required": ["east"]})
    return every, quorum


def test_region_down_all_fails_quorum_succeeds_then_sync_completes(tmp_path, s3_servers, make_warranty_db) -> None:  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=300)
    east, west = s3_servers
    east_bucket, west_bucket = new_bucket(east), new_bucket(west)
    targets = [local_target(tmp_path / "home", "home") | {"region": "on-site", "priority": 10},
               s3_target_dict(east, east_bucket, "east") | {"priority": 20, "role": "secondary"},
               s3_target_dict(west, west_bucket, "west") | {"priority": 30, "role": "secondary", "max_attempts": 1}]
    every, quorum = _setups(tmp_path, targets, dsn)
    every.cli("init", check=True)
    west.stop()
    try:
        # targets_policy all: the region being down fails the backup, in one line, and nothing is visible.
        failed = every.cli("backup", "--db", "warranty")
        assert failed.returncode != 0
        assert "west" in failed.stderr and failed.stderr.strip().count("\n") == 0, failed.stderr
        assert json.loads(every.cli("snapshots", "--json", check=True).stdout) == []
        assert not list((tmp_path / "home" / "snapshots").glob("*")) and not _keys(east, east_bucket, "snapshots/")

        # A quorum of two that must include east: stored on home and east, west named as missing.
        done = quorum.cli("backup", "--db", "warranty", "--json")
        assert done.returncode == 0, done.stderr
        assert "west" in done.stderr and "backstop sync" in done.stderr
        (snap,) = json.loads(quorum.cli("snapshots", "--json", check=True).stdout)
        assert sorted(snap["targets"]) == ["east", "home"] and snap["missing_targets"] == ["west"]
        table = quorum.cli("snapshots", check=True)
        assert "MISSING west" in table.stdout and "backstop sync" in table.stderr
        assert "missing-copy" in _alert_kinds(quorum)  # the dashboard warns while a copy is missing
        # While west is down, sync cannot complete it and says so (non-zero, west skipped).
        down = quorum.cli("sync", "--json")
        assert down.returncode != 0
        assert next(t for t in json.loads(down.stdout)["targets"] if t["target"] == "west")["skipped"]
    finally:
        west.start()

    assert not _keys(west, west_bucket, "snapshots/")
    dry = json.loads(quorum.cli("sync", "--dry-run", "--json", check=True).stdout)
    west_plan = next(t for t in dry["targets"] if t["target"] == "west")
    assert west_plan["objects"] > 0 and west_plan["snapshots"] == [snap["id"]]
    assert not _keys(west, west_bucket, "snapshots/")  # a dry run writes nothing

    synced = json.loads(quorum.cli("sync", "--json", check=True).stdout)
    by_target = {t["target"]: t for t in synced["targets"]}
    assert by_target["west"]["objects"] == west_plan["objects"] and by_target["west"]["bytes"] > 0
    assert by_target["home"]["objects"] == by_target["east"]["objects"] == 0
    assert _keys(west, west_bucket, "snapshots/") == [f"snapshots/{snap['id']}"]
    assert sorted(_keys(west, west_bucket, "data/")) == sorted(_keys(east, east_bucket, "data/"))
    (after,) = json.loads(every.cli("snapshots", "--json", check=True).stdout)
    assert sorted(after["targets"]) == ["east", "home", "west"] and after["missing_targets"] == []
    assert "missing-copy" not in _alert_kinds(quorum)
    check = every.cli("check", "--read-data")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "west: ok" in check.stdout
    # Nothing left to copy; and the policy `all` backs up again now every region is up.
    again = json.loads(every.cli("sync", "--json", check=True).stdout)
    assert all(t["objects"] == 0 for t in again["targets"])
    every.cli("backup", "--db", "warranty", check=True)


@pytest.mark.parametrize("policy, message", [
    ({"quorum": 3}, "targets_policy.quorum 3 cannot be met"),
    ({"quorum": 1, "required": ["nowhere"]}, "no target named 'nowhere'"),
    ({"quorum": 0}, "targets_policy: Value error, quorum"),
    ("most", "expected all, or {quorum: N"),
])
def test_targets_policy_errors_are_one_line(tmp_path: Path, policy: object, message: str) -> None:
    doc = {"encryption": {"passphrase_env": "X"}, "targets_policy": policy,
           "targets": [{"name": "a", "type": "local", "path": str(tmp_path / "a")},
                       {"name": "b", "type": "local", "path": str(tmp_path / "b"), "role": "secondary"},
                       {"name": "c", "type": "local", "path": str(tmp_path / "c"), "role": "archive"}]}
    with pytest.raises(ConfigError) as exc:
        parse_config(doc, tmp_path / "backstop.yaml")
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_archive_counts_only_when_required(tmp_path: Path) -> None:
    doc = {"encryption": {"passphrase_env": "X"}, "targets_policy": {"quorum": 2, "required": ["c"]},
           "targets": [{"name": "a", "type": "local", "path": str(tmp_path / "a")},
                       {"name": "c", "type": "local", "path": str(tmp_path / "c"), "role": "archive"}]}
    cfg = parse_config(doc, tmp_path / "backstop.yaml")
    assert cfg.quorum_targets() == ["a", "c"]
    assert cfg.write_satisfied(["a", "c"]) is None
    assert "required target(s) c" in str(cfg.write_satisfied(["a"]))
    doc["targets_policy"] = {"quorum": 1}
    cfg = parse_config(doc, tmp_path / "backstop.yaml")
    assert cfg.write_satisfied(["c"]) == "stored on 0 of the 1 target(s) the quorum needs"
    assert cfg.targets[1].priority == 100 and cfg.targets[0].role == "primary"


async def test_wal_push_under_quorum_then_sync_fills_the_target(tmp_path: Path) -> None:
    """A target away (its directory moved): `all` refuses the push, a quorum stores it, `sync` copies it after."""
    from core.config import load_config
    from core.ops.wal import push_file
    from core.repository.wal import wal_object_name

    from tests.test_wal import segment

    targets = [local_target(tmp_path / "a", "a"), local_target(tmp_path / "b", "b")]
    catalog = {"url": f"sqlite:///{tmp_path / 'catalog.db'}"}
    every = write_setup(tmp_path / "all", targets, [], catalog=catalog)
    quorum = write_setup(tmp_path / "quorum", targets, [], catalog=catalog,
                         targets_policy={"quorum": 1, "required": ["a"]})
    every.cli("init", check=True)
    wal_dir = tmp_path / "pg_wal"
    wal_dir.mkdir()
    name = "000000010000000000000001"
    (wal_dir / name).write_bytes(segment(1, 1))
    (tmp_path / "b").rename(tmp_path / "b.away")
    try:
        with pytest.raises(BackstopError, match="'b'"):
            await push_file(load_config(every.path), wal_dir / name)
        assert not (tmp_path / "a" / wal_object_name(name)).exists()
        result = await push_file(load_config(quorum.path), wal_dir / name)
        assert result.stored and (tmp_path / "a" / wal_object_name(name)).exists()
    finally:
        (tmp_path / "b.away").rename(tmp_path / "b")
    assert not (tmp_path / "b" / wal_object_name(name)).exists()
    synced = json.loads(quorum.cli("sync", "--target", "b", "--json", check=True).stdout)
    (b,) = synced["targets"]
    assert b["target"] == "b" and b["objects"] == 2  # the WAL object and wal/cluster
    obj = wal_object_name(name)
    assert (tmp_path / "b" / obj).read_bytes() == (tmp_path / "a" / obj).read_bytes()
    check = every.cli("check", "--read-data")
    assert check.returncode == 0, check.stdout + check.stderr

    # A target added later (never initialised) gets everything, its config last; then it opens like the others.
    grown = write_setup(tmp_path / "grown", [*targets, local_target(tmp_path / "c", "c")], [], catalog=catalog)
    (tmp_path / "c").mkdir()  # sync never creates a target's root (an unmounted disk must not be filled)
    new = json.loads(grown.cli("sync", "--target", "c", "--json", check=True).stdout)["targets"][0]
    assert new["objects"] >= 4 and (tmp_path / "c" / "config").exists()  # config, a key, the WAL object, its cluster
    check = grown.cli("check", "--read-data")
    assert check.returncode == 0 and "target c: ok" in check.stdout, check.stdout + check.stderr


def test_target_failing_mid_backup_is_dropped_under_quorum(tmp_path: Path, make_warranty_db) -> None:  # type: ignore[no-untyped-def]
    """b opens, but every pack write there fails (its fan-out directories are files): the quorum backup goes on."""
    _, dsn = make_warranty_db(claims=100)
    targets = [local_target(tmp_path / "a", "a"), local_target(tmp_path / "b", "b") | {"role": "secondary"}]
    setup = write_setup(tmp_path / "cfg", targets, [{"name": "warranty", "dsn": dsn}],
                        targets_policy={"quorum": 1, "required": ["a"]},
                        schedules=[{"name": "catch-up", "action": "sync", "cron": "*/15 * * * *"}])
    setup.cli("init", check=True)
    fanout = tmp_path / "b" / "data"
    fanout.mkdir(exist_ok=True)
    blockers = [fanout / f"{i:02x}" for i in range(256)]
    for f in blockers:
        f.write_bytes(b"")
    done = setup.cli("backup", "--db", "warranty")
    assert done.returncode == 0, done.stderr
    assert "target b failed during the backup" in done.stderr
    (snap,) = json.loads(setup.cli("snapshots", "--json", check=True).stdout)
    assert snap["targets"] == ["a"] and snap["missing_targets"] == ["b"]
    assert not list((tmp_path / "b" / "snapshots").glob("*")) and not list((tmp_path / "b" / "locks").glob("*"))
    for f in blockers:
        f.unlink()
    # The daemon's sync action (run by hand here) completes b.
    run = json.loads(setup.cli("--json", "schedule", "run", "catch-up", check=True).stdout)
    assert next(t for t in run["result"]["targets"] if t["target"] == "b")["snapshots"] == [snap["id"]]
    (after,) = json.loads(setup.cli("snapshots", "--json", check=True).stdout)
    assert after["targets"] == ["a", "b"] and after["missing_targets"] == []
    check = setup.cli("check", "--read-data")
    assert check.returncode == 0, check.stdout + check.stderr
