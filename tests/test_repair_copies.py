"""`check --read-data` compares the targets' copies; `repair` rewrites damaged or missing ones from a verified copy.

Two real S3 servers (two regions) and a local target. A pack, an index
object, a manifest and a key object are damaged on the local target and a
pack on one S3 target, an object is deleted on the other: check names each object and its target, a dry run
changes nothing, `repair --target` mends only that target, `repair` the rest,
check is clean after, and a restore from each target alone matches the
source. An object damaged on every target is named with the snapshot it
makes unrestorable, and nothing is deleted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.postgres.cluster import LocalCluster
from core.postgres.fingerprint import fingerprint

from tests.fixtures.backstop import local_target, s3_target_dict, write_setup
from tests.fixtures.s3 import SeaweedServer, new_bucket
from tests.fixtures.tamper import flip_byte

REPO = {"pack_target_mib": 1, "chunk_avg_kib": 64}


def _rel(repo: Path, path: Path) -> str:
    return path.relative_to(repo).as_posix()


def _problems(doc: dict[str, Any], target: str) -> str:
    return "\n".join(next(t for t in doc["targets"] if t["target"] == target)["problems"])


def _by_target(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in doc["targets"]}


async def test_damaged_copies_are_named_repaired_and_each_target_restores_alone(  # type: ignore[no-untyped-def]
        tmp_path: Path, pg_cluster: LocalCluster, make_warranty_db, s3_servers: list[SeaweedServer]) -> None:
    name, dsn = make_warranty_db(claims=20000)
    source = await fingerprint(dsn)
    east, west = s3_servers
    buckets = {"east": new_bucket(east), "west": new_bucket(west)}
    home = tmp_path / "home"
    targets = [local_target(home, "home") | {"priority": 10},
               s3_target_dict(east, buckets["east"], "east") | {"priority": 20, "role": "secondary"},
               s3_target_dict(west, buckets["west"], "west") | {"priority": 30, "role": "secondary"}]
    catalog = {"url": f"sqlite:///{tmp_path / 'catalog.db'}"}
    dbs = [{"name": "warranty", "dsn": dsn}]
    setup = write_setup(tmp_path / "all", targets, dbs, catalog=catalog, repository=REPO)
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    (snap,) = json.loads(setup.cli("snapshots", "--json", check=True).stdout)

    # Damage on home: a pack, an index object, the manifest, the key; on west: another pack, overwritten;
    # on east: an object deleted.
    packs = sorted((home / "data").glob("*/*"), key=lambda p: p.stat().st_size)
    assert len(packs) >= 2
    damaged_home = {
        "pack": packs[-1],
        "index": next((home / "index").iterdir()),
        "manifest": home / "snapshots" / snap["id"],
        "key": next((home / "keys").iterdir()),
    }
    for path in damaged_home.values():
        flip_byte(path)
    west_pack = _rel(home, packs[-2])
    west.client().put_object(Bucket=buckets["west"], Key=west_pack, Body=b"not the pack it was" * 100)
    originals = {k: p.read_bytes() for k, p in damaged_home.items()}
    # Missing on east: an audit log copy (written to every target; check compares them object by object).
    lacking = _rel(home, next(p for p in sorted((home / "audit").rglob("*")) if p.is_file()))
    east.client().delete_object(Bucket=buckets["east"], Key=lacking)

    found = json.loads(setup.cli("check", "--read-data", "--json").stdout)
    assert not any("differ byte for byte" in n for n in found["notes"]), found["notes"]
    assert found["ok"] is False
    home_problems = _problems(found, "home")
    for kind, path in damaged_home.items():
        named = f"data key {int(path.name.rsplit('-', 1)[-1])}" if kind == "key" else path.name[:16]
        assert named in home_problems, (kind, home_problems)
    assert west_pack.rsplit("/", 1)[-1][:16] in _problems(found, "west")
    assert "1 object(s) the other targets hold are missing here (1 audit" in _problems(found, "east")

    # A dry run says what it would do and writes nothing.
    dry = setup.cli("repair", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = _by_target(json.loads(dry.stdout))
    assert {e.split(" ")[0] for e in plan["home"]["rewritten"]} == {_rel(home, p) for p in damaged_home.values()}
    assert [e.split(" ")[0] for e in plan["west"]["rewritten"]] == [west_pack]
    assert not plan["east"]["rewritten"] and [e.split(" ")[0] for e in plan["east"]["copied"]] == [lacking]
    assert {k: p.read_bytes() for k, p in damaged_home.items()} == originals

    # --target mends that target alone.
    only_west = _by_target(json.loads(setup.cli("repair", "--target", "west", "--json", check=True).stdout))
    assert set(only_west) == {"west"} and len(only_west["west"]["rewritten"]) == 1
    assert only_west["west"]["rewritten"][0].endswith("(from home)")  # home's copy is intact and preferred (priority)
    assert {k: p.read_bytes() for k, p in damaged_home.items()} == originals
    done = _by_target(json.loads(setup.cli("repair", "--json", check=True).stdout))
    assert len(done["home"]["rewritten"]) == 4 and not done["home"]["failed"]
    assert not done["west"]["rewritten"] and not done["east"]["rewritten"] and len(done["east"]["copied"]) == 1
    assert all(p.read_bytes() != originals[k] for k, p in damaged_home.items())

    clean = json.loads(setup.cli("check", "--read-data", "--json").stdout)
    assert clean["ok"] is True, clean

    # Each target alone restores the snapshot, and it matches the source.
    for t in targets:
        alone = write_setup(tmp_path / f"only-{t['name']}", [t], dbs, catalog=catalog, repository=REPO)
        alone.cli("restore", "--db", "warranty", "--into", f"{name}_{t['name']}", check=True)
        assert await fingerprint(pg_cluster.dsn(f"{name}_{t['name']}")) == source, t["name"]

    # The same pack damaged everywhere: named with the snapshot it makes unrestorable; nothing deleted.
    victim = packs[-1]
    flip_byte(victim)
    for server, bucket in ((east, buckets["east"]), (west, buckets["west"])):
        server.client().put_object(Bucket=bucket, Key=_rel(home, victim), Body=victim.read_bytes())
    lost = setup.cli("repair", "--json")
    assert lost.returncode != 0
    (gone,) = json.loads(lost.stdout)["lost"]
    assert gone["name"] == _rel(home, victim) and set(gone["copies"]) == {"home", "east", "west"}
    assert any(s.startswith(snap["id"][:8]) for s in gone["snapshots"]), gone
    assert victim.is_file()
    human = setup.cli("repair")
    assert human.returncode != 0 and "NO INTACT COPY" in human.stdout and snap["id"][:8] in human.stdout
    assert "nothing was deleted" in human.stderr
