"""The WAL spool: a private directory where wal-push, wal-fetch and their background processes meet.

Standard library only (and ``blake3`` to check a file against a record, which
few calls do), and paths as plain strings (the fast path imports it, and
``pathlib`` would cost a call a sixth of its CPU). Layout, all owned by the
PostgreSQL server's OS user, directories 0700 and files 0600::

    pusher.lock     held (flock) by the running pusher; holds its pid
    pusher.sock     the pusher's Unix socket: "PUSH <absolute path>" -> "OK <config tag> ..." | "ERR <one line>"
                    (a call takes an OK only with its own config's tag: see pushed/ below)
    pusher.log      the background processes' own lines (what went wrong while working ahead)
    pushed/<name>   one record per WAL file stored on every target and read back:
                    "<size> <digest> <unix time> <config tag>", the digest as the WAL object's header
                    has it ("blake3:<hex>"; a plain hex SHA-256 in records before 2026-12-05);
                    only the pusher or a push writes it;
                    the tag (16 hex of the config file's SHA-256) ties it to the repository it was
                    stored in: after the config changes (other targets, another repository) an old
                    record acknowledges nothing and the file is pushed again
    latency         "<unix time> <seconds> <how>" per acknowledged wal-push call (the last 1,000 kept)
    pgdata          the data directory of the last pushed file (wal status reads its .ready backlog)
    fetcher.lock    held by the running read-ahead fetcher
    fetch-position  the WAL file name the last wal-fetch call asked for (the fetcher reads ahead of it)
    fetch-plan      the names the fetcher is about to fetch, one a line
    fetched/<name>  a WAL file fetched ahead, complete and checked (written under a temporary name first)

The spool is the configured ``wal.spool_dir``; by default ``wal-spool``
beside the config file when that directory is writable, else
``$XDG_DATA_HOME/backstop/wal-spool/<16 hex of the config path's SHA-256>``.
A configured spool is remembered in ``$XDG_CACHE_HOME/backstop/spools/<16
hex of the config path's SHA-256>`` ("<config tag> <spool>"), so a call
parses the YAML only once per edit of the config file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CONFIG_ENV = "BACKSTOP_CONFIG"
LATENCY_KEEP = 1000
_HASH_BLOCK = 1024 * 1024


class SpoolError(Exception):
    """The spool cannot be used (the message is one line saying what to do); never leaves the fast path."""


class Record:
    """A WAL file known to be stored on every target (a plain class: no dataclasses on the fast path)."""

    __slots__ = ("at", "digest", "size", "tag")

    def __init__(self, size: int, digest: str, at: float, tag: str = "") -> None:
        self.size, self.digest, self.at, self.tag = size, digest, at, tag


def config_path(given: str | None) -> str:
    """The config file: ``--config`` or ``$BACKSTOP_CONFIG``, made absolute."""
    path = given or os.environ.get(CONFIG_ENV)
    if not path:
        raise SpoolError(f"no config file: pass --config PATH or set ${CONFIG_ENV}")
    return os.path.abspath(path)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _tag(raw: bytes) -> str:
    return _sha256(raw).hexdigest()[:16]


def _builtin_sha256() -> Callable[[bytes], Any]:
    # The interpreter's own SHA-256 for the few bytes a call hashes (config tags, paths): importing hashlib
    # loads OpenSSL, 2-3 ms of every wal-push call. Files are hashed with hashlib (file_sha256).
    for name in ("_sha2", "_sha256"):  # 3.12 renamed _sha256
        try:
            fn: Callable[[bytes], Any] = __import__(name).sha256
            return fn
        except ImportError:
            continue
    import hashlib
    return hashlib.sha256


_sha256 = _builtin_sha256()


def config_tag(config: str | os.PathLike[str]) -> str:
    """16 hex of the config file's SHA-256: what ties a pushed record to the repository it went to."""
    try:
        return _tag(_read(os.fspath(config)))
    except OSError:
        return ""


def _data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "backstop")


def default_spool(config: str) -> str:
    """Where the spool is when the config does not say (see the module docstring)."""
    parent = os.path.dirname(config)
    beside = os.path.join(parent, "wal-spool")
    if os.path.isdir(beside) or os.access(parent, os.W_OK | os.X_OK):
        return beside
    return os.path.join(_data_dir(), "wal-spool", _tag(config.encode()))


def configured_spool(config: str, text: str) -> str | None:
    """``wal.spool_dir`` of the config document (relative to the config's directory), or None."""
    import yaml  # only configs that name a spool pay for it

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise SpoolError(f"config error in {config}: not valid YAML") from None
    wal = doc.get("wal") if isinstance(doc, dict) else None
    value = wal.get("spool_dir") if isinstance(wal, dict) else None
    if value is None:
        return None
    return os.path.join(os.path.dirname(config), os.path.expanduser(str(value)))


