"""Continuous WAL archiving: names and headers, the sealed objects, wal-push / wal-fetch / wal status.

The first part needs neither PostgreSQL nor S3 (segments built with a real
long page header; local targets). The second runs a real cluster with
``archive_mode=on`` whose ``archive_command`` is the real CLI
(``<venv>/bin/backstop --config ... wal-push %p``), run by PostgreSQL as the
server's unprivileged OS user, onto a local and an S3 target.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import psycopg
import pytest
from core.config import LocalTargetConfig, RepositoryConfig
from core.errors import StorageError
from core.ops.wal import percentiles, push_file
from core.postgres.cluster import LocalCluster
from core.postgres.wal import (
    WalNameError,
    check_segment,
    format_lsn,
    parse_lsn,
    parse_segment_name,
    read_segment_header,
    segment_name,
    segments_between,
    wal_file_kind,
)
from core.repository.repo import Repository
from core.repository.wal import (
    CLUSTER_NAME,
    WalArchive,
    WalNotArchived,
    WalRefused,
    gaps,
    list_wal,
    missing_segments,
    read_wal,
    wal_object_name,
)
from core.storage.factory import make_storages
from core.storage.local import LocalStorage
from core.wal.spool import LATENCY_KEEP, Spool

from tests.fixtures.backstop import BACKSTOP, Setup, local_target, s3_target_dict, write_setup
from tests.fixtures.s3 import SeaweedServer, ServerFactory, new_bucket
from tests.fixtures.server_account import give_to, let_run_python, wal_push_command

SEG = 16 * 1024 * 1024


def segment(tli: int, segno: int, sysid: int = 7_300_000_000_000_000_001, fill: bytes = b"x") -> bytes:
    """A segment-sized file starting with a PostgreSQL 15 long page header (the rest is what we say)."""
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0002 | 0x0004, tli, segno * SEG, 0, sysid, SEG, 8192)
    body = (fill * 4000)[:4000]
    return header + body + bytes(SEG - len(header) - len(body))


# -- names, LSNs, headers (pure) ---------------------------------------------------------------------------


def test_lsns_and_segment_names_follow_postgres() -> None:
    assert parse_lsn("0/2000028") == 0x2000028
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(0x2000028) == "0/2000028"
    assert format_lsn((0x16 << 32) | 0xB374D848) == "16/B374D848"
    # As pg_walfile_name() names them, 16 MiB segments: 256 per "xlogid".
    assert segment_name(1, "0/2000028") == "000000010000000000000002"
    assert segment_name(3, "16/B374D848") == "0000000300000016000000B3"
    assert segment_name(1, "1/0", seg_size=64 * 1024 * 1024) == "000000010000000100000000"
    assert segments_between(1, "0/1FFFFFF", "0/4000000") == [
        "000000010000000000000001", "000000010000000000000002", "000000010000000000000003",
        "000000010000000000000004"]
    assert parse_segment_name("0000000300000016000000B3") == (3, 0x16 * 256 + 0xB3)
    assert parse_segment_name("000000010000000000000007.partial") == (1, 7)
    assert parse_lsn(" 16/b374d848\n") == (0x16 << 32) | 0xB374D848  # as typed or pasted
    for bad in ("0/", "/1", "x/1", "1/2/3", "123456789/1", "0 /1", "", "+1/2", "0x1/2"):
        with pytest.raises(WalNameError):
            parse_lsn(bad)
    with pytest.raises(WalNameError):
        parse_segment_name("0000000100000000000001FF", seg_size=64 * 1024 * 1024)  # only 64 per id
    with pytest.raises(WalNameError):
        segments_between(1, "0/5000000", "0/1000000")
    kinds = {n: wal_file_kind(n) for n in ("000000010000000000000003", "000000010000000000000003.partial",
                                             "00000002.history", "000000010000000000000002.00000028.backup")}
    assert kinds == {"000000010000000000000003": "segment", "000000010000000000000003.partial": "partial",
                     "00000002.history": "history", "000000010000000000000002.00000028.backup": "backup"}
    for bad in ("RECOVERYXLOG", "000000010000000000000003.tmp", "../000000010000000000000003", "00000002.HISTORY",
                "000000010000000000000003\n", "00000001000000000000000a", "0000000100000000000000030", "",
                "0000002.history", "000000010000000000000002.0000028.backup", "x.partial",
                "000000010000000000000002.00000028.backup.partial", "000000010000000000000003.partial.partial"):
        with pytest.raises(WalNameError):
            wal_file_kind(bad)


def test_the_long_page_header_names_cluster_timeline_and_position() -> None:
    data = segment(2, 5, sysid=42)
    header = read_segment_header(data[:64])
    assert (header.system_identifier, header.timeline, header.seg_size, header.page_address) == (42, 2, SEG, 5 * SEG)
    assert check_segment("000000020000000000000005", data) == header
    with pytest.raises(WalNameError, match="belongs to 000000020000000000000005"):
        check_segment("000000020000000000000006", data)
    big_endian = struct.pack(">HHIQI4xQII", 0xD110, 0x0002, 2, 5 * SEG, 0, 42, SEG, 8192)
    assert read_segment_header(big_endian).system_identifier == 42  # WAL is in the server's byte order
    for bad_header in (struct.pack("<HHIQI4xQII", 0xD110, 0x0000, 2, 5 * SEG, 0, 42, SEG, 8192),  # no long header
                       struct.pack("<HHIQI4xQII", 0xD110, 0x0002, 2, 5 * SEG, 0, 42, 3 * SEG, 8192),  # odd size
                       struct.pack("<HHIQI4xQII", 0xD110, 0x0002, 2, 5 * SEG + 1, 0, 42, SEG, 8192)):  # mid-segment
        with pytest.raises(WalNameError):
            read_segment_header(bad_header)
    for call in (lambda: format_lsn(-1), lambda: segment_name(0, 5), lambda: segment_name(1, 5, seg_size=3000),
                 lambda: parse_segment_name("00000002.history")):
        with pytest.raises(WalNameError):
            call()
    with pytest.raises(WalNameError):
        read_segment_header(bytes(64))  # zeros: no magic
    with pytest.raises(WalNameError):
        read_segment_header(data[:20])


# -- the sealed objects on local targets (no PostgreSQL) ------------------------------------------------


async def _local_repo(base: Path, names: tuple[str, ...] = ("a", "b")) -> Repository:
    stores = [LocalStorage(LocalTargetConfig(name=n, type="local", path=base / n)) for n in names]
    for st in stores:
        await st.prepare()
    repo, _ = await Repository.init(stores, b"wal test passphrase", RepositoryConfig())
    return repo


def test_a_spool_record_matches_a_file_by_the_record_s_own_digest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "tag").ensure()
    data = segment(1, 3)
    path = tmp_path / "000000010000000000000003"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    # Records since 2026-12-05 hold the object header's BLAKE3; older ones a plain hex SHA-256.
    for digest in ("blake3:" + blake3.blake3(data).hexdigest(), "sha256:" + sha, sha):
        spool.write_record(path.name, len(data), digest)
        assert spool.matches(path.name, path) and spool.record(path.name).digest == digest  # type: ignore[union-attr]
    for digest in ("blake3:" + "00" * 32, "00" * 32):
        spool.write_record(path.name, len(data), digest)
        assert not spool.matches(path.name, path)


async def test_push_read_duplicates_and_refusals(tmp_path: Path) -> None:
    repo = await _local_repo(tmp_path)
    archive = WalArchive(repo)
    first = await archive.push("000000010000000000000003", segment(1, 3))
    assert first.stored and first.digest == "blake3:" + blake3.blake3(segment(1, 3)).hexdigest()
    again = await archive.push("000000010000000000000003", segment(1, 3))
    assert not again.stored  # the same content twice: success, nothing written
    with pytest.raises(WalRefused, match="000000010000000000000003 is already archived with different content"):
        await archive.push("000000010000000000000003", segment(1, 3, fill=b"y"))
    with pytest.raises(WalRefused, match="database system 99, but this repository archives .* 7300000000000000001"):
        await archive.push("000000010000000000000004", segment(1, 4, sysid=99))
    with pytest.raises(WalRefused, match="truncated"):
        await archive.push("000000010000000000000004", segment(1, 4)[:SEG // 2])
    await archive.push("00000002.history", b"1\t0/5000000\tno recovery target specified\n")
    assert await list_wal(repo) == {1: {"000000010000000000000003"}, 2: {"00000002.history"}}
    assert await read_wal(repo, "000000010000000000000003") == segment(1, 3)
    with pytest.raises(WalNotArchived):
        await read_wal(repo, "000000010000000000000009")
    assert await missing_segments(repo, 1, "0/3000028", "0/5000000") == ["000000010000000000000004",
                                                                          "000000010000000000000005"]
    # Both targets hold every object, sealed: no plaintext WAL on disk.
    for t in ("a", "b"):
        blob = (tmp_path / t / "wal" / "00000001" / "000000010000000000000003").read_bytes()
        assert b"xxxx" not in blob and blob[:4] == b"BKS\x01"
        assert (tmp_path / t / CLUSTER_NAME).exists()


def test_a_child_forked_after_sealing_wal_starts() -> None:
    """Compressors cached in worker threads must not hang a child forked with a preexec_fn.

    The child frees the other threads' state; a zstd compressor with worker threads of its own then waits
    forever for workers the child does not have (that once hung the suite in a SeaweedFS launch). In a
    child process, so that a hang is a timeout here and not a stuck test.
    """
    probe = (
        "import asyncio, os, subprocess\n"
        "from core.repository.keys import DataKey\n"
        "from core.repository.wal import seal_wal\n"
        "key = DataKey(1, os.urandom(32), os.urandom(32))\n"
        "data = (os.urandom(4096) + bytes(4096)) * 2048  # a segment's 16 MiB, half compressible\n"
        "async def main():\n"
        "    for _ in range(3):  # in the loop's executor threads, which stay alive, as in the pusher\n"
        "        await asyncio.to_thread(seal_wal, '000000010000000000000003', data, 1, key)\n"
        "    for _ in range(5):\n"
        "        subprocess.run(['true'], preexec_fn=lambda: None, check=True)\n"
        "asyncio.run(main())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
    child = subprocess.Popen([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parent.parent, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the stuck fork too
        child.communicate()
        raise AssertionError("a child forked after sealing WAL hung (zstd worker threads?)") from None
    assert child.returncode == 0, err[-2000:]


async def test_a_copy_renamed_to_another_segment_or_damaged_is_caught(tmp_path: Path) -> None:
    repo = await _local_repo(tmp_path)
    archive = WalArchive(repo)
    for n in (3, 4):
        await archive.push(f"00000001000000000000000{n}", segment(1, n))
    a3 = tmp_path / "a" / "wal" / "00000001" / "000000010000000000000003"
    a4 = tmp_path / "a" / "wal" / "00000001" / "000000010000000000000004"
    shutil.copy(a3, a4)  # target a: segment 3's object under segment 4's name
    b3 = tmp_path / "b" / "wal" / "00000001" / "000000010000000000000003"
    b3.write_bytes(b3.read_bytes()[:-1] + bytes([b3.read_bytes()[-1] ^ 1]))  # target b: one bit flipped
    # Each read falls through to the other target's intact copy.
    assert await read_wal(repo, "000000010000000000000004") == segment(1, 4)
    assert await read_wal(repo, "000000010000000000000003") == segment(1, 3)
    # A missing copy is completed by pushing the same file again.
    (tmp_path / "b" / "wal" / "00000001" / "000000010000000000000004").unlink()
    assert not (await archive.push("000000010000000000000004", segment(1, 4))).stored
    assert await list_wal(repo) == {1: {"000000010000000000000003", "000000010000000000000004"}}


def _frames(packed: bytes) -> list[int]:
    """The content sizes of the zstd frames in a compressed payload, in order."""
    import zstandard
    sizes, rest = [], packed
    while rest:
        sizes.append(zstandard.get_frame_parameters(rest).content_size)
        frame = zstandard.ZstdDecompressor().decompressobj()
        frame.decompress(rest)
        rest = frame.unused_data
    return sizes


async def test_a_segment_is_sealed_as_frames_and_single_frame_objects_still_open(tmp_path: Path) -> None:
    import zstandard
    from core.errors import IntegrityError
    from core.repository.crypto import compress, decompress_frames, open_packed, seal_object, seal_packed
    from core.repository.wal import WAL_KIND, open_wal

    repo = await _local_repo(tmp_path)
    name = "000000010000000000000003"
    data = segment(1, 3)
    pushed = await WalArchive(repo).push(name, data)
    blob = (tmp_path / "a" / "wal" / "00000001" / name).read_bytes()
    assert pushed.sealed_size == len(blob) == len((tmp_path / "b" / "wal" / "00000001" / name).read_bytes())
    await repo.verify_same(f"wal/00000001/{name}", [blob[:100], blob[100:]])  # the pieces as written
    for wrong in ([blob[:100], blob[101:]], [blob, b"x"], [blob[:-1] + bytes([blob[-1] ^ 1])]):
        with pytest.raises(IntegrityError, match="read-back"):
            await repo.verify_same(f"wal/00000001/{name}", wrong)
    packed = open_packed(blob, WAL_KIND, repo.keys)
    header = 54 + len(name)
    assert _frames(packed) == [header] + [SEG // 4] * 4  # the header frame, then one per quarter
    opened = open_wal(blob, name, repo.keys)
    assert opened.data == data and opened.digest == pushed.digest
    head = decompress_frames(packed)[:52]
    assert head[:4] == b"BKW2" and head[20:52] == blake3.blake3(data).digest()  # the header names BLAKE3
    history = "00000002.history"
    await WalArchive(repo).push(history, b"1\t0/5000000\tno recovery target specified\n")
    assert len(_frames(open_packed((tmp_path / "a" / "wal" / "00000002" / history).read_bytes(), WAL_KIND,
                                   repo.keys))) == 2  # small files: one data frame

    # An object written before frames (one frame holding header, name and data, and a SHA-256) still opens.
    digest = hashlib.sha256(data).digest()
    payload = struct.pack(">4sQQ32sH", b"BKW1", 7_300_000_000_000_000_001, SEG, digest, len(name)) + name.encode()
    old = seal_object(payload + data, WAL_KIND, repo.key, 1)
    assert open_wal(old, name, repo.keys).digest == "sha256:" + digest.hex()
    wrong = struct.pack(">4sQQ32sH", b"BKW1", 7_300_000_000_000_000_001, SEG, blake3.blake3(data).digest(),
                        len(name)) + name.encode()
    with pytest.raises(IntegrityError, match="SHA256 mismatch"):  # BKW1 means SHA-256, whatever it holds
        open_wal(seal_object(wrong + data, WAL_KIND, repo.key, 1), name, repo.keys)
    # Pushed again over such an old object, the same file is success and another one is refused: each
    # compared in the stored object's own digest.
    for t in ("a", "b"):
        (tmp_path / t / "wal" / "00000001" / name).write_bytes(old)
    assert not (await WalArchive(repo).push(name, data)).stored
    with pytest.raises(WalRefused, match=r"already archived with different content \(sha256:"):
        await WalArchive(repo).push(name, segment(1, 3, fill=b"y"))

    # A frame cut short, a frame that does not record its size, junk after the frames: damaged, never read.
    frames = packed[:-10]
    unsized = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(data[:4096])
    for bad in (frames, packed + unsized, packed + b"junk", compress(payload, 1) + unsized):
        with pytest.raises(IntegrityError, match="does not decode|damaged"):
            open_wal(seal_packed(bad, WAL_KIND, repo.key), name, repo.keys)


def test_a_payload_sealed_in_pieces_opens_as_one_sealed_whole() -> None:
    from core.repository.crypto import PackedSealer, open_packed
    from core.repository.keys import DataKey
    from core.repository.wal import WAL_KIND

    key = DataKey(3, os.urandom(32), os.urandom(32))
    pieces = [os.urandom(n) for n in (10, 0, 70_000, 5)]
    sealer = PackedSealer(WAL_KIND, key)
    blob = sealer.head + b"".join(sealer.update(p) for p in pieces) + sealer.finish()
    assert open_packed(blob, WAL_KIND, {3: key}) == b"".join(pieces)
    with pytest.raises(Exception, match="failed authentication"):
        open_packed(blob, b"snapshot", {3: key})  # the kind is authenticated, as with seal_packed
    tampered = bytearray(blob)
    tampered[len(sealer.head) + 20] ^= 1
    with pytest.raises(Exception, match="failed authentication"):
        open_packed(bytes(tampered), WAL_KIND, {3: key})


async def test_a_push_whose_compression_fails_stores_nothing_anywhere(tmp_path: Path, monkeypatch: Any) -> None:
    import core.repository.wal as walmod

    repo = await _local_repo(tmp_path)
    calls = []

    def third_part_fails(part: Any) -> bytes:
        calls.append(len(part))
        if len(calls) == 3:
            raise MemoryError("no memory for this part")
        return walmod.compress(part, 1)

    monkeypatch.setattr(walmod, "compress_part", third_part_fails)
    name = "000000010000000000000004"
    with pytest.raises(MemoryError):
        await WalArchive(repo).push(name, segment(1, 4))
    for target in ("a", "b"):  # neither the object nor a temporary file on either target
        assert list((tmp_path / target / "wal" / "00000001").iterdir()) == []
    monkeypatch.undo()
    await WalArchive(repo).push(name, segment(1, 4))  # PostgreSQL calls again: stored
    assert (await WalArchive(repo).read(name)).data == segment(1, 4)


def test_gaps_and_percentiles() -> None:
    names = ["000000010000000000000001", "000000010000000000000002", "000000010000000000000005",
             "000000010000000000000007"]
    assert gaps(names, SEG) == [("000000010000000000000003", "000000010000000000000004"),
                                ("000000010000000000000006", "000000010000000000000006")]
    p = percentiles([float(i) for i in range(1, 101)])
    assert p == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) == {}


def test_the_spool_keeps_the_last_thousand_latencies(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").ensure()
    for i in range(LATENCY_KEEP + 700):
        spool.add_latency(i / 1000, "spool")
    lat = spool.latencies()
    assert len(lat) == LATENCY_KEEP and lat[-1][1] == pytest.approx((LATENCY_KEEP + 699) / 1000)
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700


class DiskFull(LocalStorage):
    """A local target whose disk is full for WAL objects: the write really fails with ENOSPC (/dev/full)."""

    def _put(self, name: str, data: bytes) -> None:
        if name.startswith("wal/"):
            try:
                with open("/dev/full", "wb", buffering=0) as f:
                    f.write(data)
            except OSError as exc:
                raise self._os_error(exc, "write", self.root) from None
        super()._put(name, data)


async def test_a_full_disk_acknowledges_nothing(tmp_path: Path) -> None:
    repo = await _local_repo(tmp_path)
    setup = write_setup(tmp_path / "cfg", [local_target(tmp_path / "a", "a"), local_target(tmp_path / "b", "b")],
                        [], passphrase="wal test passphrase")
    wal = tmp_path / "pgdata" / "pg_wal"
    wal.mkdir(parents=True)
    (wal / "000000010000000000000003").write_bytes(segment(1, 3))
    spool = Spool(tmp_path / "spool").ensure()
    full = DiskFull(LocalTargetConfig(name="a", type="local", path=tmp_path / "a"))
    other = LocalStorage(LocalTargetConfig(name="b", type="local", path=tmp_path / "b"))
    with pytest.raises(StorageError, match="disk holding .* is full") as caught:
        await push_file(setup.config, wal / "000000010000000000000003", spool, storages=[full, other])
    assert caught.value.exit_code == 1
    assert spool.record("000000010000000000000003") is None  # nothing acknowledged
    assert not await full.exists(wal_object_name("000000010000000000000003"))
    # Space freed: the same push goes through.
    await push_file(setup.config, wal / "000000010000000000000003", spool, storages=[
        LocalStorage(LocalTargetConfig(name="a", type="local", path=tmp_path / "a")), other])
    assert spool.matches("000000010000000000000003", wal / "000000010000000000000003")
    assert await read_wal(repo, "000000010000000000000003") == segment(1, 3)


# -- the CLI on local targets (no PostgreSQL): the pusher, its spool, SIGKILL, wal-fetch, status ------------


def _run(setup: Setup, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BACKSTOP, "--config", str(setup.path), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, stdin=subprocess.DEVNULL)


def _stop_background(spool: Spool) -> None:
    """End the pusher and fetcher these tests started (by the pid in their lock files)."""
    for lock in (spool.pusher_lock, spool.fetcher_lock):
        pid = spool.holder(lock)
        if pid and pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _wait(cond: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def local_setup(tmp_path: Path) -> Iterator[tuple[Setup, Path, Spool]]:
    setup = write_setup(tmp_path / "cfg", [local_target(tmp_path / "repo1", "one"),
                                           local_target(tmp_path / "repo2", "two")], [])
    assert _run(setup, "init").returncode == 0
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
    spool = Spool(setup.dir / "wal-spool")
    yield setup, pgdata, spool
    _stop_background(spool)


def _ready(pgdata: Path, tli: int, segno: int, data: bytes | None = None) -> str:
    from core.postgres.wal import segment_file

    name = segment_file(tli, segno)
    (pgdata / "pg_wal" / name).write_bytes(data if data is not None else segment(tli, segno))
    (pgdata / "pg_wal" / "archive_status" / f"{name}.ready").touch()
    return name


def test_wal_push_works_ahead_and_survives_sigkill_of_the_pusher(local_setup: tuple[Setup, Path, Spool]) -> None:
    setup, pgdata, spool = local_setup
    names = [_ready(pgdata, 1, n) for n in range(1, 5)]
    first = _run(setup, "wal-push", f"pg_wal/{names[0]}", cwd=pgdata)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    # The pusher started by that call pushes the other ready files without being asked.
    _wait(lambda: all(spool.record(n) for n in names), what="work-ahead records")
    pid = spool.holder(spool.pusher_lock)
    assert pid and pid > 0
    with socket.socket(socket.AF_UNIX) as sock:  # the pusher answers nothing but PUSH <absolute path>
        sock.connect(spool.socket)
        sock.sendall(b"DELETE everything\n")
        assert sock.recv(200).startswith(b"ERR bad request")
    t0 = time.monotonic()
    assert _run(setup, "wal-push", f"pg_wal/{names[1]}", cwd=pgdata).returncode == 0
    assert time.monotonic() - t0 < 5  # answered by the pusher at once (a loose bound: the machine may be busy)
    assert spool.latencies()[-1][2] == "pusher"
    # SIGKILL: the next call finds no pusher and pushes by itself (and starts a new one).
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: spool.holder(spool.pusher_lock) is None, what="the pusher to die")
    late = _ready(pgdata, 1, 5)
    proc = _run(setup, "wal-push", f"pg_wal/{late}", cwd=pgdata)
    assert proc.returncode == 0, proc.stderr
    assert spool.record(late) is not None
    new_pid = _wait(lambda: spool.holder(spool.pusher_lock), what="a new pusher")
    assert new_pid != pid

    async def archived() -> dict[int, set[str]]:
        repo = await Repository.open(make_storages(setup.config.targets), setup.passphrase_file.read_bytes().strip())
        return await list_wal(repo)

    assert asyncio.run(archived()) == {1: {*names, late}}
    # A record whose file changed is not trusted: the call asks the archive, which refuses other content.
    (pgdata / "pg_wal" / names[2]).write_bytes(segment(1, 3, fill=b"z"))
    bad = _run(setup, "wal-push", f"pg_wal/{names[2]}", cwd=pgdata)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and names[2] in bad.stderr and "different content" in bad.stderr


def test_a_record_made_for_another_repository_acknowledges_nothing(tmp_path: Path) -> None:
    """The config now names other targets: a file recorded as pushed before is pushed again, into them."""
    wal = {"spool_dir": str(tmp_path / "spool")}  # one spool, as when a config file is edited in place
    old = write_setup(tmp_path / "cfg-old", [local_target(tmp_path / "old", "one")], [], wal=wal)
    assert _run(old, "init").returncode == 0
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
    spool = Spool(tmp_path / "spool")
    try:
        name = _ready(pgdata, 1, 7)
        assert _run(old, "wal-push", f"pg_wal/{name}", cwd=pgdata).returncode == 0
        assert spool.record(name) is not None
        _stop_background(spool)
        _wait(lambda: spool.holder(spool.pusher_lock) is None, what="the pusher to stop")
        new = write_setup(tmp_path / "cfg-new", [local_target(tmp_path / "new", "one")], [], wal=wal)
        assert _run(new, "init").returncode == 0
        proc = _run(new, "wal-push", f"pg_wal/{name}", cwd=pgdata)
        assert proc.returncode == 0, proc.stderr

        async def archived() -> dict[int, set[str]]:
            repo = await Repository.open(make_storages(new.config.targets), new.passphrase_file.read_bytes().strip())
            return await list_wal(repo)

        assert asyncio.run(archived()) == {1: {name}}  # stored in the new repository, not taken from the record
    finally:
        _stop_background(spool)


def test_check_finds_wal_missing_on_one_target_and_damaged_on_another(
        local_setup: tuple[Setup, Path, Spool]) -> None:
    setup, pgdata, spool = local_setup
    names = [_ready(pgdata, 1, n) for n in range(1, 4)]
    for n in names:
        assert _run(setup, "wal-push", f"pg_wal/{n}", cwd=pgdata).returncode == 0
    clean = _run(setup, "check", "--read-data", "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert all(t["objects_checked"] >= len(names) for t in json.loads(clean.stdout)["targets"])
    one = LocalStorage(LocalTargetConfig(name="one", type="local", path=setup.dir.parent / "repo1"))
    two = LocalStorage(LocalTargetConfig(name="two", type="local", path=setup.dir.parent / "repo2"))
    asyncio.run(two.delete(wal_object_name(names[1])))
    obj = one._path(wal_object_name(names[2]))  # noqa: SLF001
    raw = bytearray(obj.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    obj.write_bytes(bytes(raw))
    listed = _run(setup, "check", "--json")  # without --read-data: the listing shows what is missing
    assert listed.returncode == 1
    problems = {t["target"]: t["problems"] for t in json.loads(listed.stdout)["targets"]}
    assert problems["one"] == [] and len(problems["two"]) == 1
    assert names[1] in problems["two"][0] and "missing here" in problems["two"][0]
    read = _run(setup, "check", "--read-data", "--json")
    assert read.returncode == 1
    problems = {t["target"]: t["problems"] for t in json.loads(read.stdout)["targets"]}
    assert any(names[2] in p and "damaged" in p for p in problems["one"]), problems
    assert not any(names[2] in p for p in problems["two"])


def test_wal_fetch_exact_bytes_read_ahead_and_the_end_of_the_archive(local_setup: tuple[Setup, Path, Spool],
                                                                      tmp_path: Path) -> None:
    setup, pgdata, spool = local_setup
    names = [_ready(pgdata, 1, n, segment(1, n, fill=bytes([n]))) for n in range(1, 6)]
    for n in names:
        assert _run(setup, "wal-push", f"pg_wal/{n}", cwd=pgdata).returncode == 0
    out = tmp_path / "restore"
    out.mkdir()
    proc = _run(setup, "wal-fetch", names[0], "RECOVERYXLOG", cwd=out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "RECOVERYXLOG").read_bytes() == (pgdata / "pg_wal" / names[0]).read_bytes()
    # The fetcher brings the following segments into the spool; the next calls take them from there.
    _wait(lambda: Path(spool.fetched, names[2]).exists() or not Path(spool.fetched, names[1]).exists(),
          what="read-ahead")
    for n in names[1:]:
        proc = _run(setup, "wal-fetch", n, "RECOVERYXLOG", cwd=out)
        assert proc.returncode == 0, proc.stderr
        assert (out / "RECOVERYXLOG").read_bytes() == (pgdata / "pg_wal" / n).read_bytes()
        assert not Path(spool.fetched, n).exists()  # taken, not copied
    assert not [p for p in out.iterdir() if p.name != "RECOVERYXLOG"]  # no temporary files left
    for missing in ("000000010000000000000006", "00000002.history"):
        proc = _run(setup, "wal-fetch", missing, "RECOVERYXLOG", cwd=out)
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "")
    usage = _run(setup, "wal-fetch", "RECOVERYXLOG", "x", cwd=out)
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1


def test_without_a_usable_spool_the_calls_still_work(tmp_path: Path) -> None:
    """A spool this user cannot create (here: a file in the way) costs speed, never correctness."""
    in_the_way = tmp_path / "not-a-directory"
    in_the_way.write_text("")
    setup = write_setup(tmp_path / "cfg", [local_target(tmp_path / "repo", "one")], [],
                        wal={"spool_dir": str(in_the_way)})
    assert _run(setup, "init").returncode == 0
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
    name = _ready(pgdata, 1, 1)
    for _ in range(2):  # stored, then the same file again
        proc = _run(setup, "wal-push", f"pg_wal/{name}", cwd=pgdata)
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    proc = _run(setup, "wal-fetch", name, str(tmp_path / "back"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "back").read_bytes() == segment(1, 1)
    assert _run(setup, "wal-fetch", "000000010000000000000002", str(tmp_path / "x")).returncode == 1
    status = _run(setup, "wal", "status")
    assert status.returncode == 0 and "timeline 1: 000000010000000000000001" in status.stdout


async def test_the_pusher_and_the_fetcher_in_process(tmp_path: Path) -> None:
    """The background processes' loops, run in this process: work-ahead, answers, read-ahead, tidying."""
    from core.ops.wal import open_archive
    from core.wal import client
    from core.wal.fetcher import Fetcher
    from core.wal.spool import config_tag

    await _local_repo(tmp_path, ("a",))
    spool_dir = tmp_path / "spool"
    setup = write_setup(tmp_path / "cfg", [local_target(tmp_path / "a", "a")], [], passphrase="wal test passphrase",
                        wal={"spool_dir": str(spool_dir), "push_ahead": 2, "fetch_ahead": 2})
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
    names = [_ready(pgdata, 1, n) for n in range(1, 5)]
    spool = Spool(spool_dir, config_tag(setup.path)).ensure()  # as the pusher's main() tags it
    spool.note_pgdata(pgdata / "pg_wal" / names[0])
    pusher, serving, lock = await _serving_pusher(setup, spool)
    try:
        await asyncio.to_thread(_wait, lambda: all(spool.record(n) for n in names), 60, "work-ahead")
        late = _ready(pgdata, 1, 5)
        (pgdata / "pg_wal" / "archive_status" / f"{late}.ready").unlink()  # asked for before it is marked ready
        assert await asyncio.to_thread(client.wal_push, str(setup.path), str(pgdata / "pg_wal" / late)) == 0
        assert [how for _, _, how in spool.latencies()] == ["pusher"]
        junk = pgdata / "pg_wal" / "000000010000000000000009"
        junk.write_bytes(b"not WAL at all" * 100)
        assert await asyncio.to_thread(client.wal_push, str(setup.path), str(junk)) == 1
        assert pusher.failures and junk.name in pusher.failures
    finally:
        pusher.stop()
        assert await serving == 0
        os.close(lock or -1)
    assert not Path(spool.socket).exists()
    # Read-ahead: the position is what the last wal-fetch call asked for.
    archive = await open_archive(setup.config)
    fetcher = Fetcher(spool, archive, ahead=2)
    flock = spool.take_lock(spool.fetcher_lock)  # this process is the fetcher: no call may start another
    spool.set_fetch_position(names[1])
    Path(spool.fetched, names[0]).write_bytes(b"passed")  # recovery is past it: removed
    fetching = asyncio.ensure_future(fetcher.run())
    try:
        await asyncio.to_thread(_wait, lambda: Path(spool.fetched, names[3]).exists(), 60, "read-ahead")
        await asyncio.to_thread(_wait, lambda: not Path(spool.fetched, names[0]).exists(), 10, "tidying")
        assert sorted(p.name for p in Path(spool.fetched).iterdir()) == [names[2], names[3]]
        assert Path(spool.fetched, names[2]).read_bytes() == segment(1, 3)
        out = tmp_path / "RECOVERYXLOG"
        assert await asyncio.to_thread(client.wal_fetch, str(setup.path), names[3], str(out)) == 0
        assert out.read_bytes() == segment(1, 4) and not Path(spool.fetched, names[3]).exists()
        await asyncio.to_thread(_wait, lambda: Path(spool.fetched, late).exists(), 60, "read-ahead of the next")
    finally:
        fetcher.stopping.set()
        await fetching
        os.close(flock or -1)
        await asyncio.gather(*(s.close() for s in archive.repo.storages))


