"""Physical snapshots: pg_basebackup's tar stream stored as fixed blocks, checked against the server's manifest.

The parsing is tested on streams built here (every tar dialect, damage);
the rest on a real cluster with ``wal_level=replica`` and archiving on,
through the engine and the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import crc32c
import psycopg
import pytest
from core.config import LocalTargetConfig, RepositoryConfig
from core.engine import Engine
from core.errors import IntegrityError
from core.ops.backup import backup_physical
from core.ops.physical_restore import server_crcs
from core.physical.label import ManifestCheck, control_system_identifier, parse_label
from core.physical.stream import BLOCK_SIZE, StoredBackup, store_stream
from core.physical.tar import DIR, FILE, SYMLINK, StreamCutShort, TarStream
from core.postgres.basebackup import BackupRefused
from core.postgres.cluster import LocalCluster
from core.records import BackupRecord
from core.repository.crc import crc32c_combine, manifest_hex
from core.repository.crypto import open_object
from core.repository.dedup import backup_index
from core.repository.keys import DataKey
from core.repository.manifest import FileEntry, Manifest, PhysicalInfo
from core.repository.reader import StreamReader
from core.repository.repo import Repository
from core.repository.wal import push_wal
from core.repository.writer import StreamWriter
from core.sandbox.warranty import append_claims, generate
from core.storage.local import LocalStorage
from core.wal.spool import Spool

from tests.fixtures.backstop import Setup, local_target, write_setup
from tests.fixtures.server_account import give_to, let_run_python, wal_push_command

# -- the tar stream -------------------------------------------------------------------------------------------


def _tar(members: list[tuple[str, bytes | None, str | None]], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    """A tar archive of (name, content or None for a directory, symlink target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o600
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


class _Trickle(io.RawIOBase):
    """A pipe that hands out at most ``step`` bytes per read, as a real one may."""

    def __init__(self, data: bytes, step: int = 7000) -> None:
        self._data, self._pos, self._step = memoryview(data), 0, step

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def _read_all(data: bytes) -> list[tuple[str, str, int, int, str | None, bytes]]:
    out = []
    for m, reader in TarStream(_Trickle(data)).members():
        buf = bytearray(m.size + 10)
        view, got = memoryview(buf), 0
        while k := reader.readinto(view[got:]):
            got += k
        out.append((m.name, m.kind, m.size, m.mode, m.link, bytes(buf[:got])))
    return out


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_members_come_out_whole_in_order_in_every_dialect(fmt: int) -> None:
    long_name = "base/16384/" + "x" * 150  # beyond the 100-byte name field: a GNU or pax record, or a ustar prefix
    big = bytes(range(256)) * 1000 + b"tail"
    members = [("backup_label", b"START WAL LOCATION: 0/2000028\n", None), ("base", None, None),
               ("base/1", None, None), ("base/1/1259", big, None), ("empty", b"", None),
               ("pg_wal_link", None, "/elsewhere/pg_wal"), (long_name if fmt != tarfile.USTAR_FORMAT else "a/" * 60
                                                              + "f", b"z" * 513, None)]
    got = _read_all(_tar(members, fmt))
    assert [g[0] for g in got] == [m[0].rstrip("/") for m in members]
    assert got[3] == ("base/1/1259", FILE, len(big), 0o600, None, big)
    assert got[1][1] == DIR and got[1][3] == 0o700 and got[4][2] == 0
    assert got[5][1:] == (SYMLINK, 0, 0o600, "/elsewhere/pg_wal", b"")
    assert got[6][5] == b"z" * 513


def test_a_truncated_stream_is_a_cut_short_error_and_a_damaged_header_an_integrity_error() -> None:
    data = _tar([("a", b"1" * 5000, None), ("b", b"2" * 10, None)])
    with pytest.raises(StreamCutShort):
        _read_all(data[:1500])  # inside the first file
    with pytest.raises(StreamCutShort):
        _read_all(data[:300])  # inside a header
    bad = bytearray(data)
    bad[0] ^= 0x01  # the name changes, the checksum does not
    with pytest.raises(IntegrityError, match="checksum"):
        _read_all(bytes(bad))
    ended = TarStream(_Trickle(data[:512 + 5120]))
    assert [m.name for m, _ in ended.members()] == ["a"] and not ended.ended


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "base/./x"])
def test_a_member_outside_the_data_directory_is_refused(name: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"1"))
    data = bytearray(buf.getvalue())
    data[0:100] = name.encode().ljust(100, b"\0")
    data[148:156] = b" " * 8
    data[148:155] = f"{sum(data[:512]):06o}\0".encode()
    with pytest.raises(IntegrityError, match="outside the data directory"):
        _read_all(bytes(data))


# -- what the backup says about itself ----------------------------------------------------------------------------


