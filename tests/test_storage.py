"""Storage targets against a real directory and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from core.config import LocalTargetConfig, S3TargetConfig
from core.errors import ObjectNotFound, StorageError, TargetUnreachable
from core.storage.base import ObjectInfo, Storage
from core.storage.factory import make_storage, make_storages
from core.storage.local import TEMP_PREFIX, LocalStorage
from core.storage.s3 import S3Storage

from tests.fixtures.s3 import SeaweedServer, new_bucket, s3_target

MIB = 1024 * 1024


def _local(tmp_path: Path, name: str = "local1") -> LocalStorage:
    root = tmp_path / "repo"
    root.mkdir()
    return LocalStorage(LocalTargetConfig(name=name, type="local", path=root))


def _offline_s3_config() -> S3TargetConfig:
    """A config whose endpoint is never contacted by the tests using it."""
    return S3TargetConfig(name="offsite", type="s3", bucket="bkt", endpoint_url="http://h:1")


@pytest.fixture(params=["local", "s3", "s3-prefixed"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """The same tests against a directory, a bucket, and a bucket with a key prefix."""
    st: Storage
    if request.param == "local":
        st = _local(tmp_path)
    else:
        server: SeaweedServer = request.getfixturevalue("s3_servers")[0]
        prefix = "backstop/repo1" if request.param == "s3-prefixed" else ""
        st = make_storage(s3_target(server, new_bucket(server), prefix=prefix, multipart_chunk_mib=5))
    yield st
    asyncio.run(st.close())


async def test_round_trip(storage: Storage) -> None:
    objects = {
        "config": b"cfg",
        "data/ab/ab01": b"0123456789",
        "data/ab/ab02": b"x" * 1000,
        "data/ac/ac01": b"",
        "index/i1": b"index",
    }
    for name, data in objects.items():
        await storage.put(name, data)

    for name, data in objects.items():
        assert await storage.get(name) == data
        assert await storage.exists(name)
    assert await storage.get_range("data/ab/ab01", 3, 4) == b"3456"
    assert await storage.get_range("data/ab/ab01", 0, 10) == b"0123456789"
    assert await storage.get_range("data/ab/ab01", 7, 0) == b""
    assert not await storage.exists("data/ab/nope")
    assert not await storage.exists("data")  # a "directory" is not an object

    assert await storage.list("") == [ObjectInfo(n, len(d)) for n, d in sorted(objects.items())]
    assert [o.name for o in await storage.list("data/ab")] == ["data/ab/ab01", "data/ab/ab02"]
    assert [o.name for o in await storage.list("data/")] == ["data/ab/ab01", "data/ab/ab02", "data/ac/ac01"]
    assert [o.name for o in await storage.list("data/a")] == ["data/ab/ab01", "data/ab/ab02", "data/ac/ac01"]
    assert [o.name for o in await storage.list("conf")] == ["config"]
    assert await storage.list("nothing/") == []

    await storage.delete("data/ab/ab01")
    assert not await storage.exists("data/ab/ab01")
    await storage.delete("data/ab/ab01")  # absent: not an error
    assert [o.name for o in await storage.list("data/ab/")] == ["data/ab/ab02"]


async def test_overwrite_replaces(storage: Storage) -> None:
    await storage.put("locks/l1", b"first version, longer")
    await storage.put("locks/l1", b"second")
    assert await storage.get("locks/l1") == b"second"
    assert await storage.list("locks/") == [ObjectInfo("locks/l1", 6)]


async def test_missing_object(storage: Storage) -> None:
    for call in (storage.get("data/zz/none"), storage.get_range("data/zz/none", 0, 4)):
        with pytest.raises(ObjectNotFound) as info:
            await call
        assert f"target '{storage.name}'" in str(info.value)
        assert "data/zz/none" in str(info.value)


async def test_range_past_end_is_an_error(storage: Storage) -> None:
    await storage.put("p", b"short")
    with pytest.raises(StorageError, match="shorter than expected") as info:
        await storage.get_range("p", 3, 10)
    assert not isinstance(info.value, ObjectNotFound)
    with pytest.raises(StorageError, match="shorter than expected"):
        await storage.get_range("p", 100, 1)


async def test_large_object_round_trip(storage: Storage) -> None:
    data = os.urandom(20 * MIB)
    await storage.put("data/big/pack", data)
    assert await storage.get("data/big/pack") == data
    assert await storage.get_range("data/big/pack", 5 * MIB - 3, 6) == data[5 * MIB - 3 : 5 * MIB + 3]
    assert await storage.list("data/big/") == [ObjectInfo("data/big/pack", 20 * MIB)]
    if isinstance(storage, S3Storage):
        head = storage._get_client().head_object(Bucket=storage.config.bucket, Key=storage._key("data/big/pack"))
        assert head["ETag"].strip('"').endswith("-4"), "expected a 4-part multipart upload"


async def test_cleanup_leftovers_never_touches_objects(storage: Storage) -> None:
    objects = {"config": b"c", "data/ab/ab01": b"x" * 100, "locks/l1": b"lock"}
    for name, data in objects.items():
        await storage.put(name, data)
    # Even with a cut-off in the future (everything counts as old), objects are not debris.
    assert await storage.cleanup_leftovers(time.time() + 3600) == []
    assert await storage.list("") == [ObjectInfo(n, len(d)) for n, d in sorted(objects.items())]


# -- S3 specifics ----------------------------------------------------------


async def test_failed_multipart_leaves_no_object(s3_servers: list[SeaweedServer], monkeypatch: Any) -> None:
    server = s3_servers[0]
    st = S3Storage(s3_target(server, new_bucket(server), multipart_chunk_mib=5))
    client = st._get_client()
    real_upload_part = client.upload_part

    def flaky_upload_part(**kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 3:
            raise OSError(errno.ECONNRESET, "connection reset by peer")
        return real_upload_part(**kwargs)

    monkeypatch.setattr(client, "upload_part", flaky_upload_part)
    with pytest.raises(StorageError, match="target 'offsite'"):
        await st.put("data/big/pack", os.urandom(12 * MIB))
    monkeypatch.undo()

    assert not await st.exists("data/big/pack")
    assert await st.list("") == []
    uploads = client.list_multipart_uploads(Bucket=st.config.bucket).get("Uploads", [])
    assert uploads == [], "the failed multipart upload was not aborted"
    await st.close()


async def test_prefix_keys(s3_servers: list[SeaweedServer]) -> None:
    server = s3_servers[0]
    bucket = new_bucket(server)
    st = S3Storage(s3_target(server, bucket, prefix="backups"))
    await st.put("config", b"c")
    keys = [o["Key"] for o in server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["backups/config"]
    assert await st.list("") == [ObjectInfo("config", 1)]
    await st.close()


async def test_server_down_is_unreachable(s3_server_factory: Callable[[], SeaweedServer]) -> None:
    server = s3_server_factory()
    cfg = s3_target(server, new_bucket(server), max_attempts=1, connect_timeout_s=1.0, read_timeout_s=2.0)
    st = S3Storage(cfg)
    await st.put("config", b"kept")

    server.kill()
    started = time.monotonic()
    for call in (st.get("config"), st.put("x", b"1"), st.list(""), st.exists("config"), st.delete("x")):
        with pytest.raises(TargetUnreachable) as info:
            await call
        msg = str(info.value)
        assert msg.startswith("target 'offsite': cannot connect to s3 http://127.0.0.1:")
        assert cfg.bucket in msg and "check that the server is running" in msg
        assert "\n" not in msg and "backstop-test" not in msg  # one line, no access key
    assert time.monotonic() - started < 10

    server.start()
    assert await st.get("config") == b"kept"
    await st.close()


async def test_missing_bucket(s3_servers: list[SeaweedServer]) -> None:
    server = s3_servers[0]
    st = S3Storage(s3_target(server, f"missing-{os.urandom(4).hex()}"))
    for call in (st.put("config", b"c"), st.get("config"), st.list(""), st.exists("config")):
        with pytest.raises(StorageError) as info:
            await call
        assert not isinstance(info.value, ObjectNotFound)
        assert str(info.value).startswith("target 'offsite': bucket missing-")
        assert "does not exist" in str(info.value) and "create it" in str(info.value)

    await st.ensure_bucket()
    await st.prepare()  # the generic hook `backstop init` calls; idempotent
    await st.put("config", b"c")
    assert await st.get("config") == b"c"
    await st.close()


async def test_two_servers_are_independent(s3_servers: list[SeaweedServer]) -> None:
    a, b = s3_servers
    assert a.endpoint_url != b.endpoint_url
    bucket = new_bucket(a)
    stores = make_storages([s3_target(a, bucket, name="region-a"), s3_target(b, bucket, name="region-b")])
    await stores[0].put("config", b"a")
    with pytest.raises(StorageError, match="target 'region-b': bucket .* does not exist"):
        await stores[1].get("config")
    for st in stores:
        await st.close()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (
            "AccessDenied",
            "credentials were refused by s3 http://h:1 bucket bkt (AccessDenied) during upload; "
            "check the AWS credential chain",
        ),
        ("InvalidAccessKeyId", "credentials were refused"),
        ("SignatureDoesNotMatch", "credentials were refused"),
        ("NoSuchBucket", "bucket bkt does not exist at s3 http://h:1 bucket bkt; create it"),
        ("NoSuchKey", "object data/x is missing"),
        ("InternalError", "S3 error InternalError during upload of data/x: We encountered an internal error."),
    ],
)
def test_s3_error_mapping(code: str, expected: str) -> None:
    from botocore.exceptions import ClientError

    st = S3Storage(_offline_s3_config())
    response: Any = {
        "Error": {"Code": code, "Message": "We encountered an internal error.\nAKIAEXAMPLEKEY StringToSign..."},
        "ResponseMetadata": {"HTTPStatusCode": 500},
    }
    err = st._map_error(ClientError(response, "PutObject"), "upload", "data/x")
    assert str(err).startswith("target 'offsite': ")
    assert expected in str(err)
    assert "AKIA" not in str(err) and "\n" not in str(err)


async def test_s3_unknown_profile(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "aws-config").write_text("[default]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    st = S3Storage(_offline_s3_config().model_copy(update={"profile": "nope"}))
    with pytest.raises(StorageError, match="target 'offsite': AWS profile 'nope' is not defined"):
        await st.exists("config")


async def test_s3_missing_ca_bundle(tmp_path: Path) -> None:
    st = S3Storage(_offline_s3_config().model_copy(update={"verify_tls": tmp_path / "ca.pem"}))
    with pytest.raises(StorageError, match=r"target 'offsite': CA bundle .*ca.pem \(verify_tls\) does not exist"):
        await st.get("config")


def test_boto3_is_not_imported_eagerly() -> None:
    code = (
        "import sys, core.storage.factory, core.storage.s3, core.storage.local\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 's3transfer'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


# -- local specifics ---------------------------------------------------------


async def test_local_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    st = LocalStorage(LocalTargetConfig(name="local1", type="local", path=tmp_path / "afile" / "repo"))
    for call in (st.put("config", b"c"), st.get("config"), st.list(""), st.exists("config")):
        with pytest.raises(TargetUnreachable) as info:
            await call
        msg = str(info.value)
        assert msg.startswith(f"target 'local1': directory {tmp_path / 'afile' / 'repo'} is not accessible")
        assert "Not a directory" in msg
    with pytest.raises(StorageError, match="target 'local1': .*is a file, not a directory"):
        await st.ensure_directory()


async def test_local_missing_root(tmp_path: Path) -> None:
    st = LocalStorage(LocalTargetConfig(name="local1", type="local", path=tmp_path / "gone"))
    with pytest.raises(TargetUnreachable, match="No such file or directory; check that the disk is mounted"):
        await st.put("config", b"c")
    assert not (tmp_path / "gone").exists(), "put must not create the repository root"
    await st.prepare()  # the generic hook `backstop init` calls
    await st.ensure_directory()  # idempotent
    await st.put("config", b"c")
    assert await st.get("config") == b"c"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
async def test_local_read_only_directory(tmp_path: Path) -> None:
    st = _local(tmp_path)
    st.root.chmod(0o555)
    try:
        with pytest.raises(StorageError, match=f"target 'local1': directory {st.root}.* is not writable"):
            await st.put("data/x", b"c")
    finally:
        st.root.chmod(0o755)


async def test_local_disk_full_removes_partial(tmp_path: Path, monkeypatch: Any) -> None:
    st = _local(tmp_path)
    real_write = os.write

    def write_then_fill(fd: int, data: Any) -> int:
        if len(data) > 1000:
            real_write(fd, bytes(data[:1000]))  # a partial object reaches the disk first
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_then_fill)
    with pytest.raises(StorageError) as info:
        await st.put("data/ab/pack", b"z" * 5000)
    monkeypatch.undo()
    msg = str(info.value)
    assert msg.startswith("target 'local1': disk holding") and "is full" in msg
    assert "partial object was removed" in msg
    assert [p.name for p in (st.root / "data" / "ab").iterdir()] == []


async def test_an_object_made_in_pieces_is_stored_whole_and_a_failing_maker_stores_nothing(
        storage: Storage) -> None:
    made = [os.urandom(700_000), b"", os.urandom(123), os.urandom(300_000)]

    async def pieces(fail_after: int | None = None) -> Any:
        for i, piece in enumerate(made):
            await asyncio.sleep(0)  # the next piece is still being made while the last is written
            if i == fail_after:
                raise RuntimeError("the maker failed")
            yield piece

    await storage.put_stream("wal/00000001/a", pieces())
    assert await storage.get("wal/00000001/a") == b"".join(made)
    with pytest.raises(RuntimeError, match="the maker failed"):
        await storage.put_stream("wal/00000001/b", pieces(fail_after=2))
    assert not await storage.exists("wal/00000001/b")
    assert [o.name for o in await storage.list("wal/")] == ["wal/00000001/a"]
    if isinstance(storage, LocalStorage):  # nor a temporary file
        assert sorted(p.name for p in (storage.root / "wal" / "00000001").iterdir()) == ["a"]


async def test_local_disk_full_while_writing_pieces_removes_everything(tmp_path: Path, monkeypatch: Any) -> None:
    st = _local(tmp_path)
    real_write = os.write
    calls = []

    def fill_on_second(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    async def pieces() -> Any:
        yield b"a" * 5000
        yield b"b" * 5000

    monkeypatch.setattr(os, "write", fill_on_second)
    with pytest.raises(StorageError, match="is full .* the partial object was removed"):
        await st.put_stream("data/ab/pack", pieces())
    monkeypatch.undo()
    assert [p.name for p in (st.root / "data" / "ab").iterdir()] == []


async def test_local_hides_temp_files_and_rejects_bad_names(tmp_path: Path) -> None:
    st = _local(tmp_path)
    await st.put("data/ab/x", b"1")
    (st.root / "data" / "ab" / f"{TEMP_PREFIX}x.123").write_bytes(b"partial")
    assert await st.list("") == [ObjectInfo("data/ab/x", 1)]
    for bad in ("../escape", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(StorageError, match="invalid object name"):
            await st.put(bad, b"x")
    assert not (tmp_path / "escape").exists()


async def test_local_creates_parent_dirs(tmp_path: Path) -> None:
    st = _local(tmp_path)
    await st.put("a/b/c/d", b"deep")
    assert (st.root / "a" / "b" / "c" / "d").read_bytes() == b"deep"
    assert st.describe() == f"directory {st.root}"