async def _serving_pusher(setup: Setup, spool: Spool) -> tuple[Any, asyncio.Future[int], int | None]:
    """A Pusher serving ``spool`` in this process (holding its lock, so no call starts another)."""
    from core.wal.pusher import Pusher

    lock = spool.take_lock(spool.pusher_lock)
    pusher = Pusher(setup.path, spool, setup.config)
    serving = asyncio.ensure_future(pusher.serve())
    await asyncio.to_thread(_wait, Path(spool.socket).exists, 30, "the pusher to listen")
    return pusher, serving, lock


async def test_the_pusher_wakes_on_ready_and_answers_from_memory_until_the_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.wal import client
    from core.wal import pusher as pusher_module
    from core.wal.spool import config_tag

    await _local_repo(tmp_path, ("a",))
    setup = write_setup(tmp_path / "cfg", [local_target(tmp_path / "a", "a")], [], passphrase="wal test passphrase",
                        wal={"spool_dir": str(tmp_path / "spool")})
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
    monkeypatch.setattr(pusher_module, "SCAN_INTERVAL_S", 3600.0)  # only the directory watch can wake it
    spool = Spool(tmp_path / "spool", config_tag(setup.path)).ensure()
    spool.note_pgdata(pgdata / "pg_wal" / "000000010000000000000001")
    hashed: list[str] = []
    real_matches = spool.matches

    def counting(name: str, path: Path) -> bool:
        hashed.append(name)
        return real_matches(name, path)

    monkeypatch.setattr(spool, "matches", counting)  # the pusher's own spool: counts what it reads and hashes
    pusher, serving, lock = await _serving_pusher(setup, spool)
    try:
        first = _ready(pgdata, 1, 1)
        await asyncio.to_thread(_wait, lambda: spool.record(first), 30, "the first push")
        # Written a while before PostgreSQL marks it ready, as a finished segment is.
        name = "000000010000000000000002"
        (pgdata / "pg_wal" / name).write_bytes(segment(1, 2))
        await asyncio.sleep(0.2)
        (pgdata / "pg_wal" / "archive_status" / f"{name}.ready").touch()
        # No scan for an hour: the watch started the push, before any call asked for it.
        await asyncio.to_thread(_wait, lambda: spool.record(name), 30, "the push woken by the .ready file")
        assert name in pusher.stored
        hashed.clear()
        assert await asyncio.to_thread(client.wal_push, str(setup.path), str(pgdata / "pg_wal" / name)) == 0
        assert hashed == []  # answered from memory: the file's stat is what it was when stored
        assert spool.latencies()[-1][2] == "pusher"
        # Other content under that name: not taken from memory; read, hashed and refused by the archive.
        (pgdata / "pg_wal" / name).write_bytes(segment(1, 2, fill=b"y"))
        assert await asyncio.to_thread(client.wal_push, str(setup.path), str(pgdata / "pg_wal" / name)) == 1
        assert hashed == [name]
        # A file that changed just before it was read is not remembered (its ctime could hide a later write).
        monkeypatch.setattr(pusher_module, "_RACY_NS", 3600 * 10**9)
        third = _ready(pgdata, 1, 3)
        await asyncio.to_thread(_wait, lambda: spool.record(third), 30, "the third push")
        assert third not in pusher.stored
    finally:
        pusher.stop()
        assert await serving == 0
        os.close(lock or -1)