def _crc(data: bytes) -> str:
    """CRC-32C as backup_manifest writes it (the CRC's bytes in memory order)."""
    return crc32c.crc32c(data).to_bytes(4, "little").hex()


def _server_manifest(files: dict[str, bytes], ranges: list[tuple[int, str, str]], version: int = 1,
                     algo: str = "CRC32C") -> bytes:
    """A backup_manifest laid out as PostgreSQL's backup_manifest.c writes it, with its own checksum."""
    head = f'{{ "PostgreSQL-Backup-Manifest-Version": {version},\n'
    if version >= 2:
        head += '"System-Identifier": 7312345678901234567,\n'
    body = head + '"Files": ['
    for i, (path, data) in enumerate(files.items()):
        body += ("\n" if i == 0 else ",\n") + (
            f'{{ "Path": {json.dumps(path)}, "Size": {len(data)}, "Last-Modified": "2026-12-02 18:00:00 GMT", '
            f'"Checksum-Algorithm": "{algo}", '
            f'"Checksum": "{hashlib.sha256(data).hexdigest() if algo == "SHA256" else _crc(data)}" }}')
    body += "\n],\n\"WAL-Ranges\": [\n" + ",\n".join(
        f'{{ "Timeline": {t}, "Start-LSN": "{a}", "End-LSN": "{b}" }}' for t, a, b in ranges) + "\n],\n"
    return (body + f'"Manifest-Checksum": "{hashlib.sha256(body.encode()).hexdigest()}"}}\n').encode()


def _entry(name: str, data: bytes) -> FileEntry:
    return FileEntry(name, "pg-file", len(data), hashlib.sha256(data).hexdigest(), [])


def _check(manifest: bytes, piece: int = 97) -> ManifestCheck:
    check = ManifestCheck()
    for i in range(0, len(manifest), piece):  # lines split across reads, as they arrive from a pipe
        check.feed(memoryview(manifest[i:i + piece]))
    check.finish()
    return check


@pytest.mark.parametrize("algo", ["CRC32C", "SHA256"])
def test_the_server_manifest_is_read_line_by_line_and_compared_with_what_was_stored(algo: str) -> None:
    files = {"backup_label": b"label", "base/1/1259": b"p" * 8192, "global/pg_control": b"c" * 8192}
    raw = _server_manifest(files, [(1, "0/2000028", "0/2000100")], version=2, algo=algo)
    check = _check(raw)
    assert check.stop_lsn == "0/2000100" and check.version == 2 and check.system_identifier == 7312345678901234567
    entries = [_entry(n, d) for n, d in files.items()] + [_entry("backup_manifest", raw)]
    crcs = {n: _crc(d) for n, d in files.items()}
    check.compare(entries, crcs)
    changed = [*entries[:1], _entry("base/1/1259", b"q" * 8192), *entries[2:]]
    with pytest.raises(IntegrityError, match=f"base/1/1259 does not match the {algo[:3]}"):
        check.compare(changed, {**crcs, "base/1/1259": _crc(b"q" * 8192)})
    with pytest.raises(IntegrityError, match="global/pg_control is in the server's backup_manifest but not"):
        check.compare(entries[:2], crcs)
    with pytest.raises(IntegrityError, match="extra is in the stream but not"):
        check.compare([*entries, _entry("extra", b"")], crcs)


def test_a_damaged_server_manifest_fails_its_own_checksum() -> None:
    raw = _server_manifest({"a": b"1"}, [(1, "0/2000028", "0/2000100")])
    with pytest.raises(IntegrityError, match="checksum"):
        _check(raw.replace(b'"Size": 1', b'"Size": 2'))


def test_backup_label_and_pg_control() -> None:
    label = parse_label(b"START WAL LOCATION: 0/0A000028 (file 00000002000000000000000A)\n"
                        b"CHECKPOINT LOCATION: 0/A000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n"
                        b"START TIME: 2026-12-02 18:00:00 UTC\nLABEL: backstop\nSTART TIMELINE: 2\n")
    assert (label.start_lsn, label.start_wal, label.timeline) == ("0/A000028", "00000002000000000000000A", 2)
    with pytest.raises(IntegrityError):
        parse_label(b"nothing here")
    sysid = 7312345678901234567
    assert control_system_identifier(sysid.to_bytes(8, "little") + (1300).to_bytes(4, "little")) == sysid
    assert control_system_identifier(sysid.to_bytes(8, "big") + (1300).to_bytes(4, "big")) == sysid
    assert control_system_identifier(b"short") is None


# -- the stream into a repository (no PostgreSQL) --------------------------------------------------------------


