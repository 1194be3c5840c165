"""Immutability (FORMAT.md 23): S3 Object Lock against a real SeaweedFS server, and append-only local targets.

- A lock-enabled bucket: a backup's write-once objects carry retention (lock files and index objects do not);
  a snapshot whose manifest is locked cannot be forgotten (the refusal names the date); once an operator has
  lifted a manifest's governance lock, forget + prune leave the snapshot's locked packs in place and the prune
  report says until when.
- A bucket without Object Lock: `init` refuses in one line, exits non-zero and writes nothing anywhere.
- An append-only local target keeps every object through forget + prune while the other target is pruned, and
  `prune --append-only-override` prunes it.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tests.fixtures.backstop import Setup, local_target, s3_target_dict, write_setup
from tests.fixtures.otp import CodeBook, secret_from_uri
from tests.fixtures.s3 import SeaweedServer, new_bucket

REPOSITORY = {"chunk_avg_kib": 64, "pack_target_mib": 1}


def _keys(server: SeaweedServer, bucket: str, prefix: str = "") -> list[str]:
    client = server.client()
    return [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]


def _setup(base: Path, targets: list[dict[str, Any]], make_warranty_db: Callable[..., tuple[str, str]]) -> Setup:
    """Two small, different databases, so forgetting one's snapshot leaves packs no other snapshot needs."""
    dbs: list[dict[str, Any]] = [{"name": f"db{seed}", "dsn": make_warranty_db(claims=150, seed=seed)[1]}
                                 for seed in (1, 2)]
    dbs[1]["retention"] = {"keep_last": 1}
    # db1 gets 4 MiB of incompressible rows of its own: packs that only its snapshot needs.
    with psycopg.connect(dbs[0]["dsn"], autocommit=True) as conn:
        conn.execute("CREATE TABLE noise (id int, payload text)")
        with conn.cursor().copy("COPY noise FROM STDIN") as copy:
            for i in range(256):
                copy.write_row((i, os.urandom(8192).hex()))
    return write_setup(base, targets, dbs, repository=REPOSITORY, security={"totp_drift_steps": 2})


class Admin:
    """An enrolled admin: ``admin.args()`` is what a gated command needs (a fresh code each time)."""

    def __init__(self, setup: Setup) -> None:
        out = setup.cli("operator", "add", "alice", "--role", "admin", check=True)
        self.book = CodeBook(secret_from_uri(out.stdout.strip().splitlines()[-1]), drift=2)

    def args(self) -> list[str]:
        return ["--operator", "alice", "--otp", self.book.next()]


