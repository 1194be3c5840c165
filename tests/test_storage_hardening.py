"""Hardening of storage targets and secrets: file modes, passphrase checks, paths that
are files, TLS verification off, and leftovers of crashed writes.

Real directories, real SeaweedFS servers (one serving HTTPS with a certificate made
here) and the real CLI as a subprocess.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from core.config import EncryptionConfig, LocalTargetConfig
from core.errors import ConfigError, StorageError, TargetUnreachable
from core.storage.local import TEMP_PREFIX, LocalStorage
from core.storage.s3 import S3Storage

from tests.fixtures.backstop import local_target, s3_target_dict
from tests.fixtures.s3 import SeaweedServer, ServerFactory, new_bucket, s3_target


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Permission bits of every file and every directory under ``root`` (root included)."""
    files: dict[str, int] = {}
    dirs: dict[str, int] = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            p = Path(dirpath, n)
            dirs[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
        for n in filenames:
            p = Path(dirpath, n)
            files[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return files, dirs


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# -- 1. file modes ---------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o277], ids=lambda m: f"umask-{m:03o}")
async def test_local_objects_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    outside_mode = stat.S_IMODE(tmp_path.stat().st_mode)
    mount = tmp_path / "mnt"  # missing: prepare() creates it and the root below it
    root = mount / "repo"
    st = LocalStorage(LocalTargetConfig(name="local1", type="local", path=root))
    with _umask(umask):
        await st.prepare()
        for name, data in {
            "config": b"cfg",
            "keys/dek-00000001": b"wrapped key",
            "audit/abc/000000000001": b"entry",
            "data/ab/ab01": os.urandom(1000),
            "a/b/c/d": b"deep",
        }.items():
            await st.put(name, data)
        await st.put("config", b"replaced")
    files, dirs = _modes(root)
    assert files and all(m == 0o600 for m in files.values()), {k: oct(v) for k, v in files.items()}
    assert set(dirs) >= {".", "keys", "audit", "audit/abc", "data", "data/ab", "a", "a/b", "a/b/c"}
    assert all(m == 0o700 for m in dirs.values()), {k: oct(v) for k, v in dirs.items()}
    assert stat.S_IMODE(mount.stat().st_mode) == 0o700
    assert stat.S_IMODE(tmp_path.stat().st_mode) == outside_mode, "a directory Backstop did not create was changed"
    assert await st.get("config") == b"replaced"


async def test_existing_root_keeps_its_mode(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    root.chmod(0o750)  # the administrator's choice, e.g. for a monitoring group
    st = LocalStorage(LocalTargetConfig(name="local1", type="local", path=root))
    with _umask(0o022):
        await st.prepare()
        await st.put("data/ab/ab01", b"x")
    files, dirs = _modes(root)
    assert dirs == {".": 0o750, "data": 0o700, "data/ab": 0o700}
    assert files == {"data/ab/ab01": 0o600}


def test_cli_init_creates_a_private_repository(tmp_path: Path, setup_factory: Any) -> None:
    root = tmp_path / "backups" / "repo"
    setup = setup_factory([local_target(root)], [])
    setup.passphrase_file.chmod(0o600)
    with _umask(0o022):
        setup.cli("init", check=True)
        setup.cli("operator", "add", "alice", "--role", "admin", check=True)
    files, dirs = _modes(root)
    assert "config" in files
    assert any(f.startswith("keys/") for f in files) and any(f.startswith("audit/") for f in files)
    assert all(m == 0o600 for m in files.values()), {k: oct(v) for k, v in files.items()}
    assert all(m == 0o700 for m in dirs.values()), {k: oct(v) for k, v in dirs.items()}
    assert stat.S_IMODE((tmp_path / "backups").stat().st_mode) == 0o700


# -- 2. passphrase checks ------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\n", b"   \n", b"\t \r\n", b" \n\n"])
def test_blank_passphrase_file_is_refused(tmp_path: Path, content: bytes) -> None:
    pf = tmp_path / "passphrase"
    pf.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        EncryptionConfig(passphrase_file=pf).passphrase()
    msg = str(info.value)
    assert msg.startswith(f"encryption.passphrase_file: {pf} is ")
    assert ("empty" in msg or "whitespace only" in msg) and "write the repository passphrase into it" in msg
    assert "\n" not in msg


def test_passphrase_with_inner_spaces_is_kept_verbatim(tmp_path: Path) -> None:
    pf = tmp_path / "passphrase"
    pf.write_bytes(b"  correct horse  \n")
    assert EncryptionConfig(passphrase_file=pf).passphrase() == b"  correct horse  "


@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_blank_passphrase_env_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("BK_HARDENING_PASS", value)
    with pytest.raises(ConfigError) as info:
        EncryptionConfig(passphrase_env="BK_HARDENING_PASS").passphrase()
    msg = str(info.value)
    assert msg.startswith("encryption.passphrase_env: environment variable BK_HARDENING_PASS is ")
    assert ("empty" in msg or "whitespace only" in msg) and "\n" not in msg


def test_cli_refuses_a_whitespace_passphrase(tmp_path: Path, setup_factory: Any) -> None:
    setup = setup_factory([local_target(tmp_path / "repo")], [], passphrase="   ")
    out = setup.cli("init")
    assert out.returncode == 2, out.stderr
    assert "whitespace only" in _one_line(out.stderr)
    assert not (tmp_path / "repo" / "config").exists()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o600, None),
        (0o400, None),
        (0o700, None),
        (0o644, "readable by other users (mode 0644)"),
        (0o640, "readable by other users (mode 0640)"),
        (0o604, "readable by other users (mode 0604)"),
        (0o620, "writable by other users (mode 0620)"),
        (0o666, "readable and writable by other users (mode 0666)"),
    ],
    ids=lambda v: f"{v:04o}" if isinstance(v, int) else "",
)
def test_passphrase_file_warning(tmp_path: Path, mode: int, expected: str | None) -> None:
    pf = tmp_path / "pass phrase"
    pf.write_text("correct horse battery staple\n")
    pf.chmod(mode)
    warning = EncryptionConfig(passphrase_file=pf).passphrase_file_warning()
    if expected is None:
        assert warning is None
    else:
        assert warning == f"passphrase file {pf} is {expected}; run chmod 600 '{pf}'"