def _pg_like_tar(relation: bytes, sysid: int = 7312345678901234567) -> bytes:
    """A stream shaped like pg_basebackup's: backup_label first, pg_control last, then backup_manifest."""
    label = (b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n"
             b"BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-12-02 18:00:00 UTC\n"
             b"LABEL: backstop\nSTART TIMELINE: 1\n")
    control = sysid.to_bytes(8, "little") + (1300).to_bytes(4, "little") + bytes(8192 - 12)
    files = {"backup_label": label, "PG_VERSION": b"15\n", "base/1/16384": relation, "global/pg_control": control}
    manifest = _server_manifest(files, [(1, "0/2000028", "0/2000100")])
    return _tar([("backup_label", label, None), ("base", None, None), ("base/1", None, None),
                 ("PG_VERSION", b"15\n", None), ("base/1/16384", relation, None), ("global", None, None),
                 ("global/pg_control", control, None), ("backup_manifest", manifest, None)])


async def _store(repo: Any, data: bytes) -> tuple[StoredBackup, StreamWriter]:
    dedup = await backup_index(repo)
    pool = ThreadPoolExecutor(2)
    try:
        writer = StreamWriter(repo, dedup.index, asyncio.get_running_loop(), pool, 2)
        stored = await asyncio.to_thread(store_stream, writer, _Trickle(data, 50_000))
        stored.manifest.compare(stored.files, stored.crc32c)
        await asyncio.to_thread(writer.finish)
        name, sealed = writer.new_index.seal(repo.key)
        await repo.put_all(name, sealed)
    finally:
        pool.shutdown()
    return stored, writer


async def test_the_stream_is_stored_in_fixed_blocks_and_an_unchanged_block_is_never_stored_again(
        tmp_path: Path) -> None:
    st = LocalStorage(LocalTargetConfig(name="l", type="local", path=tmp_path / "r"))
    await st.prepare()
    repo, _ = await Repository.init([st], b"pass", RepositoryConfig())
    # Five blocks of incompressible-enough bytes (a new 8 KiB pattern per page).
    pages = 5 * BLOCK_SIZE // 8192
    relation = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() * 256 for i in range(pages))
    stored, writer = await _store(repo, _pg_like_tar(relation))
    assert (stored.label.start_lsn, stored.manifest.stop_lsn) == ("0/2000028", "0/2000100")
    assert stored.control_system_identifier == 7312345678901234567
    rel = next(f for f in stored.files if f.name == "base/1/16384")
    assert len(rel.chunks) == 5 and rel.size == len(relation) and rel.mode == 0o600
    assert [f.format for f in stored.files[:3]] == ["pg-file", "pg-dir", "pg-dir"]
    reader = StreamReader(repo, await repo.load_index(common=False), ThreadPoolExecutor(1))
    assert b"".join([c async for c in reader.stream(rel)]) == relation
    # One page changed in the second block, one block appended: two new relation blocks, and the manifest.
    changed = relation[:BLOCK_SIZE + 8192] + b"\x01" * 8192 + relation[BLOCK_SIZE + 16384:] + b"\x02" * BLOCK_SIZE
    again, writer2 = await _store(repo, _pg_like_tar(changed))
    rel2 = next(f for f in again.files if f.name == "base/1/16384")
    assert [a == b for a, b in zip(rel.chunks, rel2.chunks, strict=False)] == [True, False, True, True, True]
    assert writer2.stats.new_chunks == 3 and writer.stats.new_chunks == 9
    with pytest.raises(IntegrityError, match="base/1/16384 does not match"):
        bad = _pg_like_tar(relation)
        pos = bad.index(relation)
        again, _ = await _store(repo, bad[:pos] + b"\xff" + bad[pos + 1:])


def test_crcs_of_pieces_join_into_the_crc_of_the_whole() -> None:
    rng = random.Random(7)
    for _ in range(200):
        a, b = rng.randbytes(rng.randint(0, 5000)), rng.randbytes(rng.randint(0, 5000))
        assert crc32c_combine(crc32c.crc32c(a), crc32c.crc32c(b), len(b)) == crc32c.crc32c(a + b)
    whole = rng.randbytes(3 * BLOCK_SIZE + 100)
    pieces = [whole[i:i + BLOCK_SIZE] for i in range(0, len(whole), BLOCK_SIZE)]
    crc = 0
    for piece in pieces:
        crc = crc32c_combine(crc, crc32c.crc32c(piece), len(piece))
    assert manifest_hex(crc) == crc32c.crc32c(whole).to_bytes(4, "little").hex()