def _snapshot_ids(setup: Setup) -> dict[str, str]:
    return {s["db"]: s["id"] for s in json.loads(setup.cli("snapshots", "--json", check=True).stdout)}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_locked_bucket_retention_forget_refused_and_locked_pack_survives_prune(
        tmp_path: Path, s3_servers: list[SeaweedServer], make_warranty_db: Callable[..., tuple[str, str]]) -> None:
    server = s3_servers[0]
    bucket = f"lk-{time.time_ns() % 10**12}"  # does not exist yet: init creates it with Object Lock enabled
    target = s3_target_dict(server, bucket, "vault") | {"object_lock": {"mode": "governance", "days": 1}}
    setup = _setup(tmp_path / "s", [target], make_warranty_db)
    setup.cli("init", check=True)
    alice = Admin(setup)
    client = server.client()
    assert client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]["ObjectLockEnabled"] == \
        "Enabled"
    started = datetime.datetime.now(datetime.UTC)
    setup.cli("backup", "--db", "db1", check=True)
    setup.cli("backup", "--db", "db2", check=True)
    ids = _snapshot_ids(setup)

    # Write-once objects carry the configured retention; index objects (rebuilt by prune) and locks do not.
    packs = _keys(server, bucket, "data/")
    assert len(packs) >= 2
    for key in [*packs, *_keys(server, bucket, "snapshots/"), *_keys(server, bucket, "keys/"), "config"]:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head.get("ObjectLockMode") == "GOVERNANCE", key
        until = head["ObjectLockRetainUntilDate"]
        assert started + datetime.timedelta(hours=23) < until < started + datetime.timedelta(days=1, hours=1), key
    for key in _keys(server, bucket, "index/"):
        assert client.head_object(Bucket=bucket, Key=key).get("ObjectLockMode") is None, key
    assert _keys(server, bucket, "locks/") == []  # released for good, not hidden behind delete markers
    assert "DeleteMarkers" not in client.list_object_versions(Bucket=bucket, Prefix="locks/")

    # A locked manifest cannot be forgotten: one line naming the snapshot and the date; nothing changes.
    refused = setup.cli(*alice.args(), "forget", ids["db1"])
    assert refused.returncode != 0
    assert "locked" in refused.stderr and ids["db1"][:8] in refused.stderr and "UTC" in refused.stderr, \
        refused.stderr
    assert refused.stderr.strip().count("\n") == 0, refused.stderr
    assert set(_snapshot_ids(setup).values()) == set(ids.values())

    # Retention rules plan around locks: db2's older snapshot would go, but is kept with the date as reason.
    setup.cli("backup", "--db", "db2", check=True)
    ruled = setup.cli(*alice.args(), "forget", "--db", "db2", "--json")
    assert ruled.returncode == 0, ruled.stderr
    out = json.loads(ruled.stdout)
    assert list(out["locked"]) == [ids["db2"]] and out["forgotten"] == [], out
    (older,) = [d for d in out["decisions"] if d["snapshot"] == ids["db2"]]
    assert older["keep"] and any(r.startswith("locked until") for r in older["reasons"]), older

    # An operator lifts db1's manifest's governance lock (bypass, as only they may); forget then works.
    key = f"snapshots/{ids['db1']}"
    version = client.head_object(Bucket=bucket, Key=key)["VersionId"]
    short = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
    client.put_object_retention(Bucket=bucket, Key=key, VersionId=version, BypassGovernanceRetention=True,
                                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": short})
    time.sleep(2.5)
    setup.cli(*alice.args(), "forget", ids["db1"], check=True)
    assert _keys(server, bucket, key) == []
    assert client.list_object_versions(Bucket=bucket, Prefix=key).get("Versions") is None  # deleted for good

    # Prune finds db1's packs unneeded but locked: they stay (marked), and the report says until when.
    pruned = setup.cli(*alice.args(), "prune", "--grace", "0", "--json", check=True)
    rep = json.loads(pruned.stdout)
    assert rep["packs_deleted"] == 0 and rep["packs_locked"] > 0, json.dumps(rep)
    assert rep["locked_until"] > time.time() + 23 * 3600, rep
    assert set(packs) <= set(_keys(server, bucket, "data/"))  # every pack of the first two backups is still there
    text = setup.cli(*alice.args(), "prune", "--grace", "0", check=True).stdout
    assert "locked (Object Lock) until" in text, text
    # The repository is still whole and db2 restores from it.
    checked = setup.cli("check", "--read-data")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_init_refuses_a_bucket_without_object_lock_and_writes_nothing(
        tmp_path: Path, s3_servers: list[SeaweedServer]) -> None:
    server = s3_servers[0]
    bucket = new_bucket(server)  # a plain bucket: Object Lock can no longer be turned on
    home = tmp_path / "home"
    setup = write_setup(tmp_path / "s", [local_target(home, "home"),
                                         s3_target_dict(server, bucket, "vault") | {
                                             "object_lock": {"mode": "compliance", "days": 7}}],
                        [{"name": "db", "dsn": "postgresql://nobody@127.0.0.1:1/none"}])
    res = setup.cli("init")
    assert res.returncode != 0
    line = res.stderr.strip()
    assert line.count("\n") == 0, line
    assert "vault" in line and "no Object Lock" in line and "create a new bucket with Object Lock enabled" in line
    assert _keys(server, bucket) == []
    assert not home.exists()  # checked before any target was prepared


def test_append_only_target_keeps_everything_while_the_other_is_pruned(
        tmp_path: Path, make_warranty_db: Callable[..., tuple[str, str]]) -> None:
    main, vault = tmp_path / "main", tmp_path / "vault"
    setup = _setup(tmp_path / "s", [local_target(main, "main"),
                                    local_target(vault, "vault") | {"append_only": True}], make_warranty_db)
    setup.cli("init", check=True)
    alice = Admin(setup)
    setup.cli("backup", "--db", "db1", check=True)
    setup.cli("backup", "--db", "db2", check=True)
    ids = _snapshot_ids(setup)
    before = _files(vault)
    main_packs = {n for n in _files(main) if n.startswith("data/")}

    setup.cli(*alice.args(), "forget", ids["db1"], check=True)
    pruned = setup.cli(*alice.args(), "prune", "--grace", "0")
    assert pruned.returncode == 0, pruned.stderr
    assert "target 'vault' is append-only: nothing was deleted there" in pruned.stdout, pruned.stdout
    assert "--append-only-override vault" in pruned.stdout

    # The other target lost db1's manifest and its packs; the append-only one kept every byte of every object.
    after_main = _files(main)
    assert f"snapshots/{ids['db1']}" not in after_main
    gone = main_packs - set(after_main)
    assert gone, "prune deleted none of the forgotten snapshot's packs on the other target"
    after_vault = _files(vault)
    assert {n: b for n, b in after_vault.items() if n in before} == before
    assert not [n for n in after_vault if n.startswith("locks/")]

    # On the vault's host an operator prunes it explicitly: db1's manifest and packs go there too.
    override = setup.cli(*alice.args(), "prune", "--grace", "0", "--append-only-override", "vault")
    assert override.returncode == 0, override.stderr
    final = _files(vault)
    assert f"snapshots/{ids['db1']}" not in final and f"snapshots/{ids['db2']}" in final
    assert not (gone & set(final)), "the override left db1's packs on the append-only target"
    audit = setup.cli("audit", "list", "--json")
    assert "append-only override of target vault" in audit.stdout, audit.stdout[-2000:]
    checked = setup.cli("check", "--read-data")
    assert checked.returncode == 0, checked.stdout + checked.stderr