def _pointer(config: str) -> str:
    """Where the spool found for this config path is remembered (``<config tag> <spool>``), per OS user."""
    # The account's own home, not $HOME: an archive_command started under su or sudo may carry another
    # user's $HOME, where this user can write nothing.
    import pwd  # built in: costs nothing on the fast path

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(pwd.getpwuid(os.geteuid()).pw_dir, ".cache")
    return os.path.join(base, "backstop", "spools", _tag(config.encode()))


def _remembered(config: str, tag: str) -> str | None:
    """The spool remembered for this config file's exact content (its tag), or None."""
    try:
        remembered_tag, _, where = _read(_pointer(config)).decode().rstrip("\n").partition(" ")
    except (OSError, KeyError, UnicodeDecodeError):  # KeyError: a uid without a passwd entry
        return None
    return where if remembered_tag == tag and where else None


def _remember(config: str, tag: str, spool: str) -> None:
    """Best effort: a user without a writable cache directory parses the config at every call."""
    try:
        pointer = _pointer(config)
        os.makedirs(os.path.dirname(pointer), mode=0o700, exist_ok=True)
        write_atomic(pointer, f"{tag} {spool}\n".encode())
    except (OSError, KeyError):
        pass


def spool_of(config: str | os.PathLike[str]) -> Spool:
    """This config's spool (tagged with the config), from one read of the file and without validating it all."""
    config = os.fspath(config)
    try:
        raw = _read(config)
    except OSError as exc:
        raise SpoolError(f"config error in {config}: cannot read the file: {exc.strerror}") from None
    tag = _tag(raw)
    text = raw.decode("utf-8", "replace")
    # A cheap pre-filter: only a config that mentions the key is parsed, and only once per edit of the file:
    # importing and running the YAML parser would be a fifth of a wal-push call.
    if "spool_dir" not in text:
        return Spool(default_spool(config), tag)
    remembered = _remembered(config, tag)
    if remembered is not None:
        return Spool(remembered, tag)
    root = configured_spool(config, text) or default_spool(config)
    _remember(config, tag, root)
    return Spool(root, tag)


def file_digest(path: str | os.PathLike[str], like: str) -> tuple[int, str]:
    """(size, digest) of a file, read in blocks; the digest spelled as ``like`` (a record's) is."""
    h: Any
    # Imported here: most calls hash no file. A record before 2026-12-05 holds a plain hex SHA-256.
    if like.startswith("blake3:"):
        import blake3
        h, prefix = blake3.blake3(), "blake3:"
    else:
        import hashlib
        h, prefix = hashlib.sha256(), "sha256:" if like.startswith("sha256:") else ""
    size = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
            size += len(block)
    return size, prefix + h.hexdigest()