async def test_a_written_file_is_checked_against_the_servers_crc_or_else_its_sha256(tmp_path: Path) -> None:
    st = LocalStorage(LocalTargetConfig(name="l", type="local", path=tmp_path / "r"))
    await st.prepare()
    repo, _ = await Repository.init([st], b"pass", RepositoryConfig())
    pages = 3 * BLOCK_SIZE // 8192 + 5
    relation = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() * 256 for i in range(pages))
    stored, _ = await _store(repo, _pg_like_tar(relation))
    rel = next(f for f in stored.files if f.name == "base/1/16384")
    server_crc = stored.crc32c["base/1/16384"]
    reader = StreamReader(repo, await repo.load_index(common=False), ThreadPoolExecutor(2))

    async def write(crc: str | None, entry: FileEntry = rel) -> bytes:
        out = tmp_path / "out"
        fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            assert sum([n async for n in reader.write_into(entry, fd, crc)]) == len(relation)
        finally:
            os.close(fd)
        return out.read_bytes()

    assert await write(server_crc) == relation
    assert await write(server_crc.upper()) == relation
    assert await write(None) == relation  # no CRC from the server: the snapshot's SHA-256
    wrong = manifest_hex(int.from_bytes(bytes.fromhex(server_crc), "little") ^ 1)
    with pytest.raises(IntegrityError, match="does not match the CRC-32C in the backup's backup_manifest"):
        await write(wrong)
    with pytest.raises(IntegrityError, match="recorded SHA-256"):
        await write(None, replace(rel, sha256="00" * 32))
    with pytest.raises(IntegrityError, match="bytes restored, the snapshot records"):
        await write(server_crc, replace(rel, size=rel.size + 1))


async def test_large_page_aligned_files_are_written_around_the_page_cache_and_unaligned_pieces_fall_back(
        tmp_path: Path) -> None:
    """A restore writes a large relation file with O_DIRECT from an aligned buffer, byte for byte the same."""
    import fcntl

    from core.repository.reader import _Target

    st = LocalStorage(LocalTargetConfig(name="l", type="local", path=tmp_path / "r"))
    await st.prepare()
    repo, _ = await Repository.init([st], b"pass", RepositoryConfig())
    relation = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() * 256 for i in range(3 * BLOCK_SIZE // 8192 + 5))
    stored, _ = await _store(repo, _pg_like_tar(relation))
    rel = next(f for f in stored.files if f.name == "base/1/16384")
    reader = StreamReader(repo, await repo.load_index(common=False), ThreadPoolExecutor(2))
    out = tmp_path / "direct"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        given = fcntl.fcntl(fd, fcntl.F_GETFL)
        # Where the file system has no direct I/O (tmpfs) the flag is refused: the page cache, then.
        target = _Target(fd, rel.size)
        supported = target.direct
        assert bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT) == supported
        target.done()
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == given
        # Not for a small file, nor one off the page grid.
        assert not _Target(fd, 8192).direct and not _Target(fd, rel.size - 100).direct
        assert sum([n async for n in reader.write_into(rel, fd, stored.crc32c[rel.name])]) == len(relation)
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == given  # the caller gets its fd back as it gave it
        # A piece off the page grid turns direct I/O off for the rest of the file, and is written all the same.
        target = _Target(fd, rel.size)
        assert target.direct == supported
        target.pwrite(b"tail", len(relation))
        assert not target.direct and not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
        target.pwrite(relation[:BLOCK_SIZE], 0)
        target.done()
    finally:
        os.close(fd)
    assert out.read_bytes() == relation + b"tail"


def test_a_file_system_refusing_direct_io_gets_the_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two refusals this machine's ext4 and tmpfs never make, injected: the flag, and a write with it."""
    import errno
    import fcntl

    import core.repository.reader as reader_module
    from core.repository.reader import _Target

    data = os.urandom(1024 * 1024)
    real_fcntl, real_pwrite = fcntl.fcntl, os.pwrite

    def written(name: str, write: Callable[[int], None]) -> bytes:
        """What ``write(fd)`` leaves in a new file (the faults injected into it undone first)."""
        out = tmp_path / name
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write(fd)
        finally:
            monkeypatch.undo()
            os.close(fd)
        return out.read_bytes()

    def no_direct_flag(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    def refused_flag(fd: int) -> None:
        monkeypatch.setattr(reader_module.fcntl, "fcntl", no_direct_flag)
        target = _Target(fd, len(data))
        assert not target.direct
        target.pwrite(data, 0)
        target.done()

    assert written("refused-flag", refused_flag) == data

    refused: list[int] = []

    def no_direct_write(fd: int, buf: memoryview | bytes, offset: int) -> int:
        if real_fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, buf, offset)

    def refused_write(fd: int) -> None:
        target = _Target(fd, len(data))
        if target.direct:  # a file system that takes the flag, then refuses the write: the page cache
            monkeypatch.setattr(reader_module.os, "pwrite", no_direct_write)
            target.pwrite(data[:BLOCK_SIZE], 0)
            target.pwrite(data[BLOCK_SIZE:], BLOCK_SIZE)
            assert refused == [0] and not target.direct
        else:
            target.pwrite(data, 0)
        target.done()

    assert written("refused-write", refused_write) == data