async def test_a_pusher_of_the_config_before_an_edit_is_not_taken_at_its_word(tmp_path: Path) -> None:
    """Its OK names its config; a call made with the edited config pushes into the new repository itself."""
    from core.wal import client
    from core.wal.spool import config_tag

    wal = {"spool_dir": str(tmp_path / "spool")}
    await _local_repo(tmp_path / "old", ("a",))
    await _local_repo(tmp_path / "new", ("a",))
    old = write_setup(tmp_path / "cfg-old", [local_target(tmp_path / "old" / "a", "a")], [],
                      passphrase="wal test passphrase", wal=wal)
    new = write_setup(tmp_path / "cfg-new", [local_target(tmp_path / "new" / "a", "a")], [],
                      passphrase="wal test passphrase", wal=wal)
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
    name = _ready(pgdata, 1, 4)
    spool = Spool(tmp_path / "spool", config_tag(old.path)).ensure()
    spool.note_pgdata(pgdata / "pg_wal" / name)
    pusher, serving, lock = await _serving_pusher(old, spool)
    try:
        await asyncio.to_thread(_wait, lambda: spool.record(name), 30, "the old pusher's push")
        assert await asyncio.to_thread(client.wal_push, str(new.path), str(pgdata / "pg_wal" / name)) == 0
        assert spool.latencies()[-1][2] == "direct"
    finally:
        pusher.stop()
        assert await serving == 0
        os.close(lock or -1)
    for setup in (old, new):  # the old pusher's copy, and this call's own in the new repository
        repo = await Repository.open(make_storages(setup.config.targets), b"wal test passphrase")
        assert await list_wal(repo) == {1: {name}}