def test_passphrase_file_warning_without_a_file(tmp_path: Path) -> None:
    assert EncryptionConfig(passphrase_env="X").passphrase_file_warning() is None
    # A missing file is passphrase()'s error to report.
    assert EncryptionConfig(passphrase_file=tmp_path / "nope").passphrase_file_warning() is None


# -- 3. a target path that is a file -------------------------------------------------------


async def test_prepare_on_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    for path, expected in (
        (afile, f"target 'local1': {afile} is a file, not a directory; fix the target's path"),
        (afile / "repo", f"target 'local1': {afile} is a file, not a directory (in the target's path "
                         f"{afile / 'repo'}); fix the target's path"),
        (afile / "a" / "repo", f"target 'local1': {afile} is a file, not a directory (in the target's path "
                               f"{afile / 'a' / 'repo'}); fix the target's path"),
    ):
        st = LocalStorage(LocalTargetConfig(name="local1", type="local", path=path))
        with pytest.raises(StorageError) as info:
            await st.prepare()
        assert str(info.value) == expected
    assert afile.read_text() == "not a directory"


async def test_put_below_a_file_inside_the_repository(tmp_path: Path) -> None:
    st = LocalStorage(LocalTargetConfig(name="local1", type="local", path=tmp_path / "repo"))
    await st.prepare()
    (tmp_path / "repo" / "data").write_text("stray")
    with pytest.raises(StorageError) as info:
        await st.put("data/ab/ab01", b"x")
    assert str(info.value) == (f"target 'local1': {tmp_path / 'repo' / 'data'} is a file, not a directory "
                               f"inside the repository; move it out of {tmp_path / 'repo'}")