# -- the manifest ----------------------------------------------------------------------------------------------


def test_physical_fields_round_trip_and_logical_manifests_keep_their_shape() -> None:
    key = DataKey(1, b"e" * 32, b"i" * 32)
    info = PhysicalInfo("0/2000028", "0/2000100", 1, "7312345678901234567", "150010", 16 << 20,
                        "000000010000000000000002")
    files = [FileEntry("base", "pg-dir", 0, hashlib.sha256(b"").hexdigest(), [], mode=0o700),
             FileEntry("pg_tblspc/x", "pg-symlink", 0, hashlib.sha256(b"").hexdigest(), [], mode=0o777, link="/t"),
             FileEntry("PG_VERSION", "pg-file", 3, hashlib.sha256(b"15\n").hexdigest(), ["ab" * 32], mode=0o600)]
    m = Manifest("w", "physical", "t0", "t1", files, 3, 3, 1, ["local1"], format=2, physical=info)
    _, _, sealed = m.seal(key)
    back = Manifest.open(sealed, {1: key})
    assert back == m and back.is_physical and not back.per_table
    logical = Manifest("w", "logical", "t0", "t1", [FileEntry("schema.pgdump", "pg_dump-custom", 0, "00", [])], 0, 0,
                       0, ["local1"], format=2)
    doc = json.loads(open_object(logical.seal(key)[2], b"snapshot", {1: key}))
    assert "physical" not in doc and set(doc["files"][0]) == {"name", "format", "size", "sha256", "chunks"}
    assert Manifest.open(logical.seal(key)[2], {1: key}).per_table


# -- a real cluster with archiving on -------------------------------------------------------------------------

# Throwaway data, but WAL that a base backup can be taken from: replica level, archived by `cp` (the backup
# itself is tested here; Backstop's own wal-push has tests/test_wal.py).
_ARCHIVING = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "on", "wal_level": "replica",
              "archive_mode": "on", "max_wal_senders": "10", "max_connections": "50"}
_CLAIMS = 20_000


@dataclass
class Archiving:
    """The module's cluster: its archive directory and a warranty database on it."""

    cluster: LocalCluster
    archive: Path
    db: str

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.db)

    def dsn_as(self, user: str, db: str | None = None) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.cluster.port}/{db or self.db}"

    def sql(self, statement: str, db: str = "postgres") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.cluster.dsn(db), autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def archiving() -> Iterator[Archiving]:
    """A cluster that archives its WAL into a directory, with a generated warranty database."""
    # Not under pytest's basetemp (see tests/fixtures/pg.py: the server's account must traverse the parents).
    root = Path(tempfile.mkdtemp(prefix="backstop-test-phys-"))
    archive = root / "archive"
    archive.mkdir()
    archive.chmod(0o777)  # written by the server's account
    settings = {**_ARCHIVING, "archive_command": f"cp %p {archive}/%f"}
    cluster = LocalCluster(root / "data", settings=settings)
    try:
        cluster.init(no_sync=True)
        # Replication only for the users the tests name: another user meets "no pg_hba.conf entry".
        hba = cluster.data_dir / "pg_hba.conf"
        text = hba.read_text()
        hba.write_text("\n".join(line.replace("replication     all", "replication     postgres,bk_norepl")
                                 for line in text.splitlines()) + "\n")
        cluster.start()
        cluster.create_database("warranty")
        generate(cluster.dsn("warranty"), claims=_CLAIMS, seed=3)
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE ROLE bk_norepl LOGIN")  # no REPLICATION
            conn.execute("CREATE ROLE bk_nohba LOGIN REPLICATION")  # no pg_hba.conf line for replication
        yield Archiving(cluster, archive, "warranty")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _setup(setup_factory: Any, tmp_path: Path, archiving: Archiving, **dsns: str) -> Setup:
    databases = [{"name": "w", "dsn": archiving.dsn}] + [{"name": n, "dsn": d} for n, d in dsns.items()]
    setup: Setup = setup_factory([local_target(tmp_path / "repo")], databases)
    setup.cli("init", check=True)
    return setup


async def _physical(setup: Setup, db: str = "w") -> tuple[BackupRecord, Manifest]:
    """A physical backup through the engine, archiving by `cp` accepted (what the CLI refuses)."""
    async with Engine(setup.config) as engine:
        rec = await backup_physical(engine.ctx, db, require_backstop_archiving=False)
        manifest = await (await engine.open_repository()).read_manifest(rec.id)
    return rec, manifest