def test_the_spool_of_a_config_is_remembered_until_the_file_changes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """wal-push parses the YAML once per edit of the config, not at every call."""
    from core.wal.spool import config_tag, spool_of

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = tmp_path / "backstop.yaml"
    config.write_text(f"wal:\n  spool_dir: {tmp_path / 'one'}\n")
    assert Path(spool_of(config).root) == tmp_path / "one"
    [pointer] = (tmp_path / "cache" / "backstop" / "spools").iterdir()
    # Taken from the pointer, without parsing the file (a pointer changed by hand shows it).
    pointer.write_text(f"{config_tag(config)} {tmp_path / 'elsewhere'}\n")
    assert Path(spool_of(config).root) == tmp_path / "elsewhere"
    config.write_text(f"wal:\n  spool_dir: {tmp_path / 'two'}\n")  # edited: parsed again
    assert Path(spool_of(config).root) == tmp_path / "two"
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/no-such-cache")  # nowhere to remember: parsed every time
    assert Path(spool_of(config).root) == tmp_path / "two"


def test_wal_status_shows_range_gap_and_latency(local_setup: tuple[Setup, Path, Spool]) -> None:
    import json

    setup, pgdata, spool = local_setup
    names = [_ready(pgdata, 1, n) for n in range(1, 7)]
    for n in names:
        assert _run(setup, "wal-push", f"pg_wal/{n}", cwd=pgdata).returncode == 0
    (pgdata / "pg_wal" / "archive_status" / f"{names[0]}.ready").rename(
        pgdata / "pg_wal" / "archive_status" / f"{names[0]}.done")
    for target in ("repo1", "repo2"):
        (setup.dir.parent / target / "wal" / "00000001" / names[3]).unlink()
    proc = _run(setup, "wal", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (tl,) = doc["timelines"]
    assert (tl["first"], tl["last"], tl["segments"]) == (names[0], names[5], 5)
    assert tl["gaps"] == [[names[3], names[3]]]
    assert doc["system_identifier"] == "7300000000000000001"
    assert doc["newest"] == names[5] and 0 <= doc["newest_age_s"] < 300
    assert doc["pgdata"] == str(pgdata) and doc["backlog"] == names[1:]
    assert doc["latency_count"] == 6
    lat = doc["latency"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    text = _run(setup, "wal", "status")
    assert text.returncode == 0
    assert f"gap: {names[3]} missing" in text.stdout and "p50" in text.stdout


# -- a real cluster archiving through the CLI ----------------------------------------------------------------


@dataclass
class Archiving:
    cluster: LocalCluster
    setup: Setup  # the config archive_command uses (its spool belongs to the server's OS user)
    ops: Setup  # the same repository for root's own calls (its own spool)
    base: Path

    @property
    def spool(self) -> Spool:
        return Spool(self.setup.dir / "wal-spool")

    def sql(self, query: str) -> Any:
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else None

    def switch(self) -> str:
        """Write a little WAL, switch segments; the name of the segment just completed."""
        self.sql("CREATE TABLE IF NOT EXISTS t (x int)")
        self.sql("INSERT INTO t SELECT generate_series(1, 100)")
        return str(self.sql("SELECT pg_walfile_name(pg_switch_wal() - 1)")[0][0])

    def wait_archived(self, name: str, timeout: float = 90) -> None:
        def done() -> bool:
            last = self.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
            return last is not None and last[:24] >= name
        _wait(done, timeout, f"PostgreSQL to archive {name}")

    async def repo(self) -> Repository:
        return await Repository.open(make_storages(self.setup.config.targets),
                                     self.setup.passphrase_file.read_bytes().strip())


def _archiving_cluster(base: Path, targets: list[dict[str, Any]]) -> Archiving:
    setup = write_setup(base / "cfg", targets, [])
    assert setup.cli("init").returncode == 0
    ops = write_setup(base / "ops", targets, [], wal={"spool_dir": str(base / "ops" / "spool")})
    probe = LocalCluster(base / "data")
    acct = pwd.getpwnam(probe.os_user)
    if os.geteuid() == 0:
        give_to(acct.pw_uid, acct.pw_gid, base / "cfg", *(Path(t["path"]) for t in targets if t["type"] == "local"))
        let_run_python(acct.pw_uid)
    command = wal_push_command(setup.path)
    settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "wal_level": "replica",
                "archive_mode": "on", "archive_timeout": "2", "archive_command": command}
    cluster = LocalCluster(base / "data", settings=settings)
    cluster.init(no_sync=True)
    cluster.start()
    return Archiving(cluster, setup, ops, base)


def _end(arch: Archiving) -> None:
    with contextlib.suppress(Exception):
        arch.cluster.stop()
    _stop_background(arch.spool)
    _stop_background(Spool(arch.ops.dir / "spool"))
    shutil.rmtree(arch.base, ignore_errors=True)


@pytest.fixture(scope="module")
def archiving(s3_servers: list[SeaweedServer]) -> Iterator[Archiving]:
    # Not under pytest's basetemp: the server's user must traverse the parents (see tests/fixtures/pg.py).
    base = Path(tempfile.mkdtemp(prefix="backstop-test-wal-"))
    arch = _archiving_cluster(base, [local_target(base / "repo"),
                                     s3_target_dict(s3_servers[0], new_bucket(s3_servers[0]))])
    yield arch
    _end(arch)


async def test_segments_arrive_on_both_targets_checked(archiving: Archiving) -> None:
    name = archiving.switch()
    archiving.wait_archived(name)
    repo = await archiving.repo()
    for st in repo.storages:  # local and S3
        assert name in (await list_wal(repo, st))[1]
    data = await read_wal(repo, name)
    sysid = int(archiving.sql("SELECT system_identifier FROM pg_control_system()")[0][0])
    assert read_segment_header(data).system_identifier == sysid
    assert (await WalArchive(repo).identity()).system_identifier == sysid  # type: ignore[union-attr]
    rec = archiving.spool.record(name)
    assert rec is not None and rec.digest == "blake3:" + blake3.blake3(data).hexdigest()
    # Run by the server's OS user: the spool is that user's.
    owner = pwd.getpwuid(os.stat(archiving.spool.root).st_uid).pw_name
    assert owner == archiving.cluster.os_user


async def test_duplicate_other_content_and_other_cluster(archiving: Archiving, pg_cluster: LocalCluster,
                                                         tmp_path: Path) -> None:
    name = archiving.switch()
    archiving.wait_archived(name)
    got = tmp_path / name
    assert archiving.ops.cli("wal-fetch", name, str(got)).returncode == 0
    same = archiving.ops.cli("wal-push", str(got))
    assert same.returncode == 0, same.stderr
    changed = bytearray(got.read_bytes())
    changed[SEG // 2] ^= 0xFF
    got.write_bytes(bytes(changed))
    diff = archiving.ops.cli("wal-push", str(got))
    assert diff.returncode == 1
    assert diff.stderr.count("\n") == 1 and name in diff.stderr and "different content" in diff.stderr
    # A segment of the session's other cluster (another initdb: another system identifier).
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        other = str(conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0])  # type: ignore[index]
    foreign = tmp_path / "other" / other
    foreign.parent.mkdir()
    shutil.copy(pg_cluster.data_dir / "pg_wal" / other, foreign)
    refused = archiving.ops.cli("wal-push", str(foreign))
    assert refused.returncode == 1
    assert "database system" in refused.stderr and "its own repository" in refused.stderr
    assert refused.stderr.count("\n") == 1


async def test_sigkill_of_the_pusher_loses_nothing(archiving: Archiving) -> None:
    archiving.wait_archived(archiving.switch())
    pid = _wait(lambda: archiving.spool.holder(archiving.spool.pusher_lock), what="the pusher")
    archiving.sql("CREATE TABLE IF NOT EXISTS big (x int, pad text)")
    archiving.sql("INSERT INTO big SELECT g, repeat('p', 200) FROM generate_series(1, 100000) g")
    os.kill(pid, signal.SIGKILL)
    archiving.sql("INSERT INTO big SELECT g, repeat('q', 200) FROM generate_series(1, 100000) g")
    last = archiving.switch()
    archiving.wait_archived(last)
    new_pid = _wait(lambda: archiving.spool.holder(archiving.spool.pusher_lock), what="a new pusher")
    assert new_pid != pid
    repo = await archiving.repo()
    segs = sorted(n for n in (await list_wal(repo))[1] if wal_file_kind(n) == "segment")
    assert segs[0] == "000000010000000000000001" and segs[-1] >= last
    assert gaps(segs, SEG) == []  # every segment from the first to the last, on both targets


async def test_wal_status_of_the_live_archive_with_a_gap(archiving: Archiving) -> None:
    import json

    names = [archiving.switch() for _ in range(3)]
    archiving.wait_archived(names[-1])
    repo = await archiving.repo()
    hole = names[1]
    data = await read_wal(repo, hole)
    for st in repo.storages:
        await st.delete(wal_object_name(hole))
    proc = archiving.setup.cli("wal", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    tl = next(t for t in doc["timelines"] if t["timeline"] == 1)
    assert [hole, hole] in tl["gaps"]
    assert tl["first"] == "000000010000000000000001" and tl["last"] >= names[-1]
    assert doc["latency_count"] > 0 and doc["latency"]["p50"] <= doc["latency"]["max"]
    assert doc["pgdata"] == str(archiving.cluster.data_dir) and isinstance(doc["backlog"], list)
    assert doc["newest_age_s"] < 120
    # Put it back (root's own config, same repository): the gap closes.
    back = archiving.base / "ops" / hole
    back.write_bytes(data)
    assert archiving.ops.cli("wal-push", str(back)).returncode == 0
    doc = json.loads(archiving.setup.cli("wal", "status", "--json").stdout)
    assert next(t for t in doc["timelines"] if t["timeline"] == 1)["gaps"] == []


async def test_s3_down_during_wal_push_then_archived_once_back(s3_server_factory: ServerFactory) -> None:
    server = s3_server_factory()
    base = Path(tempfile.mkdtemp(prefix="backstop-test-wal-s3-"))
    arch = _archiving_cluster(base, [local_target(base / "repo"), s3_target_dict(server, new_bucket(server))])
    try:
        arch.wait_archived(arch.switch())
        server.stop()
        name = arch.switch()
        failed = _wait(lambda: [r for r in arch.sql("SELECT last_archived_wal, failed_count, last_failed_wal "
                                                   "FROM pg_stat_archiver") if r[1] > 0 and r[2] == name],
                       timeout=60, what="a failed archive_command")[0]
        assert failed[0] < name  # not acknowledged: PostgreSQL keeps it and retries
        assert arch.spool.record(name) is None
        server.start()
        arch.switch()  # new WAL wakes the archiver at once (else it retries within a minute)
        arch.wait_archived(name, timeout=180)
        repo = await arch.repo()
        for st in repo.storages:
            assert name in (await list_wal(repo, st))[1]
    finally:
        _end(arch)


def test_no_wal_push_failure_is_noisy(tmp_path: Path) -> None:
    """Usage and config failures: non-zero, one line, nothing on stdout."""
    cases = [
        ([*BACKSTOP, "--config", str(tmp_path / "nope.yaml"), "wal-push", "pg_wal/000000010000000000000001"], 2),
        ([*BACKSTOP, "--config", str(tmp_path / "nope.yaml"), "wal-push", "pg_wal/RECOVERYXLOG"], 2),
    ]
    for argv, code in cases:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == code and proc.stdout == "" and proc.stderr.count("\n") == 1, proc


async def test_direct_calls_report_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """When no pusher answers, a call opens the repository itself; its failures are one line too."""
    from core.wal import client

    await _local_repo(tmp_path, ("a",))
    wrong = write_setup(tmp_path / "cfg", [local_target(tmp_path / "a", "a")], [], passphrase="not the passphrase")
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
    name = _ready(pgdata, 1, 1)
    code = await asyncio.to_thread(client._push_here, wrong.path, pgdata / "pg_wal" / name, None, time.monotonic())
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("backstop: wal-push: ") and err.count("\n") == 1
    right = write_setup(tmp_path / "cfg2", [local_target(tmp_path / "a", "a")], [], passphrase="wal test passphrase")
    spool = Spool(tmp_path / "spool").ensure()
    code = await asyncio.to_thread(client._push_here, right.path, pgdata / "pg_wal" / name, spool, time.monotonic())
    assert code == 0 and spool.latencies()[-1][2] == "direct" and spool.record(name) is not None
    code = await asyncio.to_thread(client._fetch_here, wrong.path, name, tmp_path / "out")
    assert code == 2 and capsys.readouterr().err.count("\n") == 1
    assert await asyncio.to_thread(client._fetch_here, right.path, "000000010000000000000002", tmp_path / "out") == 1
    assert capsys.readouterr().err == "" and not (tmp_path / "out").exists()