@pytest.mark.parametrize("below", [False, True])
def test_cli_init_on_a_file(tmp_path: Path, setup_factory: Any, below: bool) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    setup = setup_factory([local_target(afile / "repo" if below else afile)], [])
    out = setup.cli("init")
    assert out.returncode == 1, out.stderr
    line = _one_line(out.stderr)
    assert line.startswith(f"backstop: target 'local1': {afile} is a file, not a directory"), line
    assert line.endswith("fix the target's path")
    assert "File exists" not in out.stderr and "Traceback" not in out.stderr


# -- 4. verify_tls: false ------------------------------------------------------------------


def _tls_setup(setup_factory: Any, server: SeaweedServer, verify_tls: bool | str) -> tuple[Any, str]:
    bucket = f"tls-{uuid.uuid4().hex[:12]}"
    target = {**s3_target_dict(server, bucket), "endpoint_url": server.https_endpoint_url, "verify_tls": verify_tls}
    setup = setup_factory([target], [])
    setup.passphrase_file.chmod(0o600)  # no passphrase warning in the way of counting lines
    return setup, bucket


def test_cli_verify_tls_false_warns_once(s3_server_factory: ServerFactory, setup_factory: Any) -> None:
    server = s3_server_factory(tls=True)
    setup, bucket = _tls_setup(setup_factory, server, False)
    out = setup.cli("init")
    assert out.returncode == 0, out.stderr
    assert "InsecureRequestWarning" not in out.stderr and "Unverified HTTPS" not in out.stderr, out.stderr
    about_tls = [line for line in out.stderr.splitlines() if "verification" in line]
    assert len(about_tls) == 1, out.stderr
    assert "target 'offsite': TLS certificate verification is off (verify_tls: false)" in about_tls[0]
    # The repository really went over HTTPS to the server.
    keys = [o["Key"] for o in server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "config" in keys


def test_cli_verify_tls_default_refuses_a_self_signed_certificate(
    s3_server_factory: ServerFactory, setup_factory: Any
) -> None:
    server = s3_server_factory(tls=True)
    setup, _ = _tls_setup(setup_factory, server, True)
    out = setup.cli("init")
    assert out.returncode == 1, out.stderr
    line = _one_line(out.stderr)
    assert line.startswith("backstop: target 'offsite': TLS handshake with s3 https://127.0.0.1:"), line
    assert "verify_tls" in line

    # Trusting the certificate as a CA bundle works, without any warning.
    assert server.tls is not None
    setup, _ = _tls_setup(setup_factory, server, str(server.tls.cert))
    out = setup.cli("init")
    assert out.returncode == 0, out.stderr
    assert "verification" not in out.stderr and "Unverified" not in out.stderr, out.stderr


async def test_verify_tls_false_logs_once_per_target(
    s3_server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = s3_server_factory(tls=True)
    bucket = new_bucket(server)
    names = [f"t{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"]
    stores = [
        S3Storage(s3_target(server, bucket, name=name, endpoint_url=server.https_endpoint_url, verify_tls=False))
        for name in (names[0], names[0], names[1])
    ]
    # Plain HTTP has no certificate to skip: verify_tls is moot there.
    plain = S3Storage(s3_target(server, bucket, name=f"t{uuid.uuid4().hex[:8]}", verify_tls=False))
    caplog.set_level(logging.WARNING, logger="backstop.storage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for st in [*stores, plain]:
            for _ in range(3):
                await st.put("x", b"1")
                assert await st.get("x") == b"1"
    records = [r for r in caplog.records if r.name == "backstop.storage"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in records] == [f"target '{n}'" for n in names]
    assert all("\n" not in r.getMessage() for r in records)
    assert [str(w.message) for w in caught if "Unverified HTTPS" in str(w.message)] == []
    for st in [*stores, plain]:
        await st.close()


# -- 5. leftovers of crashed writes ----------------------------------------------------------


async def test_local_cleanup_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    st = LocalStorage(LocalTargetConfig(name="local1", type="local", path=root))
    await st.prepare()
    for name in ("config", "data/ab/ab01", "a/b/c/d"):
        await st.put(name, b"object")
    now = time.time()
    old = {
        f"{TEMP_PREFIX}config.0123456789ab": b"p" * 10,
        f"data/ab/{TEMP_PREFIX}ab02.0123456789ab": b"p" * 20,
        f"a/b/c/{TEMP_PREFIX}e.0123456789ab": b"p" * 30,
    }
    young = f"data/ab/{TEMP_PREFIX}ab03.ba9876543210"
    for name, data in {**old, young: b"in flight"}.items():
        (root / name).write_bytes(data)
    for name in old:
        os.utime(root / name, (now - 7200, now - 7200))
    os.utime(root / "data" / "ab" / "ab01", (now - 7200, now - 7200))  # old objects are not debris
    before = await st.list("")

    lines = await st.cleanup_leftovers(now - 3600)

    assert len(lines) == 3
    for name, data in old.items():
        assert not (root / name).exists()
        assert any(f"removed leftover temp file {name} ({len(data)} bytes," in line for line in lines), lines
    assert all("\n" not in line for line in lines)
    assert (root / young).read_bytes() == b"in flight", "a younger temp file may belong to a running write"
    assert await st.list("") == before
    assert await st.cleanup_leftovers(now - 3600) == []
    # Once it is older than the cut-off, it goes too.
    assert len(await st.cleanup_leftovers(now + 60)) == 1
    assert not (root / young).exists()
    assert await st.list("") == before


async def test_local_cleanup_leftovers_on_a_missing_root(tmp_path: Path) -> None:
    st = LocalStorage(LocalTargetConfig(name="local1", type="local", path=tmp_path / "gone"))
    with pytest.raises(TargetUnreachable, match="target 'local1': directory .*gone is not accessible"):
        await st.cleanup_leftovers(time.time())


@pytest.mark.parametrize("prefix", ["", "backstop/repo1"])
async def test_s3_cleanup_leftovers(s3_servers: list[SeaweedServer], prefix: str) -> None:
    server = s3_servers[0]
    bucket = new_bucket(server)
    st = S3Storage(s3_target(server, bucket, prefix=prefix))
    await st.put("config", b"c")
    client = server.client()

    def start_upload(key: str) -> str:
        upload_id: str = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1024)
        return upload_id

    def uploads(key_prefix: str) -> list[str]:
        found = client.list_multipart_uploads(Bucket=bucket, Prefix=key_prefix).get("Uploads", [])
        return sorted(u["Key"] for u in found)

    key = st._key("data/ab/pack")
    start_upload(key)
    if prefix:
        start_upload("another-repo/data/pack")  # same bucket, another repository: never ours to clean

    # Started just now: younger than an hour-old cut-off, so a running backup may own it.
    assert await st.cleanup_leftovers(time.time() - 3600) == []
    assert uploads(st.prefix) == [key]

    lines = await st.cleanup_leftovers(time.time() + 3600)
    assert len(lines) == 1 and lines[0].startswith("aborted unfinished multipart upload of data/ab/pack (started ")
    assert uploads(st.prefix) == []
    if prefix:
        assert uploads("") == ["another-repo/data/pack"]
    assert [o.name for o in await st.list("")] == ["config"]
    assert await st.cleanup_leftovers(time.time() + 3600) == []
    await st.close()


async def test_s3_cleanup_leftovers_missing_bucket(s3_servers: list[SeaweedServer]) -> None:
    st = S3Storage(s3_target(s3_servers[0], f"missing-{uuid.uuid4().hex[:8]}"))
    with pytest.raises(StorageError, match="target 'offsite': bucket missing-.* does not exist"):
        await st.cleanup_leftovers(time.time())
    await st.close()


def test_cleanup_leftovers_is_part_of_the_interface() -> None:
    from core.storage.base import Storage

    assert "cleanup_leftovers" in Storage.__abstractmethods__
    assert asyncio.iscoroutinefunction(LocalStorage.cleanup_leftovers)
    assert asyncio.iscoroutinefunction(S3Storage.cleanup_leftovers)