async def _read_file(setup: Setup, manifest: Manifest, name: str) -> bytes:
    async with Engine(setup.config) as engine:
        repo = await engine.open_repository()
        reader = StreamReader(repo, await repo.load_index(common=False), engine.ctx.pool)
        return b"".join([piece async for piece in reader.stream(manifest.file(name))])


async def test_the_snapshot_holds_every_file_the_server_listed_with_its_size_and_checksum(
        archiving: Archiving, setup_factory: Any, tmp_path: Path) -> None:
    setup = _setup(setup_factory, tmp_path, archiving)
    rec, manifest = await _physical(setup)
    assert manifest.kind == rec.kind == "physical" and manifest.format == 2 and manifest.physical is not None
    server = json.loads(await _read_file(setup, manifest, "backup_manifest"))
    listed = {f["Path"]: f for f in server["Files"]}
    files = {f.name: f for f in manifest.files if f.format == "pg-file"}
    assert set(files) - {"backup_manifest"} == set(listed)
    for path, f in listed.items():
        assert files[path].size == f["Size"] and f["Checksum-Algorithm"] == "CRC32C", path
        assert len(files[path].chunks) == -(-f["Size"] // BLOCK_SIZE)  # fixed 512 KiB blocks
    # What the snapshot gives back is what the server read (its CRC-32C) and what the snapshot says (SHA-256).
    for path in sorted(listed, key=lambda p: -listed[p]["Size"])[:12]:
        data = await _read_file(setup, manifest, path)
        assert crc32c.crc32c(data).to_bytes(4, "little").hex() == listed[path]["Checksum"], path
        assert hashlib.sha256(data).hexdigest() == files[path].sha256, path
    assert manifest.files[0].name == "backup_label" and manifest.files[-1].name == "backup_manifest"
    # A restore checks every file against the server's CRC-32C (core/ops/physical_restore.py), none by SHA-256.
    async with Engine(setup.config) as engine:
        repo = await engine.open_repository()
        reader = StreamReader(repo, await repo.load_index(common=False), engine.ctx.pool)
        crcs = await server_crcs(reader, manifest, rec.id[:8])
    assert crcs == {path: f["Checksum"] for path, f in listed.items()}
    assert {"base", "global", "pg_wal"} <= {f.name for f in manifest.files if f.format == "pg-dir"}
    assert files["PG_VERSION"].mode == 0o600 and next(f for f in manifest.files if f.name == "base").mode == 0o700
    assert await _read_file(setup, manifest, "PG_VERSION") == (archiving.cluster.data_dir / "PG_VERSION").read_bytes()
    info = manifest.physical
    ((sysid, version, seg),) = archiving.sql(
        "SELECT system_identifier::text, current_setting('server_version_num'),"
        " (SELECT setting::int FROM pg_settings WHERE name = 'wal_segment_size') FROM pg_control_system()")
    assert (info.system_identifier, info.pg_version, info.wal_segment_size, info.timeline) == (sysid, version, seg, 1)
    ((start_wal, stop_wal),) = archiving.sql(
        f"SELECT pg_walfile_name('{info.start_lsn}'), pg_walfile_name('{info.stop_lsn}')")
    assert info.start_wal == start_wal and server["WAL-Ranges"][0]["End-LSN"] == info.stop_lsn
    assert (archiving.archive / stop_wal).exists()  # -X none: the server ended the backup once it was archived
    assert (rec.start_lsn, rec.stop_lsn, rec.system_identifier) == (info.start_lsn, info.stop_lsn, sysid)


async def test_a_backup_under_pgbench_load_completes_and_matches_the_server_manifest(
        archiving: Archiving, setup_factory: Any, tmp_path: Path) -> None:
    archiving.cluster.create_database("bench")
    dsn = archiving.cluster.dsn("bench")
    pgbench = str(archiving.cluster.bin_dir / "pgbench")
    subprocess.run([pgbench, "-i", "-s", "2", "-q", dsn], check=True, capture_output=True)
    setup = _setup(setup_factory, tmp_path, archiving)
    load = subprocess.Popen([pgbench, "-c", "2", "-T", "60", "-n", dsn], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(1)
        before = archiving.sql("SELECT count(*) FROM pgbench_history", "bench")[0][0]
        rec, manifest = await _physical(setup)  # the backup itself compared every file with the server's manifest
        assert load.poll() is None, "the write load ended before the backup did"
        assert archiving.sql("SELECT count(*) FROM pgbench_history", "bench")[0][0] > before
    finally:
        load.terminate()
        load.wait()
        archiving.cluster.drop_database("bench")
    assert manifest.physical is not None and rec.size_bytes == sum(f.size for f in manifest.files)


async def test_a_second_backup_after_appending_five_percent_stores_under_a_fifth(
        archiving: Archiving, setup_factory: Any, tmp_path: Path) -> None:
    largest = archiving.sql("SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                            " WHERE n.nspname = 'warranty' AND c.relkind = 'r'"
                            " ORDER BY pg_relation_size(c.oid) DESC LIMIT 1", "warranty")[0][0]
    assert largest == "warranty.claims"
    archiving.sql("VACUUM (FREEZE, ANALYZE)", "warranty")  # hint bits set: reading the rows changes no page
    setup = _setup(setup_factory, tmp_path, archiving)
    first, _ = await _physical(setup)
    added = append_claims(archiving.dsn, 0.05, seed=4)
    assert added == round(_CLAIMS * 0.05)
    second, _ = await _physical(setup)
    assert second.size_bytes > first.size_bytes
    assert second.stored_bytes < 0.2 * first.stored_bytes, (second.stored_bytes, first.stored_bytes)


def _one_line_refusal(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("backstop: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_the_cli_refuses_archiving_that_does_not_go_to_backstop(archiving: Archiving, setup_factory: Any,
                                                                tmp_path: Path) -> None:
    setup = _setup(setup_factory, tmp_path, archiving)
    proc = setup.cli("backup", "--db", "w", "--type", "physical")
    _one_line_refusal(proc, "archive_command", f"cp %p {archiving.archive}/%f", "wal-push %p", "pg_reload_conf")
    assert json.loads(setup.cli("snapshots", "--json", check=True).stdout) == []


def test_the_cli_refuses_a_user_without_replication_and_a_server_without_archiving(
        archiving: Archiving, pg_cluster: LocalCluster, setup_factory: Any, tmp_path: Path) -> None:
    setup = _setup(setup_factory, tmp_path, archiving, norepl=archiving.dsn_as("bk_norepl"),
                   plain=pg_cluster.dsn("postgres"))
    _one_line_refusal(setup.cli("backup", "--db", "norepl", "--type", "physical"),
                      "'bk_norepl' lacks the REPLICATION attribute", "ALTER ROLE bk_norepl REPLICATION")
    # The session's cluster keeps the defaults: wal_level replica, archive_mode off.
    _one_line_refusal(setup.cli("backup", "--db", "plain", "--type", "physical"),
                      "archive_mode = off", "set archive_mode = on", "wal-push %p", "restart")


def test_the_cli_refuses_wal_level_minimal(setup_factory: Any, tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="backstop-test-minimal-"))
    cluster = LocalCluster(root / "data", settings={"fsync": "off", "wal_level": "minimal", "max_wal_senders": "0",
                                                    "archive_mode": "off"})
    try:
        cluster.init(no_sync=True)
        cluster.start()
        setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "m", "dsn": cluster.dsn()}])
        setup.cli("init", check=True)
        _one_line_refusal(setup.cli("backup", "--db", "m", "--type", "physical"),
                          "wal_level is 'minimal'", "set wal_level = replica")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_pg_hba_and_tablespaces_are_refused_with_what_to_change(archiving: Archiving, setup_factory: Any,
                                                                      tmp_path: Path) -> None:
    setup = _setup(setup_factory, tmp_path, archiving, nohba=archiving.dsn_as("bk_nohba"))
    with pytest.raises(BackupRefused) as refused:
        await _physical(setup, "nohba")
    assert refused.value.exit_code == 2 and "\n" not in str(refused.value)
    assert "add the line `host replication bk_nohba 127.0.0.1/32 scram-sha-256` to pg_hba.conf" in str(refused.value)
    space = archiving.cluster.data_dir.parent / "space"
    space.mkdir()
    owner = archiving.cluster.owner
    if owner is not None:
        os.chown(space, *owner)
    archiving.sql(f"CREATE TABLESPACE extra LOCATION '{space}'")
    try:
        with pytest.raises(BackupRefused, match=r"tablespaces outside its data directory \(extra\); .* not "
                                                r"supported yet") as refused:
            await _physical(setup)
        assert refused.value.exit_code == 2
    finally:
        archiving.sql("DROP TABLESPACE extra")


