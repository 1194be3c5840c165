"""Deduplication across snapshots, and nothing readable in stored objects."""

from __future__ import annotations

import json
from pathlib import Path

from core.sandbox.warranty import SENTINEL, append_claims

from tests.fixtures.backstop import local_target, s3_target_dict
from tests.fixtures.s3 import new_bucket


def _snapshots(setup) -> list[dict]:  # type: ignore[no-untyped-def]
    return json.loads(setup.cli("snapshots", "--json", check=True).stdout)


def test_deduplication(tmp_path, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    # 256 KiB chunks: at this test's size (tens of MB) the default 1 MiB chunk
    # would make the changed archive header alone a large share of a snapshot.
    _, dsn = make_warranty_db(claims=60_000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}],
                          repository={"chunk_avg_kib": 256})
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    first, second = _snapshots(setup)
    assert first["stored_bytes"] > 1_000_000
    assert second["stored_bytes"] < 0.01 * first["stored_bytes"], (first, second)

    append_claims(dsn, 0.05)
    setup.cli("backup", "--db", "warranty", check=True)
    third = _snapshots(setup)[-1]
    assert third["size_bytes"] > first["size_bytes"]
    assert 0 < third["stored_bytes"] < 0.15 * first["stored_bytes"], (first, third)


def _stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_no_plaintext_in_stored_objects(tmp_path, s3_servers, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=2000)
    server = s3_servers[1]
    bucket = new_bucket(server)
    setup = setup_factory([local_target(tmp_path / "repo"), s3_target_dict(server, bucket)],
                          [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    needle = SENTINEL.encode()
    # The sentinel really is in the source data (otherwise this test proves nothing).
    import psycopg
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM warranty.claims WHERE description LIKE %s",
                            (f"%{SENTINEL}%",)).fetchone()[0] > 0  # type: ignore[index]

    local = _stored_files(tmp_path / "repo")
    assert any("data" in p.parts for p in local)
    for p in local:
        assert needle not in p.read_bytes(), p
    client = server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert any(k.startswith("data/") for k in keys)
    for k in keys:
        assert needle not in client.get_object(Bucket=bucket, Key=k)["Body"].read(), k
    # And below the S3 API: the server's own volume files.
    for p in _stored_files(server.data_dir):
        if p.suffix in (".dat", ".idx", ".ldb", ".log") or "volume" in str(p):
            assert needle not in p.read_bytes(), p