def write_atomic(path: str | os.PathLike[str], data: bytes, fsync: bool = False) -> None:
    """Write a file under a temporary name in its directory, then rename it into place."""
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".tmp-{name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Spool:
    """One spool directory (see the module docstring for its files); every path a string."""

    def __init__(self, root: str | os.PathLike[str], tag: str = "") -> None:
        self.root = os.fspath(root)
        self.tag = tag  # config_tag() of the config this process works for
        self.pushed = self.at("pushed")
        self.fetched = self.at("fetched")
        self.pusher_lock = self.at("pusher.lock")
        self.fetcher_lock = self.at("fetcher.lock")
        self.socket = self.at("pusher.sock")
        self.log = self.at("pusher.log")

    def at(self, *names: str) -> str:
        """A path inside the spool."""
        return os.path.join(self.root, *names)

    def ensure(self) -> Spool:
        """Create the directories (private: records decide what is acknowledged to PostgreSQL)."""
        for d in (self.root, self.pushed, self.fetched):
            try:
                os.makedirs(d, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise SpoolError(f"cannot create the WAL spool {d}: {exc.strerror}; set wal.spool_dir in the "
                                 "config to a directory the PostgreSQL server's OS user can write") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise SpoolError(f"the WAL spool {self.root} is not writable by this user; give it to the PostgreSQL "
                             "server's OS user (chown) or set wal.spool_dir")
        return self

    # -- pushed records ------------------------------------------------------------------------------------

    def record(self, name: str) -> Record | None:
        """The record of a pushed WAL file, or None."""
        try:
            size, sha, at, *tag = _read(os.path.join(self.pushed, name)).split()
            return Record(int(size), sha.decode(), float(at), tag[0].decode() if tag else "")
        except (OSError, ValueError):
            return None

    def write_record(self, name: str, size: int, digest: str) -> None:
        """Record a WAL file as stored everywhere (only after put and read-back on every target)."""
        write_atomic(os.path.join(self.pushed, name), f"{size} {digest} {time.time():.3f} {self.tag}\n".encode())

    def matches(self, name: str, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is exactly the file recorded as pushed under ``name`` with this config (size, digest)."""
        rec = self.record(name)
        if rec is None or rec.tag != self.tag:
            return False
        try:
            if os.stat(path).st_size != rec.size:
                return False
            return file_digest(path, rec.digest) == (rec.size, rec.digest)
        except OSError:
            return False

    def forget_records(self, older_than: float) -> int:
        """Delete records older than a Unix time (PostgreSQL asks for a file again only while it is .ready)."""
        n = 0
        try:
            entries = list(os.scandir(self.pushed))
        except OSError:
            return 0
        for entry in entries:
            try:
                if entry.stat().st_mtime < older_than:
                    os.unlink(entry.path)
                    n += 1
            except OSError:
                continue
        return n

    # -- latency -------------------------------------------------------------------------------------------

    def add_latency(self, seconds: float, how: str) -> None:
        """Append one acknowledged push's latency; keep the newest LATENCY_KEEP."""
        fd = os.open(self.at("latency"), os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{time.time():.3f} {seconds:.6f} {how}\n".encode())
            if os.fstat(fd).st_size > LATENCY_KEEP * 60:  # well over LATENCY_KEEP lines: trim under the lock
                with open(fd, "rb", closefd=False) as f:
                    f.seek(0)
                    lines = f.read().splitlines(keepends=True)[-LATENCY_KEEP:]
                os.ftruncate(fd, 0)
                os.write(fd, b"".join(lines))
        finally:
            os.close(fd)

    def latencies(self) -> list[tuple[float, float, str]]:
        """(unix time, seconds, how) of the last pushes, oldest first."""
        out = []
        try:
            text = _read(self.at("latency")).decode()
        except OSError:
            return []
        for line in text.splitlines()[-LATENCY_KEEP:]:
            parts = line.split()
            try:
                out.append((float(parts[0]), float(parts[1]), parts[2] if len(parts) > 2 else "?"))
            except (ValueError, IndexError):
                continue
        return out

    # -- the data directory --------------------------------------------------------------------------------

    def note_pgdata(self, wal_path: str) -> None:
        """Remember the data directory a pushed file came from (``<pgdata>/pg_wal/<name>``, absolute)."""
        wal_dir = os.path.dirname(wal_path)
        if os.path.basename(wal_dir) != "pg_wal":
            return
        pgdata = os.path.dirname(wal_dir)
        if self.pgdata() != pgdata:
            write_atomic(self.at("pgdata"), (pgdata + "\n").encode())

    def pgdata(self) -> str | None:
        """The data directory of the last pushed file, if known."""
        try:
            return _read(self.at("pgdata")).decode().strip() or None
        except OSError:
            return None

    # -- background processes ------------------------------------------------------------------------------

    def holder(self, lock: str) -> int | None:
        """The pid of the process holding ``lock`` (a pusher or fetcher), or None when nobody holds it."""
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                data = os.pread(fd, 32, 0).split()
                return int(data[0]) if data and data[0].isdigit() else -1
            return None
        finally:
            os.close(fd)

    def take_lock(self, lock: str) -> int | None:
        """Hold ``lock`` for this process's life (an fd kept open), or None when another process holds it."""
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def log_line(self, message: str) -> None:
        """One line in pusher.log (kept under 1 MiB: the older half goes to pusher.log.1)."""
        try:
            if os.path.exists(self.log) and os.path.getsize(self.log) > 1024 * 1024:
                os.replace(self.log, self.log + ".1")
            with open(self.log, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} [{os.getpid()}] {message}\n")
        except OSError:
            pass  # the log is for people; a full disk must not fail a push that worked

    # -- read-ahead ----------------------------------------------------------------------------------------

    def fetch_position(self) -> str | None:
        try:
            return _read(self.at("fetch-position")).decode().strip() or None
        except OSError:
            return None

    def set_fetch_position(self, name: str) -> None:
        write_atomic(self.at("fetch-position"), (name + "\n").encode())

    def fetch_plan(self) -> list[str]:
        try:
            return _read(self.at("fetch-plan")).decode().split()
        except OSError:
            return []

    def set_fetch_plan(self, names: list[str]) -> None:
        write_atomic(self.at("fetch-plan"), "".join(n + "\n" for n in names).encode())


def helper_spool(prog: str, argv: list[str] | None, lock: str) -> tuple[str, Spool, int] | None:
    """Parse a resident helper's ``--config``/``--spool`` and take its lock; None when another one holds it."""
    import argparse

    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--config", required=True)
    p.add_argument("--spool", required=True)
    args = p.parse_args(argv)
    spool = Spool(args.spool, config_tag(args.config)).ensure()
    held = spool.take_lock(spool.pusher_lock if lock == "pusher_lock" else spool.fetcher_lock)
    return None if held is None else (args.config, spool, held)