async def test_snapshots_json_shows_a_physical_snapshot_waiting_then_restorable_for_every_entry_of_the_cluster(
        archiving: Archiving, setup_factory: Any, tmp_path: Path) -> None:
    archiving.cluster.create_database("sibling")
    try:
        setup = _setup(setup_factory, tmp_path, archiving, sibling=archiving.cluster.dsn("sibling"))
        logical = setup.cli("backup", "--db", "sibling", check=True).stdout.strip()
        rec, manifest = await _physical(setup)
        assert manifest.physical is not None
        for db in ("w", "sibling"):  # the sibling entry learnt that it is on the same cluster
            rows = {r["id"]: r for r in json.loads(setup.cli("snapshots", "--db", db, "--json", check=True).stdout)}
            assert rows[rec.id]["status"] == "waiting" and rows[rec.id]["db"] == "w"
        assert {r["kind"] for r in json.loads(setup.cli("snapshots", "--db", "w", "--json").stdout)} == {"physical"}
        # What `wal-push` does for each segment the server archives: here from the `cp` archive.
        async with Engine(setup.config) as engine:
            repo = await engine.open_repository()
            first, last = manifest.physical.start_wal, archiving.sql(
                f"SELECT pg_walfile_name('{manifest.physical.stop_lsn}')")[0][0]
            for f in sorted(archiving.archive.iterdir()):
                if len(f.name) == 24 and first <= f.name <= last:
                    await push_wal(repo, f.name, f.read_bytes())
        rows = {r["id"]: r for r in json.loads(setup.cli("snapshots", "--db", "sibling", "--json", check=True).stdout)}
        row, info = rows[rec.id], manifest.physical
        assert row["kind"] == "physical" and row["status"] == "restorable"
        assert (row["start_lsn"], row["stop_lsn"], row["timeline"], row["system_identifier"], row["pg_version"]) == (
            info.start_lsn, info.stop_lsn, info.timeline, info.system_identifier, info.pg_version)
        assert rows[logical]["kind"] == "logical" and rows[logical]["status"] == "restorable"
        assert rows[logical]["start_lsn"] is None
        table = setup.cli("snapshots", check=True).stdout
        assert "restorable" in table and f"{info.start_lsn}-{info.stop_lsn} tli 1" in table
        # The catalog is only an index: a rebuilt one shows the same.
        before = json.loads(setup.cli("snapshots", "--json", check=True).stdout)
        for f in setup.dir.glob("catalog.db*"):
            f.unlink()
        setup.cli("catalog", "rebuild", check=True)
        after = json.loads(setup.cli("snapshots", "--json", check=True).stdout)
        strip = lambda rows: sorted(({k: v for k, v in r.items() if k != "job_id"} for r in rows),  # noqa: E731
                                    key=lambda r: r["id"])
        assert strip(after) == strip(before)
        # Commands for logical snapshots refuse a physical one with one line.
        out = setup.cli("export", "--db", "w", "--snapshot", rec.id[:8], "--format", "custom", "-o",
                        str(tmp_path / "x.dump"))
        assert out.returncode == 2 and "export is for logical snapshots" in out.stderr
        out = setup.cli("restore", "--db", "w", "--snapshot", rec.id[:8], "--into", "nowhere")
        assert out.returncode == 2 and "--type physical" in out.stderr and len(out.stderr.splitlines()) == 1
        # check --read-data, verify and forget handle it like any snapshot.
        assert setup.cli("check", "--read-data").returncode == 0
        async with Engine(setup.config) as engine:
            assert all(r.ok for r in await engine.verify_snapshot(rec.id))
    finally:
        archiving.cluster.drop_database("sibling")


