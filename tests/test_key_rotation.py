"""Key rotation end to end: KEK and DEK rotation, re-encryption, retirement; every snapshot keeps restoring."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from core.postgres.fingerprint import fingerprint
from core.sandbox.warranty import append_claims

from tests.fixtures.backstop import Setup, local_target
from tests.test_security import audit, enrol, snapshots


def _objects(repo: Path, *prefixes: str) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for prefix in prefixes for p in (repo / prefix).rglob("*")
            if p.is_file()}


def _keys(setup: Setup) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(setup.cli("key", "list", "--json", check=True).stdout)


async def test_rotate_kek_and_dek_then_reencrypt_and_retire(tmp_path: Path, pg_cluster, make_warranty_db,  # type: ignore[no-untyped-def]
                                                            setup_factory) -> None:
    # Each table is its own stream, so every grown table re-stores its tail chunk (64 KiB on average):
    # enough claims that those tails are a small share of the snapshot.
    name, dsn = make_warranty_db(claims=6000)
    repo, repo2 = tmp_path / "repo", tmp_path / "repo2"
    setup = setup_factory([local_target(repo), local_target(repo2, "second")], [{"name": "warranty", "dsn": dsn}],
                          repository={"chunk_avg_kib": 64}, security={"totp_drift_steps": 2})
    setup.cli("init", check=True)
    admin = enrol(setup, "alice", "admin", drift=2)
    me = ["--operator", "alice"]

    sids, prints = [], []
    sids.append(setup.cli("backup", "--db", "warranty", check=True).stdout.strip())
    prints.append(await fingerprint(dsn))

    # KEK rotation: keys/ rewritten under a new salt, nothing else touched or uploaded.
    data_before = _objects(repo, "data", "index", "snapshots")
    keys_before = _objects(repo, "keys")
    kek_before = _keys(setup)[0]["kek_id"]
    out = setup.cli("key", "rotate", "--kek", *me, "--otp", admin.next())
    assert out.returncode == 0 and "new KEK" in out.stdout, out.stderr
    assert _objects(repo, "data", "index", "snapshots") == data_before
    assert _objects(repo2, "data", "index", "snapshots") == _objects(repo, "data", "index", "snapshots")
    keys_after = _objects(repo, "keys")
    assert keys_after.keys() == keys_before.keys() and keys_after != keys_before
    salt_after = json.loads(keys_after["keys/dek-00000001"])["kek"]["salt"]
    assert salt_after != json.loads(keys_before["keys/dek-00000001"])["kek"]["salt"]
    assert _objects(repo2, "keys") == keys_after
    listed = _keys(setup)
    assert [k["version"] for k in listed] == [1] and listed[0]["kek_id"] != kek_before

    append_claims(dsn, 0.05)
    sids.append(setup.cli("backup", "--db", "warranty", check=True).stdout.strip())
    prints.append(await fingerprint(dsn))

    # DEK rotation: a new version that new data is sealed with; dedup continues (same id_key).
    out = setup.cli("key", "rotate", "--dek", *me, "--otp", admin.next())
    assert out.returncode == 0 and "new data key 2" in out.stdout, out.stderr
    append_claims(dsn, 0.05)
    sids.append(setup.cli("backup", "--db", "warranty", check=True).stdout.strip())
    prints.append(await fingerprint(dsn))
    third = snapshots(setup)[-1]
    assert 0 < third["stored_bytes"] < 0.5 * snapshots(setup)[0]["stored_bytes"]  # deduplicated against DEK 1 data
    listed = {k["version"]: k for k in _keys(setup)}
    assert listed[2]["current"] and listed[2]["usage"]["chunks"] > 0 and listed[1]["usage"]["chunks"] > 0

    for i, (sid, fp) in enumerate(zip(sids, prints, strict=False)):
        into = f"{name}_r{i}"
        setup.cli("restore", "--db", "warranty", "--snapshot", sid, "--into", into, check=True)
        assert await fingerprint(pg_cluster.dsn(into)) == fp, f"snapshot {i + 1} after rotations"

    # Retiring DEK 1 is refused while data needs it.
    out = setup.cli("key", "retire", "1", *me, "--otp", admin.next())
    assert out.returncode == 2 and "still protects" in out.stderr and "chunk" in out.stderr, out.stderr
    assert (repo / "keys" / "dek-00000001").exists()

    out = setup.cli("key", "reencrypt", *me, "--otp", admin.next())
    assert out.returncode == 0, out.stderr
    renamed = {e["detail"]["old"]: e["detail"]["new"] for e in audit(setup) if e["action"] == "snapshot.renamed"}
    assert set(renamed) == set(sids[:2])  # the third manifest was already sealed with DEK 2
    new_sids = [renamed.get(s, s) for s in sids]
    assert [s["id"] for s in snapshots(setup)] == new_sids
    assert json.loads(setup.cli("key", "list", "--json", check=True).stdout)[0]["usage"]["chunks"] == 0

    out = setup.cli("key", "retire", "1", *me, "--otp", admin.next())
    assert out.returncode == 0, out.stderr
    for r in (repo, repo2):
        assert sorted(p.name for p in (r / "keys").iterdir()) == ["dek-00000002"]
    check = setup.cli("check", "--read-data")
    assert check.returncode == 0, check.stdout

    for i, (sid, fp) in enumerate(zip(new_sids, prints, strict=False)):
        into = f"{name}_s{i}"
        setup.cli("restore", "--db", "warranty", "--snapshot", sid, "--into", into, check=True)
        assert await fingerprint(pg_cluster.dsn(into)) == fp, f"snapshot {i + 1} after re-encryption"

    # The catalog can still be rebuilt from the repository alone, with the new ids.
    for f in setup.dir.glob("catalog.db*"):
        f.unlink()
    setup.cli("catalog", "rebuild", check=True)
    assert sorted(s["id"] for s in snapshots(setup)) == sorted(new_sids)
    events = [(e["action"], e["outcome"]) for e in audit(setup) if e["action"].startswith("key.")]
    assert ("key.create", "succeeded") in events and events.count(("key.rotate", "succeeded")) == 2
    assert ("key.retire", "failed") in events and ("key.reencrypt", "succeeded") in events
    assert events[-1] == ("key.retire", "succeeded")
    assert setup.cli("audit", "verify").returncode == 0


def test_rotate_if_due_follows_the_policy_without_a_code(tmp_path: Path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    setup = setup_factory([local_target(tmp_path / "repo")], [])
    doc = yaml.safe_load(setup.path.read_text())
    doc["encryption"]["rotate_every"] = "8s"
    setup.path.write_text(yaml.safe_dump(doc))
    setup.cli("init", check=True)
    out = setup.cli("key", "rotate", "--if-due", check=True)
    assert "not due" in out.stdout
    # A manual rotation needs an operator; the policy's does not (the scheduler runs it).
    assert setup.cli("key", "rotate").returncode == 2
    time.sleep(8.5)
    out = setup.cli("key", "rotate", "--if-due", check=True)
    assert "new data key 2" in out.stdout and "new KEK" in out.stdout
    assert [k["version"] for k in _keys(setup)] == [1, 2]
    assert "not due" in setup.cli("key", "rotate", "--if-due", check=True).stdout
    entry = [e for e in audit(setup) if e["action"] == "key.rotate" and e["outcome"] == "allowed"][-1]
    assert "rotate_every=8s" in entry["detail"]["reason"]
    # Without a policy, --if-due is a usage error.
    bare = setup_factory([local_target(tmp_path / "repo2")], [])
    bare.cli("init", check=True)
    out = bare.cli("key", "rotate", "--if-due")
    assert out.returncode == 2 and "rotate_every" in out.stderr