def test_end_to_end_with_backstop_archiving_the_cli_backup_is_restorable_at_once() -> None:
    """archive_command is the real `backstop wal-push` (run by the server's account): the preflight accepts it,
    and since -X none makes the server wait for its WAL to be archived, the snapshot is restorable when listed."""
    base = Path(tempfile.mkdtemp(prefix="backstop-test-phys-e2e-"))
    wal_setup = write_setup(base / "cfg", [local_target(base / "repo")], [])
    wal_setup.cli("init", check=True)
    cluster: LocalCluster | None = None
    spool = Spool(base / "cfg" / "wal-spool")
    try:
        owner = LocalCluster(base / "probe").owner
        if owner is not None:  # as root: the server's account runs wal-push on this config and repository
            give_to(*owner, base / "cfg", base / "repo")
            let_run_python(owner[0])
        command = wal_push_command(wal_setup.path)
        cluster = LocalCluster(base / "data", settings={**_ARCHIVING, "archive_command": command})
        cluster.init(no_sync=True)
        cluster.start()
        ops = write_setup(base / "ops", [local_target(base / "repo")], [{"name": "pg", "dsn": cluster.dsn()}],
                          wal={"spool_dir": str(base / "ops" / "spool")})
        done = ops.cli("backup", "--db", "pg", "--type", "physical")
        assert done.returncode == 0, done.stderr
        assert "physical (WAL " in done.stderr and ": restorable)" in done.stderr
        (row,) = json.loads(ops.cli("snapshots", "--json", check=True).stdout)
        assert row["id"] == done.stdout.strip() and (row["kind"], row["status"]) == ("physical", "restorable")
    finally:
        if cluster is not None:
            cluster.stop()
        for lock in (spool.pusher_lock, spool.fetcher_lock):  # the resident pusher wal-push started
            pid = spool.holder(lock)
            if pid and pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        shutil.rmtree(base, ignore_errors=True)
